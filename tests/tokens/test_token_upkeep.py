"""Scheduled upkeep: refresh_due (batches, parallelism, outcomes) and prune."""

from __future__ import annotations

import datetime as dt

from worker import metrics
from worker.tokens import NO_REFRESH_EXPIRED, REVOKED, VALID, TokenStore

from .conftest import ASSETS, CHARACTER_NAME, SKILLS, stored, token_count


def _grant_token(
    emulator, store: TokenStore, character_id: int, scopes=(ASSETS, SKILLS)
):
    grant = emulator.create_grant(
        character_id=character_id, character_name=CHARACTER_NAME, scopes=list(scopes)
    )
    return store.import_grant(grant)


def _outcomes() -> dict[str, float]:
    """Refreshes counted so far, by outcome, summed over the SSO classes."""
    totals: dict[str, float] = {}
    for family in metrics.TOKEN_REFRESHES.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return {o: totals.get(o, 0.0) for o in ("success", "dead", "transient", "skipped")}


def test_refresh_due_refreshes_expiring_tokens_in_parallel(emulator, frozen_store):
    # given six expired tokens and a slow SSO
    emulator.configure(sso_latency_s=0.2)
    tokens = [_grant_token(emulator, frozen_store, 90000000 + n) for n in range(6)]
    before = _outcomes()

    # when due tokens are refreshed three at a time, in batches of two
    summary = frozen_store.refresh_due(parallelism=3, batch_size=2)

    # then all six were refreshed, never more than three at once
    assert summary.success == 6 and summary.total == 6
    assert emulator.stats()["sso_max_in_flight"] <= 3
    assert all(not stored(frozen_store, t).expired for t in tokens)
    assert _outcomes()["success"] - before["success"] == 6


def test_refresh_due_leaves_tokens_that_are_not_due(emulator, frozen_store, clock):
    # given a token refreshed just now
    token = _grant_token(emulator, frozen_store, 90000001)
    frozen_store.refresh(token)
    calls = emulator.stats()["sso_token_requests"]

    # when due tokens are refreshed with a five-minute look-ahead
    summary = frozen_store.refresh_due(ahead_s=300)

    # then nothing was due; once its expiry is near, it is refreshed
    assert summary.total == 0
    assert emulator.stats()["sso_token_requests"] == calls
    clock.advance(1199 - 200)
    assert frozen_store.refresh_due(ahead_s=300).success == 1


def test_refresh_due_backs_off_after_a_transient_failure(emulator, frozen_store, clock):
    # given an expired token and an SSO failing once
    token = _grant_token(emulator, frozen_store, 90000001)
    emulator.configure(sso_faults=[{"status": 503}])

    # when refresh runs fail, run again at once, then after the back-off
    first = frozen_store.refresh_due()
    second = frozen_store.refresh_due()
    clock.advance(60)
    third = frozen_store.refresh_due()

    # then the failure is counted, the retry waits, then succeeds
    assert first.transient == 1
    assert second.total == 0
    assert third.success == 1
    row = stored(frozen_store, token)
    assert row.refresh_failures == 0 and row.next_refresh_attempt is None


def test_refresh_due_counts_dead_grants_and_deletes_nothing(emulator, frozen_store):
    # given one healthy and one revoked expired token
    _grant_token(emulator, frozen_store, 90000001)
    doomed = _grant_token(emulator, frozen_store, 90000002)
    frozen_store.sso.revoke(doomed.refresh_token)

    # when due tokens are refreshed
    summary = frozen_store.refresh_due()

    # then one succeeded, one is revoked, both are still stored
    assert (summary.success, summary.dead) == (1, 1)
    assert stored(frozen_store, doomed).state == REVOKED
    assert token_count(frozen_store) == 2


def test_refresh_due_stops_after_a_configuration_error(emulator, frozen_store):
    # given expired tokens and an SSO refusing our credentials
    for n in range(3):
        _grant_token(emulator, frozen_store, 90000000 + n)
    emulator.configure(sso_faults=[{"kind": "invalid_client"}] * 3)

    # when due tokens are refreshed one at a time
    summary = frozen_store.refresh_due(parallelism=1, batch_size=1)

    # then the run stopped at the first refusal and every token is still valid
    assert summary.config_error == 1 and summary.success == 0
    assert frozen_store.query().count() == 3


def test_refresh_due_expires_tokens_that_cannot_refresh(add_token, frozen_store):
    # given an expired token without refresh token and a fresh one without
    lapsed = add_token(90000001, scopes=[], refreshable=False, expires_in_s=-5)
    fresh = add_token(90000002, scopes=[], refreshable=False, expires_in_s=600)

    # when due tokens are refreshed
    summary = frozen_store.refresh_due()

    # then only the lapsed one changed state
    assert summary.no_refresh_expired == 1
    assert stored(frozen_store, lapsed).state == NO_REFRESH_EXPIRED
    assert stored(frozen_store, fresh).state == VALID


def test_prune_respects_the_grace_period(emulator, frozen_store, clock, add_token):
    # given a token revoked now and a valid token
    dead = _grant_token(emulator, frozen_store, 90000001)
    frozen_store.sso.revoke(dead.refresh_token)
    frozen_store.refresh_due()
    alive = add_token(90000002, expires_in_s=-3600)

    # when pruned within the grace period, then after it
    early = frozen_store.prune(grace_s=3600)
    clock.advance(3601)
    late = frozen_store.prune(grace_s=3600)

    # then the dead token went only after the grace period; the valid one stays
    assert (early, late) == (0, 1)
    assert frozen_store.get(dead.id) is None
    assert frozen_store.get(alive.id) is not None


def test_refresh_due_uses_the_settings_by_default(emulator, frozen_store, settings):
    # given a token expiring exactly at the default look-ahead
    token = _grant_token(emulator, frozen_store, 90000001)
    frozen_store.refresh(token)
    remaining = stored(frozen_store, token).access_expires - frozen_store.clock.now()

    # when due tokens are refreshed with the defaults
    summary = frozen_store.refresh_due()

    # then the token, with more than refresh_ahead_s left, was not due
    assert remaining > dt.timedelta(seconds=settings.refresh_ahead_s)
    assert summary.total == 0
