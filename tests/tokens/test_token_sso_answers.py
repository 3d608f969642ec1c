"""What each odd SSO answer does to a stored token, through the whole worker.

The emulator answers with any status and body, or with crafted access
tokens, and switches the behaviours ESI.md leaves unverified; the token
must end in the state its answer class names, and never lose a refresh
token the SSO handed out for it.
"""

from __future__ import annotations

import pytest

from worker.tokens import OWNER_CHANGED, REVOKED, VALID

from .conftest import ASSETS, CHARACTER_ID, CHARACTER_NAME, stored, token_count

HTML = "text/html"

# (fault, outcome of the bulk run, state afterwards)
BODIES = {
    "400-html": (
        {"status": 400, "body": "<html>Bad</html>", "content_type": HTML},
        "transient",
        VALID,
    ),
    "400-invalid_request": (
        {"status": 400, "json": {"error": "invalid_request"}},
        "transient",
        VALID,
    ),
    "400-empty": ({"status": 400, "body": ""}, "transient", VALID),
    "401-html": (
        {"status": 401, "body": "<html>401</html>", "content_type": HTML},
        "transient",
        VALID,
    ),
    "401-invalid_client": (
        {"status": 401, "json": {"error": "invalid_client"}},
        "config_error",
        VALID,
    ),
    "403-html": (
        {"status": 403, "body": "<html>no</html>", "content_type": HTML},
        "transient",
        VALID,
    ),
    "403-empty-object": ({"status": 403, "json": {}}, "transient", VALID),
    "403-invalid_grant": (
        {"status": 403, "json": {"error": "invalid_grant"}},
        "dead",
        REVOKED,
    ),
    "400-invalid_grant-text": (
        {"status": 400, "json": {"error": "invalid_grant: Token is invalid."}},
        "dead",
        REVOKED,
    ),
    "400-error-object": (
        {"status": 400, "json": {"error": {"code": "x"}}},
        "transient",
        VALID,
    ),
    "200-list": ({"status": 200, "json": []}, "transient", VALID),
    "200-truncated": (
        {"status": 200, "body": '{"access_token": "eyJ'},
        "transient",
        VALID,
    ),
    "200-null-access-token": (
        {"status": 200, "json": {"access_token": None}},
        "transient",
        VALID,
    ),
    "204": ({"status": 204, "body": ""}, "transient", VALID),
    "302": (
        {"status": 302, "body": "", "headers": {"Location": "/x"}},
        "transient",
        VALID,
    ),
    "dropped": ({"kind": "drop"}, "transient", VALID),
}


def _grant_token(emulator, store, character_id: int = CHARACTER_ID):
    grant = emulator.create_grant(
        character_id=character_id, character_name=CHARACTER_NAME, scopes=[ASSETS]
    )
    return store.import_grant(grant)


@pytest.mark.parametrize("answer", sorted(BODIES))
def test_each_odd_answer_leads_to_its_state(emulator, frozen_store, clock, answer):
    # given an expired token and an SSO about to give one odd answer
    fault, outcome, state = BODIES[answer]
    token = _grant_token(emulator, frozen_store)
    emulator.configure(sso_faults=[fault])

    # when a bulk refresh meets it
    summary = frozen_store.refresh_due()

    # then the token is in the named state, kept, with its refresh token
    row = stored(frozen_store, token)
    assert getattr(summary, outcome) == 1, summary
    assert row.state == state and row.refresh_token == token.refresh_token
    assert token_count(frozen_store) == 1
    if state == VALID:
        clock.advance(400)
        assert frozen_store.refresh_due().success == 1


UNVERIFIABLE = [
    "expired",
    "unknown_kid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "unsigned",
    "not_a_jwt",
]


@pytest.mark.parametrize("craft", UNVERIFIABLE)
def test_an_unverifiable_access_token_keeps_the_rotated_refresh_token(
    emulator, frozen_store, clock, craft
):
    # given an SSO that retires used refresh tokens and answers the next
    # refresh with an access token that fails one check
    emulator.configure(
        rotation="rotate_reject_old", sso_faults=[{"access_token": craft}]
    )
    token = _grant_token(emulator, frozen_store)

    # when due tokens are refreshed, then again after the back-off
    first = frozen_store.refresh_due()
    row = stored(frozen_store, token)
    clock.advance(60)
    second = frozen_store.refresh_due()

    # then the first run failed transiently but stored the new refresh
    # token (the old access token kept), and the second succeeded with it
    assert first.transient == 1 and row.state == VALID
    assert row.refresh_token != token.refresh_token
    assert row.access_token == token.access_token and row.last_refresh_error
    assert second.success == 1 and not stored(frozen_store, token).expired


