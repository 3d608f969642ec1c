"""Scheduled upkeep: refresh_due (batches, parallelism, outcomes) and prune."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest

from worker import metrics
from worker.errors import ConfigurationError, TokenExpiredError
from worker.sso import SSOClient
from worker.tokens import NO_REFRESH_EXPIRED, REVOKED, VALID, TokenStore
from worker.tokens.upkeep import CLAIM_LEASE_S, MAX_LEASE_S, spread_share

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


def _rows(store: TokenStore, tokens) -> list:
    return [stored(store, t) for t in tokens]


@pytest.mark.parametrize("esi_settings_overrides", [{"refresh_parallelism": 4}])
def test_invalid_client_stops_a_bulk_run_and_touches_nothing(
    emulator, frozen_store, caplog
):
    # given forty expired tokens and an SSO that now refuses our credentials
    tokens = [_grant_token(emulator, frozen_store, 91100000 + n) for n in range(40)]
    before = {r.id: (r.refresh_token, r.updated) for r in _rows(frozen_store, tokens)}
    emulator.configure(sso_faults=[{"kind": "invalid_client"}] * 1000)

    # when due tokens are refreshed with the default batch and parallelism
    summary = frozen_store.refresh_due()

    # then at most one refusal per parallel slot reached the SSO, the
    # operator was told once, and no token was touched or left leased
    calls = emulator.stats()["sso_token_requests"]
    assert 1 <= summary.config_error == calls <= 4
    assert summary.success == summary.transient == 0
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    for row in _rows(frozen_store, tokens):
        assert (row.refresh_token, row.updated) == before[row.id]
        assert row.state == VALID and row.refresh_failures == 0
        assert row.next_refresh_attempt is None
    with frozen_store.pool.connection() as conn:
        assert (
            conn.execute("SELECT count(*) FROM esi_token_refresh_journal").fetchone()[0]
            == 0
        )
    assert frozen_store.client_refusal() is not None

    # and once the credentials work again, the next run renews them all
    emulator.configure(sso_faults=[])
    assert frozen_store.refresh_due().success == 40
    assert frozen_store.client_refusal() is None


@pytest.mark.parametrize("how", ["refresh_many", "bulk_refresh"])
def test_invalid_client_stops_the_other_bulk_entry_points(emulator, store, how):
    # given ten expired tokens and an SSO that refuses our credentials
    tokens = [_grant_token(emulator, store, 91200000 + n) for n in range(10)]
    emulator.configure(sso_faults=[{"kind": "invalid_client"}] * 100)

    # when they are refreshed in bulk, two at a time
    if how == "refresh_many":
        refreshed = store.refresh_many(tokens, parallelism=2)
    else:
        refreshed = list(store.query().bulk_refresh())

    # then no more SSO calls were made than refreshes ran at once
    assert refreshed == []
    assert emulator.stats()["sso_token_requests"] <= store.settings.refresh_parallelism
    assert all(r.state == VALID for r in _rows(store, tokens))


def test_renewals_that_fall_due_together_are_spread_over_several_runs(shared_clock):
    # given sixty tokens renewed in one run (so their expiries coincide),
    # on a clock the emulator shares
    emulator, store, clock = shared_clock
    tokens = [_grant_token(emulator, store, 91300000 + n) for n in range(60)]
    assert store.refresh_due().success == 60
    first = [r.access_expires for r in _rows(store, tokens)]
    assert (max(first) - min(first)).total_seconds() < 5

    # when the scheduler runs the refresh every minute for the next cycle
    per_run = []
    while sum(per_run) < 60:
        clock.advance(60)
        per_run.append(store.refresh_due().success)
        assert not any(r.expired for r in _rows(store, tokens))
        assert len(per_run) < 30

    # then the renewals came in more than one run, never all at once, and
    # the new expiries are spread apart
    assert len([n for n in per_run if n]) >= 2 and max(per_run) < 60
    second = [r.access_expires for r in _rows(store, tokens)]
    assert (max(second) - min(second)).total_seconds() >= 60


def test_the_spread_share_is_fixed_per_token_and_covers_the_window():
    # given many consecutive token ids
    shares = [spread_share(token_id) for token_id in range(1, 2001)]

    # then each share is in [0, 1), the same on every call, and they fill
    # the window evenly
    assert all(0 <= s < 1 for s in shares)
    assert shares == [spread_share(token_id) for token_id in range(1, 2001)]
    for tenth in range(10):
        inside = [s for s in shares if tenth / 10 <= s < (tenth + 1) / 10]
        assert 150 <= len(inside) <= 250


def test_refresh_spread_of_zero_keeps_the_plain_look_ahead(
    emulator, frozen_store, settings
):
    # given a token with a little more left than the look-ahead
    token = _grant_token(emulator, frozen_store, 91400001)
    frozen_store.refresh(token)
    remaining = (
        stored(frozen_store, token).access_expires - frozen_store.clock.now()
    ).total_seconds()

    # when due tokens are refreshed with the spread off, then on
    frozen_store.settings = settings.replace(refresh_spread_s=0)
    plain = frozen_store.refresh_due(ahead_s=remaining - 10)
    frozen_store.settings = settings.replace(refresh_spread_s=600)
    spread = frozen_store.refresh_due(ahead_s=remaining - 10)

    # then only the spread made it due early
    assert plain.total == 0
    assert spread.success == 1


@pytest.mark.parametrize(
    ("later_s", "taken_over"),
    [(CLAIM_LEASE_S + 30, False), (MAX_LEASE_S + 1, True)],
    ids=["lease-covers-the-slow-batch", "lease-ran-out"],
)
def test_a_second_run_never_refreshes_what_a_slow_run_claimed_again(
    shared_clock, later_s, taken_over
):
    # given eight expired tokens, a slow SSO (on the store's clock, so
    # fresh tokens stay fresh when the clock jumps), and a run A working
    # through them one at a time
    emulator, frozen_store, clock = shared_clock
    emulator.configure(sso_latency_s=0.4, rotation="rotate_reject_old")
    tokens = [_grant_token(emulator, frozen_store, 91500000 + n) for n in range(8)]
    result: list = []
    run_a = threading.Thread(
        target=lambda: result.append(frozen_store.refresh_due(parallelism=1))
    )
    run_a.start()
    while emulator.stats()["sso_token_requests"] < 1:
        threading.Event().wait(0.005)

    # when a run B starts later, while A is still at it
    clock.advance(later_s)
    run_b = frozen_store.refresh_due(parallelism=4)
    run_a.join(timeout=60)

    # then B took A's tokens only once A's lease had run out, and every
    # token was sent to the SSO exactly once, by one of them
    stats = emulator.stats()
    assert (run_b.total > 0) is taken_over
    assert stats["sso_token_requests"] == 8
    assert set(stats["sso_refreshes_by_character"].values()) == {1}
    assert result[0].success + run_b.success == 8
    assert all(r.state == VALID and not r.expired for r in _rows(frozen_store, tokens))


def test_a_run_does_not_retry_a_token_another_holder_just_failed(
    emulator, frozen_store
):
    # given four expired tokens, a slow SSO that refuses a second call in
    # flight, and a bulk run working through them one at a time
    emulator.configure(sso_latency_s=1.0, sso_burst_limit=1)
    tokens = [_grant_token(emulator, frozen_store, 91600000 + n) for n in range(4)]
    result: list = []
    run = threading.Thread(
        target=lambda: result.append(frozen_store.refresh_due(parallelism=1))
    )
    run.start()
    while emulator.stats()["sso_token_requests"] < 1:
        threading.Event().wait(0.005)

    # when a job asks for the last token meanwhile and its refresh fails
    with pytest.raises(TokenExpiredError):
        frozen_store.get(tokens[-1].id).valid_access_token()
    emulator.configure(sso_burst_limit=None)
    run.join(timeout=60)

    # then the run left that token to its back-off instead of calling again
    assert result[0].success == 3 and result[0].not_attempted == 1
    assert emulator.stats()["sso_token_requests"] == 4
    row = stored(frozen_store, tokens[-1])
    assert row.refresh_failures == 1 and row.next_refresh_attempt is not None


def test_a_batch_fits_its_lease_even_with_slow_timeouts(
    emulator, frozen_store, settings
):
    # given a long SSO timeout
    frozen_store.settings = settings.replace(sso_timeout_s=60)
    for n in range(10):
        _grant_token(emulator, frozen_store, 91700000 + n)

    # when due tokens are refreshed in batches of up to 100, one at a time
    summary = frozen_store.refresh_due(parallelism=1, batch_size=100)

    # then all were refreshed (in several claims) and none is left leased
    assert summary.success == 10
    with frozen_store.pool.connection() as conn:
        leased = conn.execute(
            "SELECT count(*) FROM esi_token WHERE next_refresh_attempt IS NOT NULL"
        ).fetchone()[0]
    assert leased == 0


@pytest.mark.parametrize("how", ["refresh_due", "refresh_many", "bulk_refresh"])
def test_without_sso_settings_a_refresh_run_stops_before_it_writes_anything(
    emulator, frozen_store, settings, clean_db, clock, how
):
    # given due tokens, and a store without an SSO application
    tokens = [_grant_token(emulator, frozen_store, 90000100 + n) for n in range(3)]
    unconfigured = settings.replace(sso_client_id=None, sso_client_secret=None)
    sso = SSOClient(unconfigured, clock=clock)
    bare = TokenStore(clean_db, sso, unconfigured, clock=clock)
    before = _outcomes()

    # when a refresh run starts
    with pytest.raises(ConfigurationError) as caught:
        if how == "refresh_due":
            bare.refresh_due()
        elif how == "refresh_many":
            bare.refresh_many(bare.query())
        else:
            bare.query().bulk_refresh()

    # then it names the settings, and wrote nothing: no lease, no back-off,
    # no journal entry, no refresh counted (least of all as transient)
    assert "ESI_WORKER_SSO_CLIENT_ID" in str(caught.value)
    assert "ESI_WORKER_SSO_CLIENT_SECRET" in str(caught.value)
    for token in tokens:
        row = stored(frozen_store, token)
        assert (row.next_refresh_attempt, row.refresh_failures) == (None, 0)
        assert row.last_refresh_error is None and row.state == VALID
    with clean_db.connection() as conn:
        journal = conn.execute("SELECT count(*) FROM esi_token_refresh_journal")
        assert journal.fetchone()[0] == 0
    assert _outcomes() == before
    assert emulator.stats()["sso_token_requests"] == 0
    bare.close()
    sso.close()


def test_a_token_of_another_application_is_never_refreshed_with_ours(
    emulator, settings, clean_db, clock
):
    # given a token the web application was issued, and a store configured
    # with the native application (an operator changed the client id, or
    # imported django-esi tokens of another application)
    web_store = TokenStore(clean_db, SSOClient(settings, clock=clock), settings,
                           clock=clock)
    token = _grant_token(emulator, web_store, 90000001)
    native = settings.model_copy(update={
        "sso_client_id": emulator.native_client_id, "sso_client_secret": None,
    })
    store = TokenStore(clean_db, SSOClient(native, clock=clock), native, clock=clock)
    asked_before = emulator.stats()["sso_token_requests"]

    # when due tokens are refreshed, and the token's access token is asked for
    summary = store.refresh_due()
    with pytest.raises(TokenExpiredError) as raised:
        store.get(token.id).valid_access_token()

    # then the SSO is never asked, the grant is still alive and the token
    # still valid; the errors name both applications and no secret
    assert summary.config_error == 1 and summary.success == 0
    assert emulator.stats()["sso_token_requests"] == asked_before
    assert isinstance(raised.value, ConfigurationError)
    text = str(raised.value)
    assert emulator.client_id in text and emulator.native_client_id in text
    assert token.refresh_token not in text
    assert stored(store, token).state == "valid"
    assert web_store.refresh_due().success == 1
    store.close()
    web_store.close()
