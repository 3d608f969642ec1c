"""Odd token-endpoint answers through the SSO client: classified once, never lost."""

from __future__ import annotations

import logging
import socket

import pytest
from requests_oauthlib import OAuth2Session

from worker.errors import (
    IncompleteResponseError,
    JWTValidationError,
    SSOConfigurationError,
    SSOGrantError,
    SSOIncompleteResponseError,
    SSOTransientError,
)
from worker.sso import SSOClient
from worker.sso.answers import RETRY_AFTER_MAX_S, may_have_acted

from .conftest import CHARACTER_ID

HTML = "text/html"


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (
            {"status": 400, "body": "<html>Bad Request</html>", "content_type": HTML},
            SSOTransientError,
        ),
        ({"status": 400, "json": {"error": "invalid_request"}}, SSOTransientError),
        ({"status": 400, "body": ""}, SSOTransientError),
        (
            {"status": 401, "body": "<html>401</html>", "content_type": HTML},
            SSOTransientError,
        ),
        ({"status": 401, "json": {"error": "invalid_client"}}, SSOConfigurationError),
        (
            {"status": 400, "json": {"error": "unauthorized_client"}},
            SSOConfigurationError,
        ),
        (
            {"status": 403, "body": "<html>Forbidden</html>", "content_type": HTML},
            SSOTransientError,
        ),
        ({"status": 403, "json": {}}, SSOTransientError),
        ({"status": 403, "json": {"error": "invalid_grant"}}, SSOGrantError),
        (
            {"status": 400, "json": {"error": "invalid_grant: Token is invalid."}},
            SSOGrantError,
        ),
        (
            {"status": 400, "json": {"error": {"code": "invalid_grant"}}},
            SSOTransientError,
        ),
        ({"status": 400, "json": {"error": "invalid_scope"}}, SSOTransientError),
        ({"status": 200, "json": []}, SSOTransientError),
        ({"status": 200, "body": '{"access_token": "eyJ'}, SSOTransientError),
        (
            {"status": 200, "json": {"access_token": None}},
            SSOIncompleteResponseError,
        ),
        (
            {"status": 200, "json": {"access_token": 12345}},
            SSOIncompleteResponseError,
        ),
        ({"kind": "no_access_token"}, SSOIncompleteResponseError),
        (
            {"status": 200, "json": {"error": "server_error", "access_token": "x"}},
            SSOTransientError,
        ),
        ({"status": 204, "body": ""}, SSOTransientError),
        (
            {"status": 302, "body": "", "headers": {"Location": "/nowhere"}},
            SSOTransientError,
        ),
        ({"status": 429, "json": {"error": "slow_down"}}, SSOTransientError),
        ({"status": 500, "body": "oops"}, SSOTransientError),
        ({"kind": "drop"}, SSOTransientError),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else v.__name__,
)
def test_every_odd_answer_becomes_one_of_our_errors(
    emulator, sso, refresh_token, fault, error_class
):
    # given an SSO about to give one odd answer
    emulator.configure(sso_faults=[fault])

    # when a refresh is attempted
    with pytest.raises(error_class) as caught:
        sso.refresh(refresh_token)

    # then it is exactly our error, with no secret in it
    assert type(caught.value) is error_class
    assert refresh_token not in str(caught.value)


@pytest.mark.parametrize(
    "patch",
    [
        {"expires_in": "soon"},
        {"expires_in": None},
        {"expires_in": 10**12},
        {"scope": 123},
        {"scope": ["a", "b"]},
        {"token_type": 7},
        {"refresh_token": ""},
    ],
)
def test_fields_the_worker_does_not_use_never_spoil_an_answer(
    emulator, sso, refresh_token, patch
):
    # given an SSO whose answers carry an odd field beside good tokens
    emulator.configure(rotation="rotate_reject_old", sso_faults=[{"patch": patch}])

    # when a refresh is made
    grant = sso.refresh(refresh_token)

    # then the access token verified and the refresh token to keep is known
    assert grant.claims.character_id == CHARACTER_ID
    if patch.get("refresh_token") == "":
        assert grant.refresh_token == refresh_token
    else:
        assert grant.refresh_token != refresh_token


@pytest.mark.parametrize(
    "change",
    [
        {"patch": {"access_token": 5}},
        {"drop": ["access_token"]},
        {"patch": {"error": "server_error"}},
        {"truncate": -1},
        {"access_token": "not_a_jwt"},
    ],
)
def test_a_garbled_200_still_hands_back_its_new_refresh_token(
    emulator, sso, refresh_token, change
):
    # given an SSO that rotates, then garbles the rest of its answer
    emulator.configure(rotation="rotate_reject_old", sso_faults=[change])

    # when the answer is read without verifying the access token
    answer = sso.refresh_answer(refresh_token)

    # then the new refresh token is in it, and verifying names the problem
    assert answer.rotated and answer.refresh_token != refresh_token
    with pytest.raises((SSOTransientError, JWTValidationError)):
        sso.verify_answer(answer)
    assert sso.refresh(answer.refresh_token).claims.character_id == CHARACTER_ID


