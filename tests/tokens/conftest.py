"""Fixtures for token tests: the runtime's store and a way to add tokens."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.clock import FrozenClock
from worker.emulator import Emulator, EmulatorConfig
from worker.sso import SSOClient
from worker.tokens import Token, TokenStore

CHARACTER_ID = 2112000001
CHARACTER_NAME = "Test Pilot One"
ASSETS = "esi-assets.read_assets.v1"
SKILLS = "esi-skills.read_skills.v1"
WALLET = "esi-wallet.read_character_wallet.v1"

_serial = itertools.count(1)


CHILD = Path(__file__).with_name("refresh_child.py")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def frozen_store(settings, clean_db, clock) -> Iterator[TokenStore]:
    """A store whose clock only moves when the test says so."""
    sso = SSOClient(settings, clock=clock)
    store = TokenStore(clean_db, sso, settings, clock=clock)
    yield store
    store.close()
    sso.close()


@pytest.fixture
def shared_clock(
    settings, clean_db
) -> Iterator[tuple[Emulator, TokenStore, FrozenClock]]:
    """An emulator of its own and a store on one frozen clock.

    The access tokens the emulator signs then expire on the store's clock,
    so a test can move through whole token lifetimes without sleeping.
    """
    clock = FrozenClock()
    emulator = Emulator(EmulatorConfig(), clock=clock)
    emulator.start()
    mine = settings.replace(
        sso_base_url=emulator.base_url, esi_base_url=emulator.base_url
    )
    sso = SSOClient(mine, clock=clock)
    store = TokenStore(clean_db, sso, mine, clock=clock)
    yield emulator, store, clock
    store.close()
    sso.close()
    emulator.stop()


@pytest.fixture
def child(settings) -> Callable[..., subprocess.Popen[str]]:
    """Start ``refresh_child.py`` in its own process, on the test settings."""
    started: list[subprocess.Popen[str]] = []

    def start(
        mode: str, *args: Any, keys: list[str] | None = None
    ) -> subprocess.Popen[str]:
        config: dict[str, Any] = {
            "database_url": settings.database_url,
            "data_dir": str(settings.data_dir),
            "sso_base_url": settings.sso_base_url,
            "esi_base_url": settings.esi_base_url,
            "sso_client_id": settings.sso_client_id,
            "sso_client_secret": settings.sso_client_secret.get_secret_value(),
        }
        if keys is not None:
            config["token_keys"] = keys
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER")}
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, json.dumps(config), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


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