@pytest.mark.parametrize("rotation", ["rotate", "rotate_reject_old"])
def test_an_answer_about_another_character_is_not_an_owner_change(
    emulator, frozen_store, clock, rotation
):
    # given an SSO that answers a refresh with another character's tokens
    emulator.configure(
        rotation=rotation,
        sso_faults=[{"access_token": "other_character", "character_id": 2112000077}],
    )
    token = _grant_token(emulator, frozen_store)

    # when due tokens are refreshed
    summary = frozen_store.refresh_due()

    # then the token is not marked owner_changed, and nothing of the other
    # character's answer went into its row
    row = stored(frozen_store, token)
    assert summary.transient == 1 and summary.owner_changed == 0
    assert row.state == VALID and row.refresh_token == token.refresh_token
    assert "2112000077" in row.last_refresh_error
    assert row.character_id == CHARACTER_ID

    # and after the back-off: renewed if the SSO still honours our refresh
    # token, else a new login is asked for, saying why
    clock.advance(60)
    after = frozen_store.refresh_due()
    row = stored(frozen_store, token)
    if rotation == "rotate":
        assert after.success == 1 and row.state == VALID
    else:
        assert after.dead == 1 and row.state == REVOKED
        assert "never finished" in row.state_reason


def test_a_new_owner_hash_kills_the_token_and_keeps_none_of_the_new_grant(
    emulator, frozen_store
):
    # given an SSO answering with the same character under another owner
    emulator.configure(
        rotation="rotate_reject_old", sso_faults=[{"access_token": "other_owner"}]
    )
    token = _grant_token(emulator, frozen_store)

    # when due tokens are refreshed
    summary = frozen_store.refresh_due()

    # then the token is owner_changed and its row holds its old secrets
    row = stored(frozen_store, token)
    assert summary.owner_changed == 1 and row.state == OWNER_CHANGED
    assert row.refresh_token == token.refresh_token
    assert row.access_token == token.access_token


def test_a_transfer_that_voids_the_grant_asks_for_a_new_login(emulator, frozen_store):
    # given a character transferred under an SSO that voids its grants
    token = _grant_token(emulator, frozen_store)
    emulator.configure(owner_changes=[CHARACTER_ID], transfer_revokes=True)

    # when due tokens are refreshed
    summary = frozen_store.refresh_due()

    # then the token is revoked (the SSO said invalid_grant) and kept
    assert summary.dead == 1
    assert stored(frozen_store, token).state == REVOKED
    assert token_count(frozen_store) == 1


def test_a_key_rotation_is_followed_once_the_key_is_published(
    emulator, frozen_store, clock
):
    # given a token refreshed with the old key, then an SSO that signs with
    # a new kid it does not publish yet
    emulator.configure(rotation="rotate_reject_old")
    token = _grant_token(emulator, frozen_store)
    assert frozen_store.refresh_due().success == 1
    emulator.configure(
        signing_kid="JWT-Signature-Key-2027", jwks_withdrawn=["JWT-Signature-Key-2027"]
    )

    # when the token is due again, before and after the key is published
    clock.advance(1199 - 200)
    early = frozen_store.refresh_due()
    kept = stored(frozen_store, token)
    emulator.configure(jwks_withdrawn=[])
    clock.advance(120)
    late = frozen_store.refresh_due()

    # then the unknown kid only postponed the renewal (the rotated refresh
    # token kept); once published the key set is fetched again and it works
    assert early.transient == 1 and kept.state == VALID
    assert "not in the SSO key set" in kept.last_refresh_error
    assert late.success == 1 and not stored(frozen_store, token).expired


@pytest.mark.parametrize("esi_settings_overrides", [{"db_pool_max": 4}])
def test_a_grace_period_lets_a_dying_workers_spent_token_renew(emulator, store, child):
    # given an SSO that retires used refresh tokens after a grace period
    emulator.configure(rotation="rotate_reject_old", rotation_grace_s=300)
    token = _grant_token(emulator, store, 92000011)

    # when a worker dies the moment the SSO answered, and another refreshes
    proc = child("die-after-answer", token.id)
    proc.wait(timeout=60)
    fresh = store.refresh(store.get(token.id))

    # then the old refresh token still worked within the grace period
    assert proc.returncode == -9
    assert fresh.state == VALID and not fresh.expired


@pytest.mark.parametrize("used_once", [False, True], ids=["never-used", "used-once"])
def test_an_idle_refresh_token_is_reported_dead(shared_clock, used_once):
    # given refresh tokens that die after 30 days unused, on a clock the
    # emulator and the store share
    emulator, store, clock = shared_clock
    emulator.configure(refresh_idle_expiry_s=30 * 86400)
    token = _grant_token(emulator, store)
    if used_once:
        assert store.refresh_due().success == 1

    # when the worker does not refresh it for 31 days
    clock.advance(31 * 86400)
    summary = store.refresh_due()

    # then the token is revoked with the SSO's answer, and kept
    row = stored(store, token)
    assert summary.dead == 1 and row.state == REVOKED
    assert "invalid_grant" in row.state_reason
    assert token_count(store) == 1
