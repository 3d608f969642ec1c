"""Every class of SSO answer leads to its state; dead tokens are pruned with a record."""

from __future__ import annotations

import datetime as dt

import pytest

from worker import metrics
from worker.access_tokens import KeySet
from worker.errors import SSOTransientError
from worker.tokens import NO_REFRESH_EXPIRED, OWNER_CHANGED, REVOKED, VALID

from .conftest import ASSETS, CHARACTER_ID, CHARACTER_NAME, stored, token_count


def _count(outcome: str, sso_class: str) -> float:
    for family in metrics.TOKEN_REFRESHES.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels["outcome"] == outcome
                and labels["sso_class"] == sso_class
            ):
                return sample.value
    return 0.0


def _token(emulator, store, character_id: int = CHARACTER_ID):
    grant = emulator.create_grant(
        character_id=character_id, character_name=CHARACTER_NAME, scopes=[ASSETS]
    )
    return store.import_grant(grant)


# (switches, outcome, sso_class, state, failures): what each answer leads to.
ANSWERS = {
    "success": ({}, "success", "success", VALID, 0),
    "invalid_grant": (
        {"sso_faults": [{"kind": "invalid_grant"}]},
        "dead",
        "dead_grant",
        REVOKED,
        0,
    ),
    "legacy_invalid_token": (
        {"revoke": True, "legacy_invalid_token": True},
        "dead",
        "dead_grant",
        REVOKED,
        0,
    ),
    "revoked_grant": ({"revoke": True}, "dead", "dead_grant", REVOKED, 0),
    "owner_changed": (
        {"owner_changes": [CHARACTER_ID]},
        "owner_changed",
        "success",
        OWNER_CHANGED,
        0,
    ),
    "invalid_client": (
        {"sso_faults": [{"kind": "invalid_client"}]},
        "config_error",
        "config",
        VALID,
        0,
    ),
    "500": ({"sso_faults": [{"status": 500}]}, "transient", "transient", VALID, 1),
    "503": ({"sso_faults": [{"status": 503}]}, "transient", "transient", VALID, 1),
    "429": (
        {"sso_faults": [{"status": 429, "retry_after": 5}]},
        "transient",
        "transient",
        VALID,
        1,
    ),
    "non_json": (
        {"sso_faults": [{"kind": "non_json"}]},
        "transient",
        "transient",
        VALID,
        1,
    ),
    "no_access_token": (
        {"sso_faults": [{"kind": "no_access_token"}]},
        "transient",
        "transient",
        VALID,
        1,
    ),
    "timeout": (
        {"sso_faults": [{"kind": "timeout", "seconds": 1.5}]},
        "transient",
        "transient",
        VALID,
        1,
    ),
    "unverifiable_jwt": (
        {"issuer": "https://not-the-sso.example"},
        "transient",
        "transient",
        VALID,
        1,
    ),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
@pytest.mark.parametrize("esi_settings_overrides", [{"sso_timeout_s": 0.5}])
def test_each_class_of_sso_answer_leads_to_its_state(emulator, frozen_store, answer):
    # given an expired token and an SSO about to give this answer
    switches, outcome, sso_class, state, failures = ANSWERS[answer]
    switches = dict(switches)
    token = _token(emulator, frozen_store)
    if switches.pop("revoke", False):
        frozen_store.sso.revoke(token.refresh_token)
    emulator.configure(**switches)
    counted = _count(outcome, sso_class)

    # when a bulk refresh meets it
    summary = frozen_store.refresh_due()

    # then the token is in the named state, never deleted, and the metric
    # counts the outcome with the SSO's answer class
    row = stored(frozen_store, token)
    assert (row.state, row.refresh_failures) == (state, failures)
    assert getattr(summary, outcome) == 1
    assert _count(outcome, sso_class) == counted + 1
    assert token_count(frozen_store) == 1
    if state != VALID:
        assert row.state_reason and row.state_changed is not None
        assert frozen_store.query().count() == 0


def test_a_rotated_refresh_token_is_kept_when_the_new_access_token_fails_checks(
    emulator, frozen_store, clock
):
    # given an SSO that rejects rotated-out refresh tokens and, for now,
    # signs access tokens with a foreign issuer
    emulator.configure(rotation="rotate_reject_old", issuer="https://evil.example")
    token = _token(emulator, frozen_store)

    # when the refresh gets a new refresh token but an unverifiable JWT
    assert frozen_store.refresh_due().transient == 1

    # then the new refresh token was stored and the old access token kept
    row = stored(frozen_store, token)
    assert row.state == VALID and row.refresh_token != token.refresh_token
    assert row.access_token == token.access_token
    assert "issuer" in row.last_refresh_error

    # and after the back-off, the stored (rotated) token refreshes fine
    emulator.configure(issuer="login.eveonline.com")
    clock.advance(60)
    assert frozen_store.refresh_due().success == 1


def test_a_rotated_refresh_token_is_kept_when_the_key_set_cannot_be_fetched(
    emulator, frozen_store, clock
):
    # given an SSO that rejects rotated-out tokens, and a key set that
    # cannot be fetched (the JWKS endpoint is down)
    emulator.configure(rotation="rotate_reject_old")
    token = _token(emulator, frozen_store)
    working = frozen_store.sso.keys

    def unreachable():
        raise SSOTransientError("SSO key set could not be fetched (ConnectError)")

    frozen_store.sso.keys = KeySet(unreachable, max_age_s=300, clock=clock)

    # when the token is refreshed
    assert frozen_store.refresh_due().transient == 1

    # then it stays valid with the rotated refresh token, and renews later
    row = stored(frozen_store, token)
    assert row.state == VALID and row.refresh_token != token.refresh_token
    frozen_store.sso.keys = working
    clock.advance(60)
    assert frozen_store.refresh_due().success == 1


def test_a_login_without_scopes_is_stored_never_refreshed_and_pruned_once_expired(
    emulator, frozen_store, clock
):
    # given a scopeless login (no refresh token) that is still fresh
    grant = emulator.create_grant(
        character_id=CHARACTER_ID, character_name=CHARACTER_NAME, scopes=[]
    )
    token = frozen_store.add(
        access_token=grant.access_token,
        refresh_token=None,
        character_id=CHARACTER_ID,
        character_name=CHARACTER_NAME,
        character_owner_hash=grant.owner_hash,
        scopes=[],
        access_expires=clock.now() + dt.timedelta(seconds=600),
    )

    # when refresh runs before and after its expiry, then prune after grace
    before = frozen_store.refresh_due()
    clock.advance(601)
    after = frozen_store.refresh_due()
    clock.advance(3601)
    pruned = frozen_store.prune(grace_s=3600)

    # then it was never sent to the SSO, expired into its state, then pruned
    assert before.total == 0 and after.no_refresh_expired == 1
    assert emulator.stats()["sso_token_requests"] == 0
    assert pruned == 1 and frozen_store.get(token.id) is None
    with frozen_store.pool.connection() as conn:
        record = conn.execute(
            "SELECT state, state_reason FROM esi_token_pruned WHERE token_id = %s",
            (token.id,),
        ).fetchone()
    assert record[0] == NO_REFRESH_EXPIRED and "no scopes" in record[1]


def test_prune_records_why_each_dead_token_went(emulator, frozen_store, clock):
    # given a revoked token and a token whose owner changed
    revoked = _token(emulator, frozen_store, 94000001)
    moved = _token(emulator, frozen_store, 94000002)
    frozen_store.sso.revoke(revoked.refresh_token)
    emulator.configure(owner_changes=[94000002])
    frozen_store.refresh_due()

    # when they are pruned after the grace period
    clock.advance(10)
    assert frozen_store.prune(grace_s=5) == 2

    # then the record names each token, its state and its reason
    with frozen_store.pool.connection() as conn:
        rows = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT token_id, state, state_reason FROM esi_token_pruned"
            )
        }
    assert rows[revoked.id][0] == REVOKED and "invalid_grant" in rows[revoked.id][1]
    assert rows[moved.id] == (OWNER_CHANGED, "the character changed owner")


