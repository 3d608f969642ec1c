"""Fixtures for the SSO client tests: a client on the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.sso import SSOClient

CHARACTER_ID = 2112000001
CHARACTER_NAME = "Test Pilot One"
ASSETS = "esi-assets.read_assets.v1"
SKILLS = "esi-skills.read_skills.v1"


@pytest.fixture
def sso(settings) -> Iterator[SSOClient]:
    """An SSO client talking to the emulator."""
    client = SSOClient(settings)
    yield client
    client.close()


@pytest.fixture
def refresh_token(emulator) -> str:
    """A live refresh token of the test character with two scopes."""
    grant = emulator.create_grant(
        character_id=CHARACTER_ID,
        character_name=CHARACTER_NAME,
        scopes=[ASSETS, SKILLS],
    )
    return grant.refresh_token
