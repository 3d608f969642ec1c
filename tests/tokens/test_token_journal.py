"""The refresh journal: an interrupted or unanswered refresh never loses a token.

A refresh whose outcome is unknown (the worker died, the answer was lost)
is settled only by a later refresh that stores an answer or learns the
grant is dead; every failure in between keeps what the journal knew.
"""

from __future__ import annotations

import pytest

from worker.errors import SSOError, TokenError, TokenInvalidError
from worker.tokens import REVOKED, VALID

from .conftest import ASSETS, CHARACTER_NAME, stored, token_count


def _grant_token(emulator, store, character_id: int):
    grant = emulator.create_grant(
        character_id=character_id, character_name=CHARACTER_NAME, scopes=[ASSETS]
    )
    return store.import_grant(grant)


def _journal(store) -> list[tuple]:
    with store.pool.connection() as conn:
        return conn.execute(
            "SELECT token_id, refresh_token IS NOT NULL FROM esi_token_refresh_journal"
        ).fetchall()


def _refresh_quietly(store, token) -> Exception | None:
    try:
        store.refresh(store.get(token.id))
    except (SSOError, TokenError) as exc:
        return exc
    return None


# Failures that may meet the first refresh after the crash: an outage, our
# credentials refused, a timeout, a dropped connection, a garbled answer.
AFTER_CRASH = {
    "503": [{"status": 503}],
    "429": [{"status": 429, "retry_after": 5}],
    "invalid_client": [{"kind": "invalid_client"}],
    "timeout": [{"kind": "timeout", "seconds": 1.5}],
    "dropped": [{"kind": "drop"}],
    "html-400": [
        {"status": 400, "body": "<html>no</html>", "content_type": "text/html"}
    ],
    "two-outages": [{"status": 503}, {"status": 502}],
}


@pytest.mark.parametrize("failures", sorted(AFTER_CRASH))
@pytest.mark.parametrize(
    "esi_settings_overrides", [{"db_pool_max": 4, "sso_timeout_s": 0.5}]
)
def test_a_refresh_token_saved_by_a_dying_worker_survives_failed_retries(
    emulator, store, child, failures
):
    # given a worker killed after the journal saved the rotated refresh
    # token (the SSO no longer honours the stored one)
    emulator.configure(rotation="rotate_reject_old")
    token = _grant_token(emulator, store, 92100001)
    proc = child("die-after-journal", token.id)
    proc.wait(timeout=60)
    assert proc.returncode == -9

    # when the next refreshes meet failures of one kind
    faults = AFTER_CRASH[failures]
    emulator.configure(sso_faults=faults)
    errors = [_refresh_quietly(store, token) for _ in faults]

    # then each failed, yet the saved refresh token was not dropped: once
    # the SSO answers again, the token refreshes and stays valid
    assert all(isinstance(e, SSOError) for e in errors), errors
    assert stored(store, token).state == VALID
    fresh = store.refresh(store.get(token.id))
    assert fresh.state == VALID and not fresh.expired
    assert _journal(store) == []
    assert token_count(store) == 1


@pytest.mark.parametrize(
    "lost_answer",
    [
        {"process": True, "kind": "timeout", "seconds": 1.5},
        {"process": True, "status": 502, "body": "<html>Bad Gateway</html>"},
        {"process": True, "status": 504},
        {"process": True, "kind": "drop"},
        {"process": True, "status": 200, "body": "<html>maintenance</html>"},
    ],
    ids=["timeout", "502", "504", "dropped", "garbled-200"],
)
@pytest.mark.parametrize("esi_settings_overrides", [{"sso_timeout_s": 0.5}])
def test_a_lost_answer_that_spent_the_token_is_explained(emulator, store, lost_answer):
    # given an SSO that rotates and rejects the old token, whose answer to
    # the next refresh is lost on the way
    emulator.configure(rotation="rotate_reject_old", sso_faults=[lost_answer])
    token = _grant_token(emulator, store, 92100002)

    # when that refresh fails, and the next one is refused
    first = _refresh_quietly(store, token)
    with pytest.raises(TokenInvalidError, match="new login"):
        store.refresh(store.get(token.id))

    # then the first error did not pretend the SSO was never reached, and
    # the token is kept as needing a login, with the reason why
    assert "unreachable (" not in str(first)
    row = stored(store, token)
    assert row.state == REVOKED
    assert "log in again" in row.state_reason
    assert "never finished" in row.state_reason
    assert _journal(store) == []


@pytest.mark.parametrize(
    "not_reached",
    [
        {"status": 429, "retry_after": 1},
        {"kind": "invalid_client"},
        {"status": 400, "json": {"error": "invalid_request"}},
    ],
    ids=["429", "invalid_client", "invalid_request"],
)
def test_a_refusal_that_spent_nothing_leaves_no_story(emulator, store, not_reached):
    # given a token whose refresh will be turned away before the SSO acts
    token = _grant_token(emulator, store, 92100003)
    emulator.configure(sso_faults=[not_reached])

    # when it fails, then the grant is revoked at the SSO and refused
    _refresh_quietly(store, token)
    store.sso.revoke(token.refresh_token)
    with pytest.raises(TokenInvalidError):
        store.refresh(store.get(token.id))

    # then the reason is the SSO's refusal alone
    row = stored(store, token)
    assert row.state == REVOKED and "never finished" not in row.state_reason


@pytest.mark.parametrize("rotation", ["rotate", "rotate_reject_old"])
def test_a_garbled_answer_with_a_new_refresh_token_keeps_it(emulator, store, rotation):
    # given an SSO that rotates and then garbles the rest of its answer
    emulator.configure(
        rotation=rotation, sso_faults=[{"patch": {"access_token": None}}]
    )
    token = _grant_token(emulator, store, 92100004)

    # when the refresh fails on the garbled answer, then runs again
    assert isinstance(_refresh_quietly(store, token), SSOError)
    kept = stored(store, token).refresh_token
    fresh = store.refresh(store.get(token.id))

    # then the new refresh token was kept, and it refreshes the token
    assert kept != token.refresh_token
    assert fresh.state == VALID and not fresh.expired


def test_a_new_login_replaces_what_the_journal_held(emulator, store, child, runtime):
    # given a dying worker's journal entry holding a rotated refresh token
    emulator.configure(rotation="rotate_reject_old")
    token = _grant_token(emulator, store, 92100005)
    proc = child("die-after-journal", token.id)
    proc.wait(timeout=60)

    # when the character logs in again (an equivalent grant is merged)
    login = _grant_token(emulator, store, 92100005)

    # then the journal no longer offers the old grant's token, and the
    # merged token refreshes with the new login's
    assert login.id == token.id and _journal(store) == []
    assert store.refresh(store.get(token.id)).state == VALID