def test_a_refresh_token_of_the_wrong_type_is_not_kept(emulator, sso, refresh_token):
    # given an answer whose refresh_token is a number
    emulator.configure(sso_faults=[{"patch": {"refresh_token": 42}}])

    # when it is read, then it is refused as a whole
    with pytest.raises(SSOTransientError, match="refresh_token"):
        sso.refresh_answer(refresh_token)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("315360000", RETRY_AFTER_MAX_S),
        ("Wed, 21 Oct 2037 07:28:00 GMT", RETRY_AFTER_MAX_S),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("-5", 0.0),
        ("120", 120.0),
        ("nan", None),
        ("soon", None),
    ],
)
def test_retry_after_is_read_within_bounds(
    emulator, sso, refresh_token, retry_after, expected
):
    # given a throttling SSO asking for some wait
    emulator.configure(sso_faults=[{"status": 429, "retry_after": retry_after}])

    # when a refresh is throttled
    with pytest.raises(SSOTransientError) as caught:
        sso.refresh(refresh_token)

    # then the wait is at most an hour, never negative
    assert caught.value.retry_after_s == expected


@pytest.mark.parametrize("esi_settings_overrides", [{"sso_timeout_s": 0.3}])
def test_a_timeout_after_the_request_went_out_may_have_rotated(
    emulator, sso, refresh_token
):
    # given an SSO that carries the refresh out, then answers too late
    emulator.configure(
        rotation="rotate_reject_old",
        sso_faults=[{"process": True, "kind": "timeout", "seconds": 1.0}],
    )

    # when a refresh times out
    with pytest.raises(SSOTransientError) as caught:
        sso.refresh(refresh_token)

    # then the error says the SSO may have acted, and it had
    assert "may have acted" in str(caught.value)
    assert may_have_acted(caught.value)
    with pytest.raises(SSOGrantError):
        sso.refresh(refresh_token)


def test_an_unreachable_sso_did_nothing(settings, refresh_token):
    # given a client pointed at a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sso = SSOClient(settings.replace(sso_base_url=f"http://127.0.0.1:{port}"))

    # when a refresh is attempted
    with pytest.raises(SSOTransientError, match="unreachable") as caught:
        sso.refresh(refresh_token)

    # then it is known that the SSO never saw it
    assert not may_have_acted(caught.value)
    sso.close()


@pytest.mark.parametrize(
    ("fault", "acted"),
    [
        ({"status": 429, "retry_after": 5}, False),
        ({"status": 400, "json": {"error": "invalid_request"}}, False),
        ({"kind": "invalid_client"}, False),
        ({"kind": "invalid_grant"}, False),
        ({"status": 502}, True),
        ({"status": 503}, True),
        ({"kind": "non_json"}, True),
        ({"kind": "drop"}, True),
    ],
)
def test_may_have_acted_tells_failures_that_could_have_rotated(
    emulator, sso, refresh_token, fault, acted
):
    # given one failing answer
    emulator.configure(sso_faults=[fault])

    # when a refresh fails with it
    with pytest.raises(Exception) as caught:
        sso.refresh(refresh_token)

    # then may_have_acted says whether the SSO could have spent the token
    assert may_have_acted(caught.value) is acted


def test_a_callers_oauth2_session_is_only_the_transport(
    emulator, sso, refresh_token, caplog
):
    # given a django-esi style session holding a token of its own, and
    # requests-oauthlib's logger at debug level
    caplog.set_level(logging.DEBUG)
    session = OAuth2Session(emulator.client_id, token={"access_token": "other"})

    # when a refresh is sent through it
    grant = sso.refresh(refresh_token, session=session)

    # then it worked, and requests-oauthlib had nothing to log
    assert grant.claims.character_id == CHARACTER_ID
    assert not [r for r in caplog.records if r.name.startswith("requests_oauthlib")]
    assert refresh_token not in caplog.text and grant.refresh_token not in caplog.text


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "no_access_token"},
        {"drop": ["access_token"]},
        {"patch": {"access_token": ""}},
    ],
    ids=["no_access_token", "dropped", "empty"],
)
def test_a_200_without_an_access_token_is_incomplete_and_transient(
    emulator, sso, refresh_token, fault
):
    # given an SSO answering 200 without a usable access token
    emulator.configure(sso_faults=[fault])

    # when a refresh is attempted
    with pytest.raises(IncompleteResponseError) as caught:
        sso.refresh(refresh_token)

    # then the error is both what django-esi calls it and a transient one,
    # which may have rotated the refresh token
    error = caught.value
    assert isinstance(error, SSOIncompleteResponseError)
    assert isinstance(error, SSOTransientError) and error.status == 200
    assert may_have_acted(error)
    assert refresh_token not in str(error)
