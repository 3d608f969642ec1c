"""A 401 on an access token that has not expired yet: refresh once, then send again."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import TokenInvalidError

SCOPE = "esi-assets.read_assets.v1"


def _spoil_access_token(runtime: Any, token: Any) -> None:
    # A token ESI refuses although its expiry lies ahead: what a rotated SSO
    # signing key or a revoked grant looks like from the worker's side.
    token.valid_access_token()
    head, payload, signature = token.access_token.split(".")
    spoiled = f"{head}.{payload}.{signature[::-1]}"
    with runtime.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_token SET access_token = %s WHERE id = %s",
            (runtime.tokens.cipher.encrypt(spoiled), token.id),
        )


def test_a_refused_access_token_is_refreshed_once_and_the_call_succeeds(
    runtime: Any, emulator: Any, make_token: Any
) -> None:
    # given: a stored token whose unexpired access token ESI refuses
    token = make_token(2112000001, "Test Pilot One", SCOPE)
    _spoil_access_token(runtime, token)
    refreshes_before = emulator.stats()["sso_token_requests"]

    # when
    stored = runtime.tokens.query().get(id=token.id)
    assets = stored.get_esi_client().Assets.get_characters_character_id_assets(
        character_id=2112000001
    ).results(ignore_cache=True)

    # then: one more SSO refresh, and the data came back
    assert len(assets) == 1189
    assert emulator.stats()["sso_token_requests"] == refreshes_before + 1


def test_a_refused_token_whose_grant_is_dead_raises_token_invalid(
    runtime: Any, emulator: Any, make_token: Any
) -> None:
    # given: the token is refused by ESI and its grant is revoked at the SSO
    token = make_token(2112000001, "Test Pilot One", SCOPE)
    _spoil_access_token(runtime, token)
    stored = runtime.tokens.query().get(id=token.id)
    emulator.configure(sso_faults=[{"kind": "invalid_grant"}])

    # when / then: the dead grant is reported, not a bare 401 (the cache is
    # bypassed: the first test may have left these pages in it)
    with pytest.raises(TokenInvalidError):
        stored.get_esi_client().Assets.get_characters_character_id_assets(
            character_id=2112000001
        ).results(ignore_cache=True)
