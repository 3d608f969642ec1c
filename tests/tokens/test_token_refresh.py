"""Refreshing tokens: valid_access_token, the row lock, every SSO answer, get_token."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest

from worker.errors import (
    ConfigurationError,
    JWTValidationError,
    SSOConfigurationError,
    SSOError,
    SSOTransientError,
    TokenError,
    TokenExpiredError,
    TokenInvalidError,
    TokenRefreshClientRefusedError,
    TokenRefreshJWTError,
    TokenRefreshTransientError,
    TokenRefreshUnconfiguredError,
)
from worker.runtime import Runtime
from worker.sso import SSOClient
from worker.tokens import OWNER_CHANGED, REVOKED, VALID, Token, TokenStore

from .conftest import ASSETS, CHARACTER_ID, SKILLS, WALLET, stored, token_count


def test_valid_access_token_refreshes_and_stores_the_rotated_refresh_token(
    emulator, sso_token, store
):
    # given an expired token and an SSO that retires used refresh tokens
    emulator.configure(rotation="rotate_reject_old")
    token = sso_token()
    old_refresh = token.refresh_token
    assert token.expired

    # when its access token is asked for
    access = token.valid_access_token()

    # then it was refreshed once and the new refresh token was stored
    row = stored(store, token)
    assert access == row.access_token and not row.expired
    assert row.refresh_token != old_refresh
    assert token.refresh_token == row.refresh_token
    assert emulator.stats()["sso_token_requests"] == 1

    # and the stored refresh token works for the next refresh
    token.refresh()
    assert stored(store, token).state == VALID


def test_a_fresh_token_is_not_refreshed(emulator, sso_token):
    # given a token refreshed a moment ago
    token = sso_token()
    token.valid_access_token()

    # when its access token is asked for again
    token.valid_access_token()

    # then no further SSO call was made
    assert emulator.stats()["sso_token_requests"] == 1


def test_twenty_threads_make_exactly_one_sso_call(emulator, sso_token, store):
    # given an expired token and a slow SSO, so the threads overlap
    emulator.configure(rotation="rotate_reject_old", sso_latency_s=0.3)
    token = sso_token()
    barrier = threading.Barrier(20)
    answers: list[str] = []
    errors: list[Exception] = []

    def use_token() -> None:
        mine = store.get(token.id)
        barrier.wait()
        try:
            answers.append(mine.valid_access_token())
        except (TokenError, SSOError) as exc:
            errors.append(exc)

    # when twenty threads ask for its access token at once
    threads = [threading.Thread(target=use_token) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then the SSO was called once and every thread got the same fresh token
    assert errors == []
    assert emulator.stats()["sso_token_requests"] == 1
    assert set(answers) == {stored(store, token).access_token}


def test_twenty_threads_sharing_one_token_object_make_one_sso_call(emulator, sso_token):
    # given one expired Token object shared by the threads
    emulator.configure(sso_latency_s=0.3)
    token = sso_token()

    # when twenty threads ask it for its access token at once
    threads = [threading.Thread(target=token.valid_access_token) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then the SSO was called once
    assert emulator.stats()["sso_token_requests"] == 1


def test_a_stale_copy_does_not_spend_a_rotated_refresh_token(
    emulator, sso_token, store
):
    # given two copies of a token, one of which refreshes (rotating the secret)
    emulator.configure(rotation="rotate_reject_old")
    stale = sso_token()
    store.get(stale.id).refresh()
    calls = emulator.stats()["sso_token_requests"]

    # when the stale copy asks for a refresh with its old refresh token
    fresh = store.refresh(stale)

    # then the stored token is returned without calling the SSO, still valid
    assert emulator.stats()["sso_token_requests"] == calls
    assert fresh.state == VALID and fresh.refresh_token != stale.refresh_token


@pytest.mark.parametrize(
    ("switches", "reason"),
    [
        ({"sso_faults": [{"kind": "invalid_grant"}]}, "invalid_grant"),
        ({"legacy_invalid_token": True}, "invalid_token"),
    ],
    ids=["invalid_grant", "legacy_invalid_token"],
)
def test_a_dead_grant_marks_the_token_revoked_and_keeps_it(
    emulator, sso_token, store, switches, reason
):
    # given a token whose grant the SSO no longer honours
    token = sso_token()
    if "legacy_invalid_token" in switches:
        store.sso.revoke(token.refresh_token)
    emulator.configure(**switches)

    # when its access token is asked for
    with pytest.raises(TokenInvalidError) as caught:
        token.valid_access_token()

    # then it is revoked with the reason, and still stored
    row = stored(store, token)
    assert row.state == REVOKED and reason in row.state_reason
    assert row.state_changed is not None
    assert token_count(store) == 1
    assert token.refresh_token not in str(caught.value)
    assert list(store.query()) == []


def test_invalid_client_touches_nothing_and_is_logged_critical(
    emulator, sso_token, store, caplog
):
    # given an SSO that refuses our client credentials
    token = sso_token()
    before = stored(store, token)
    emulator.configure(sso_faults=[{"kind": "invalid_client"}])

    # when the token is refreshed
    with pytest.raises(SSOConfigurationError):
        token.valid_access_token()

    # then the row is exactly as before and the failure was logged critical
    after = stored(store, token)
    assert (
        after.state,
        after.refresh_failures,
        after.refresh_token,
        after.updated,
    ) == (VALID, 0, before.refresh_token, before.updated)
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503},
        {"status": 502},
        {"status": 429, "retry_after": 600},
        {"kind": "non_json"},
        {"kind": "no_access_token"},
        {"kind": "timeout", "seconds": 1.5},
    ],
    ids=["503", "502", "429", "non_json", "no_access_token", "timeout"],
)
@pytest.mark.parametrize("esi_settings_overrides", [{"sso_timeout_s": 0.5}])
def test_a_transient_failure_keeps_the_token_and_schedules_a_retry(
    emulator, sso_token, store, fault
):
    # given an SSO giving one transient failure
    token = sso_token()
    emulator.configure(sso_faults=[fault])
    started = store.clock.now()

    # when the expired token's access token is asked for
    with pytest.raises(TokenExpiredError) as caught:
        token.valid_access_token()

    # then the token stays valid, with the failure noted and a retry planned
    row = stored(store, token)
    assert row.state == VALID and row.refresh_token == token.refresh_token
    assert row.refresh_failures == 1 and row.last_refresh_error
    assert row.next_refresh_attempt > started
    if fault.get("retry_after"):
        assert row.next_refresh_attempt >= started + dt.timedelta(seconds=600)
    assert isinstance(caught.value.__cause__, SSOTransientError)
    assert token_count(store) == 1

    # and the next attempt succeeds
    assert token.valid_access_token() == stored(store, token).access_token


def test_a_changed_owner_kills_the_token(emulator, sso_token, store):
    # given a character that changed account since the login
    token = sso_token()
    emulator.configure(owner_changes=[CHARACTER_ID])

    # when the token is refreshed
    with pytest.raises(TokenInvalidError, match=OWNER_CHANGED):
        token.valid_access_token()

    # then it is marked owner_changed and kept; the new grant was not stored
    row = stored(store, token)
    assert row.state == OWNER_CHANGED
    assert row.access_token == token.access_token
    assert token_count(store) == 1


def test_a_token_without_refresh_token_cannot_renew(add_token):
    # given an expired token without refresh token
    token = add_token(scopes=[], refreshable=False, expires_in_s=-10)

    # when its access token is asked for
    with pytest.raises(TokenExpiredError):
        token.valid_access_token()
    # then TokenExpiredError says it cannot be renewed
    assert not token.can_refresh


def test_get_token_returns_a_usable_token_or_false(sso_token, runtime):
    # given a token holding assets and skills
    token = sso_token(scopes=[ASSETS, SKILLS])

    # when get_token is asked for held and unheld scopes
    found = Token.get_token(CHARACTER_ID, [ASSETS])
    missing = Token.get_token(CHARACTER_ID, [WALLET])

    # then it refreshed and returned the token, or False
    assert found == token and not found.expired
    assert missing is False
    assert Token.get_token(90000001, ASSETS) is False


def test_require_valid_refreshes_expired_tokens_and_drops_dead_ones(
    emulator, sso_token, store
):
    # given one healthy expired token and one whose grant was revoked
    healthy = sso_token(character_id=CHARACTER_ID)
    doomed = sso_token(character_id=90000001)
    store.sso.revoke(doomed.refresh_token)

    # when only valid tokens are asked for
    found = list(store.query().require_valid())

    # then the healthy one was refreshed, the dead one left out and revoked
    assert found == [healthy] and not found[0].expired
    assert stored(store, doomed).state == REVOKED


def test_bulk_refresh_refreshes_every_token_of_the_query(emulator, sso_token, store):
    # given two tokens and one revoked grant
    first = sso_token(character_id=CHARACTER_ID)
    second = sso_token(character_id=90000001)
    third = sso_token(character_id=90000002)
    store.sso.revoke(third.refresh_token)

    # when they are bulk refreshed
    refreshed = store.query().bulk_refresh()

    # then the live ones were refreshed and come back
    assert set(refreshed) == {first, second}
    assert all(not t.expired for t in refreshed)
    assert stored(store, third).state == REVOKED


def test_secrets_appear_in_no_repr_error_or_log(emulator, sso_token, store, caplog):
    # given a refreshed token, then a revoked one, with debug logs captured
    caplog.set_level(logging.DEBUG, logger="worker")
    token = sso_token()
    token.valid_access_token()
    store.sso.revoke(token.refresh_token)
    with pytest.raises(TokenInvalidError) as caught:
        token.refresh()

    # when the repr, error and logs are read
    shown = " ".join(
        [
            repr(token),
            str(caught.value),
            repr(caught.value),
            repr(store),
            repr(store.query()),
            caplog.text,
        ]
    )

    # then no secret is in them
    for secret in (token.access_token, token.refresh_token, emulator.client_secret):
        assert secret not in shown


def _with_extra_scope(emulator, store, character_id: int = CHARACTER_ID) -> Token:
    """A token stored with one scope more than its grant holds (as an
    import or a scope CCP removed leaves it)."""
    grant = emulator.create_grant(
        character_id=character_id, character_name="Pilot", scopes=[ASSETS]
    )
    return store.add(
        access_token=grant.access_token,
        refresh_token=grant.refresh_token,
        character_id=grant.character_id,
        character_name=grant.character_name,
        character_owner_hash=grant.owner_hash,
        scopes=[ASSETS, SKILLS],
        access_expires=grant.expires_at,
    )


def test_a_refresh_that_changes_the_scopes_hands_out_the_new_access_token(
    emulator, store
):
    # given an expired token whose grant holds fewer scopes than stored
    token = _with_extra_scope(emulator, store)
    old_access = token.access_token

    # when its access token is asked for
    access = token.valid_access_token()

    # then the new access token came back, and the object is fresh
    row = stored(store, token)
    assert access == row.access_token != old_access
    assert not token.expired and token.scopes == (ASSETS,) == row.scopes


@pytest.mark.parametrize("how", ["refresh_many", "bulk_refresh", "refresh"])
def test_every_refresh_entry_point_returns_fresh_tokens_after_a_scope_change(
    emulator, store, how
):
    # given an expired token whose grant holds fewer scopes than stored
    token = _with_extra_scope(emulator, store)

    # when it is refreshed through one entry point
    if how == "refresh_many":
        [fresh] = store.refresh_many([token])
    elif how == "bulk_refresh":
        [fresh] = list(store.query().bulk_refresh())
    else:
        fresh = store.refresh(token)

    # then what comes back is the stored, unexpired token
    assert not fresh.expired
    assert fresh.access_token == stored(store, token).access_token


def test_refresh_many_returns_tokens_another_holder_refreshed(
    emulator, sso_token, store
):
    # given a snapshot of two expired tokens; then another holder refreshes
    # the first, and the SSO will fail the next call
    emulator.configure(rotation="rotate_reject_old")
    raced = sso_token(character_id=CHARACTER_ID)
    failing = sso_token(character_id=90000011)
    snapshot = [store.get(raced.id), store.get(failing.id)]
    store.get(raced.id).refresh()
    emulator.configure(sso_faults=[{"status": 503}])

    # when the snapshot is refreshed
    refreshed = store.refresh_many(snapshot)

    # then the one refreshed elsewhere comes back as stored now, the one
    # whose refresh failed does not
    assert refreshed == [raced]
    assert refreshed[0].access_token == stored(store, raced).access_token
    assert not refreshed[0].expired


def _scopeless(store, character_id: int, expires_in_s: float) -> Token:
    return store.add(
        access_token=f"scopeless-{character_id}",
        refresh_token=None,
        character_id=character_id,
        character_name="Scopeless",
        character_owner_hash="owner",
        scopes=[],
        access_expires=store.clock.now() + dt.timedelta(seconds=expires_in_s),
    )


def test_bulk_refresh_returns_every_token_still_usable(emulator, sso_token, store):
    # given a token to refresh, one whose grant is dead, a fresh token
    # without refresh token and an expired one without
    healthy = sso_token(character_id=CHARACTER_ID)
    dead = sso_token(character_id=90000011)
    store.sso.revoke(dead.refresh_token)
    fresh = _scopeless(store, 90000012, 600)
    _scopeless(store, 90000013, -600)

    # when they are bulk refreshed
    refreshed = list(store.query().order_by("-character_id").bulk_refresh())

    # then the refreshed and the fresh scopeless one come back, in the
    # query's order; the dead and the lapsed ones do not
    assert refreshed == [healthy, fresh]
    assert not refreshed[0].expired


def test_bulk_refresh_leaves_out_a_token_whose_refresh_did_not_complete(
    emulator, sso_token, store
):
    # given an expired token and an SSO failing its next call
    token = sso_token()
    emulator.configure(sso_faults=[{"status": 503}])

    # when it is bulk refreshed
    refreshed = list(store.query().bulk_refresh())

    # then it is not among the usable ones, but kept for a later try
    assert refreshed == []
    assert stored(store, token).state == VALID


@pytest.mark.parametrize(
    "retry_after",
    ["315360000", "Wed, 21 Oct 2037 07:28:00 GMT", "inf"],
    ids=["ten-years", "http-date", "inf"],
)
def test_a_huge_retry_after_parks_a_token_for_an_hour_at_most(
    emulator, frozen_store, clock, retry_after
):
    # given an expired token and an SSO asking to wait for years
    grant = emulator.create_grant(
        character_id=CHARACTER_ID, character_name="Pilot", scopes=[ASSETS]
    )
    token = frozen_store.import_grant(grant)
    emulator.configure(sso_faults=[{"status": 429, "retry_after": retry_after}])

    # when a refresh run is throttled
    assert frozen_store.refresh_due().transient == 1

    # then the token waits an hour at most, still valid
    row = stored(frozen_store, token)
    assert row.state == VALID and row.refresh_failures == 1
    assert row.next_refresh_attempt <= clock.now() + dt.timedelta(seconds=3600)


@pytest.mark.parametrize(
    ("fault", "cause", "combined"),
    [
        (
            {"kind": "invalid_client"},
            SSOConfigurationError,
            TokenRefreshClientRefusedError,
        ),
        ({"status": 503}, SSOTransientError, TokenRefreshTransientError),
        ({"kind": "no_access_token"}, SSOTransientError, TokenRefreshTransientError),
        ({"access_token": "bad_signature"}, JWTValidationError, TokenRefreshJWTError),
    ],
    ids=["invalid_client", "503", "no_access_token", "bad_signature"],
)
def test_every_failed_refresh_is_a_token_expired_error_and_its_cause(
    emulator, sso_token, fault, cause, combined
):
    # given an expired token and an SSO about to fail its refresh
    token = sso_token()
    emulator.configure(sso_faults=[fault])

    # when its access token is asked for
    with pytest.raises(TokenExpiredError) as caught:
        token.valid_access_token()

    # then the one error answers both the django-esi habit and the cause,
    # and carries the context of both
    error = caught.value
    assert type(error) is combined
    assert isinstance(error, cause) and isinstance(caught.value.__cause__, cause)
    assert (error.token_id, error.character_id) == (token.id, CHARACTER_ID)
    assert error.status == caught.value.__cause__.status
    assert f"token {token.id}" in str(error)
    assert token.refresh_token not in str(error)


def test_a_refused_client_is_catchable_both_ways_and_logged_critical(
    emulator, sso_token, caplog
):
    # given an SSO that refuses our client credentials
    token = sso_token()
    emulator.configure(sso_faults=[{"kind": "invalid_client"}] * 2)

    # when two callers ask for the access token, each catching its own way
    with pytest.raises(SSOConfigurationError) as as_sso:
        token.valid_access_token()
    with pytest.raises(TokenExpiredError) as as_django_esi:
        token.valid_access_token()

    # then both caught it, with the SSO's error code, and the operator was
    # told loudly each time
    assert as_sso.value.error == as_django_esi.value.error == "invalid_client"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 2
    assert "ESI_WORKER_SSO_CLIENT_SECRET" in critical[0].getMessage()


def test_without_sso_settings_valid_access_token_is_expired_and_writes_nothing(
    emulator, sso_token, settings, clean_db, store
):
    # given an expired token, and a store without an SSO application
    token = sso_token()
    unconfigured = settings.replace(sso_client_id=None, sso_client_secret=None)
    sso = SSOClient(unconfigured)
    bare = TokenStore(clean_db, sso, unconfigured)
    seen = bare.get(token.id)

    # when its access token is asked for
    with pytest.raises(TokenExpiredError) as caught:
        seen.valid_access_token()

    # then the error is also a ConfigurationError naming the settings, no
    # SSO call was made and nothing was written
    assert isinstance(caught.value, ConfigurationError)
    assert type(caught.value) is TokenRefreshUnconfiguredError
    assert "ESI_WORKER_SSO_CLIENT_ID" in str(caught.value)
    assert emulator.stats()["sso_token_requests"] == 0
    row = stored(store, token)
    assert (row.refresh_failures, row.next_refresh_attempt) == (0, None)
    assert row.updated == token.updated
    with clean_db.connection() as conn:
        journal = conn.execute("SELECT count(*) FROM esi_token_refresh_journal")
        assert journal.fetchone()[0] == 0
    bare.close()
    sso.close()


def test_without_sso_settings_the_usable_token_queries_say_why(
    sso_token, settings, clean_db
):
    # given an expired token, and a runtime without an SSO application
    token = sso_token()
    unconfigured = settings.replace(sso_client_id=None, sso_client_secret=None)
    runtime = Runtime.from_settings(unconfigured, pool=clean_db)

    # when a usable token is looked for
    with runtime.activated():
        with pytest.raises(ConfigurationError, match="ESI_WORKER_SSO_CLIENT_ID"):
            Token.get_token(token.character_id, [ASSETS])
        with pytest.raises(ConfigurationError, match="ESI_WORKER_SSO_CLIENT_ID"):
            list(runtime.tokens.query().require_valid())
    # then the missing settings are named instead of "no token"
    runtime.close()
