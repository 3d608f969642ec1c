"""Fixtures for token tests: the runtime's store and a way to add tokens."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from worker.tokens import Token, TokenStore

CHARACTER_ID = 2112000001
CHARACTER_NAME = "Test Pilot One"
ASSETS = "esi-assets.read_assets.v1"
SKILLS = "esi-skills.read_skills.v1"
WALLET = "esi-wallet.read_character_wallet.v1"

_serial = itertools.count(1)


@pytest.fixture
def store(runtime) -> TokenStore:
    """The token store of the test runtime (real database, emulator SSO)."""
    return runtime.tokens


@pytest.fixture
def add_token(store) -> Callable[..., Token]:
    """Store a token with made-up secrets; no SSO involved."""

    def add(
        character_id: int = CHARACTER_ID,
        scopes: Any = (ASSETS,),
        *,
        user: str | None = None,
        expires_in_s: float = 1200,
        refreshable: bool = True,
    ) -> Token:
        n = next(_serial)
        return store.add(
            access_token=f"made-up-access-{n}",
            refresh_token=f"made-up-refresh-{n}" if refreshable else None,
            character_id=character_id,
            character_name=f"Pilot {character_id}",
            character_owner_hash=f"owner-{character_id}",
            scopes=scopes,
            access_expires=store.clock.now() + dt.timedelta(seconds=expires_in_s),
            user=user,
        )

    return add


@pytest.fixture
def sso_token(emulator, store) -> Callable[..., Token]:
    """Store a token backed by a real emulator grant (its access token expired)."""

    def add(
        character_id: int = CHARACTER_ID,
        scopes: Any = (ASSETS, SKILLS),
        user: str | None = None,
    ) -> Token:
        grant = emulator.create_grant(
            character_id=character_id, character_name=CHARACTER_NAME, scopes=scopes
        )
        return store.import_grant(grant, user=user)

    return add


def stored(store: TokenStore, token: Token) -> Token:
    """The token as the database has it now, whatever its state."""
    fresh = store.get(token.id)
    assert fresh is not None
    return fresh


def token_count(store: TokenStore) -> int:
    """Every stored token, dead or alive."""
    return store.query().including_dead().count()