@pytest.mark.parametrize("scp_form", ["auto", "list", "string", "absent"])
@pytest.mark.parametrize("scopes", [[ASSETS], [ASSETS, "esi-skills.read_skills.v1"]])
def test_refresh_keeps_the_scopes_whatever_form_scp_takes(
    emulator, frozen_store, scp_form, scopes
):
    # given a token and an SSO writing scp as a list, a string or not at all
    grant = emulator.create_grant(
        character_id=CHARACTER_ID, character_name=CHARACTER_NAME, scopes=scopes
    )
    token = frozen_store.import_grant(grant)
    emulator.configure(scp_form=scp_form)

    # when it is refreshed
    assert frozen_store.refresh_due().success == 1

    # then it still holds exactly its scopes
    assert stored(frozen_store, token).scopes == tuple(sorted(scopes))
    assert frozen_store.query().require_scopes(scopes).count() == 1


def test_a_burst_limited_sso_only_delays_tokens(emulator, frozen_store, clock):
    # given eight expired tokens and an SSO that answers 503 above two at once
    emulator.configure(sso_burst_limit=2, sso_latency_s=0.2)
    tokens = [_token(emulator, frozen_store, 98000000 + n) for n in range(8)]

    # when they are refreshed eight at a time, then again after the back-off
    first = frozen_store.refresh_due(parallelism=8, batch_size=8)
    clock.advance(400)
    second = frozen_store.refresh_due(parallelism=2)

    # then the burst only postponed some; none was lost or marked dead
    assert first.transient >= 1 and first.success >= 1
    assert first.success + second.success == 8 and second.transient == 0
    assert all(stored(frozen_store, t).state == VALID for t in tokens)
