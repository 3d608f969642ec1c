"""The SSO client against the emulator: URLs, exchange, refresh, revoke, errors."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from worker.errors import (
    SSOConfigurationError,
    SSOGrantError,
    SSOTransientError,
)
from worker.sso import SSOClient, classify_token_error

from .conftest import ASSETS, CHARACTER_ID, CHARACTER_NAME, SKILLS


def _login(emulator, sso: SSOClient, *, pkce: bool = False):
    """Follow the authorize redirect the way a browser would; the callback query."""
    login = sso.authorization_url([ASSETS], pkce=pkce)
    answer = requests.get(
        login.url + f"&character_id={CHARACTER_ID}", allow_redirects=False, timeout=5
    )
    assert answer.status_code == 302
    return login, parse_qs(urlsplit(answer.headers["Location"]).query)


def test_endpoints_come_from_the_discovery_document(emulator, sso):
    # given an SSO that publishes a discovery document
    # when the endpoints are asked for
    endpoints = sso.endpoints

    # then they are the ones the document names
    assert endpoints.token == f"{emulator.base_url}/v2/oauth/token"
    assert endpoints.jwks == f"{emulator.base_url}/oauth/jwks"
    assert endpoints.revoke == f"{emulator.base_url}/v2/oauth/revoke"


def test_authorization_url_carries_client_scopes_state_and_pkce(settings, sso):
    # given a client
    # when a PKCE login URL is built
    login = sso.authorization_url(f"{SKILLS} {ASSETS}", pkce=True)

    # then it names the client, the callback, the sorted scopes and a challenge
    query = parse_qs(urlsplit(login.url).query)
    assert query["client_id"] == [settings.sso_client_id]
    assert query["redirect_uri"] == [settings.sso_callback_url]
    assert query["scope"] == [f"{ASSETS} {SKILLS}"]
    assert query["state"] == [login.state]
    assert query["code_challenge_method"] == ["S256"]
    assert login.code_verifier and login.code_verifier not in repr(login)


def test_exchange_code_returns_a_verified_grant(emulator, sso):
    # given a completed login
    login, callback = _login(emulator, sso, pkce=True)
    assert callback["state"] == [login.state]

    # when the code is exchanged
    grant = sso.exchange_code(callback["code"][0], code_verifier=login.code_verifier)

    # then the grant holds both secrets and the character's claims
    assert grant.refresh_token and grant.access_token
    assert grant.claims.character_id == CHARACTER_ID
    assert grant.claims.scopes == (ASSETS,)
    assert grant.expires_at == grant.claims.expires_at


def test_a_used_code_is_a_dead_grant(emulator, sso):
    # given a code that was already exchanged
    _, callback = _login(emulator, sso)
    sso.exchange_code(callback["code"][0])

    # when it is exchanged again
    with pytest.raises(SSOGrantError) as caught:
        sso.exchange_code(callback["code"][0])

    # then the SSO's invalid_grant is reported
    assert caught.value.error == "invalid_grant"


@pytest.mark.parametrize("rotation", ["off", "rotate", "rotate_reject_old"])
def test_refresh_returns_the_refresh_token_the_sso_hands_back(
    emulator, sso, refresh_token, rotation
):
    # given an SSO in one rotation mode
    emulator.configure(rotation=rotation)

    # when the token is refreshed
    grant = sso.refresh(refresh_token)

    # then the grant carries the token to use next time
    if rotation == "off":
        assert grant.refresh_token == refresh_token
    else:
        assert grant.refresh_token != refresh_token
    assert grant.claims.character_name == CHARACTER_NAME
    assert sso.refresh(grant.refresh_token).claims.character_id == CHARACTER_ID


def test_revoke_kills_the_grant(sso, refresh_token):
    # given a live refresh token
    # when it is revoked
    sso.revoke(refresh_token)

    # then refreshing with it is refused as a dead grant
    with pytest.raises(SSOGrantError):
        sso.refresh(refresh_token)


@pytest.mark.parametrize(
    ("switches", "error_class", "error_code"),
    [
        ({"sso_faults": [{"kind": "invalid_grant"}]}, SSOGrantError, "invalid_grant"),
        (
            {"sso_faults": [{"kind": "invalid_client"}]},
            SSOConfigurationError,
            "invalid_client",
        ),
        ({"sso_faults": [{"status": 503}]}, SSOTransientError, None),
        ({"sso_faults": [{"status": 502}]}, SSOTransientError, None),
        ({"sso_faults": [{"kind": "non_json"}]}, SSOTransientError, None),
        ({"sso_faults": [{"kind": "no_access_token"}]}, SSOTransientError, None),
    ],
    ids=[
        "invalid_grant",
        "invalid_client",
        "503",
        "502",
        "non_json",
        "no_access_token",
    ],
)
def test_each_token_endpoint_answer_becomes_one_of_our_errors(
    emulator, sso, refresh_token, switches, error_class, error_code
):
    # given an SSO that gives one kind of bad answer
    emulator.configure(**switches)

    # when a refresh is attempted
    with pytest.raises(error_class) as caught:
        sso.refresh(refresh_token)

    # then it surfaces as our error, without the secret
    if error_code:
        assert caught.value.error == error_code
    assert refresh_token not in str(caught.value)


def test_legacy_invalid_token_answer_is_a_dead_grant(emulator, sso):
    # given an SSO that answers unknown refresh tokens with the legacy code
    emulator.configure(legacy_invalid_token=True)

    # when an unknown refresh token is refreshed
    with pytest.raises(SSOGrantError) as caught:
        sso.refresh("bm90LWEtcmVhbC10b2tlbg==")

    # then it is a dead grant
    assert caught.value.error == "invalid_token"


def test_throttling_reports_retry_after(emulator, sso, refresh_token):
    # given an SSO that throttles with Retry-After
    emulator.configure(sso_faults=[{"status": 429, "retry_after": 120}])

    # when a refresh is attempted
    with pytest.raises(SSOTransientError) as caught:
        sso.refresh(refresh_token)

    # then the wait is carried on the error
    assert caught.value.status == 429
    assert caught.value.retry_after_s == 120


@pytest.mark.parametrize("esi_settings_overrides", [{"sso_timeout_s": 0.3}])
def test_a_timeout_is_transient(emulator, sso, refresh_token):
    # given an SSO slower than our timeout
    emulator.configure(sso_faults=[{"kind": "timeout", "seconds": 1.5}])

    # when a refresh is attempted
    with pytest.raises(SSOTransientError, match="unreachable"):
        sso.refresh(refresh_token)
    # then requests' own exception never reaches the caller (checked by the type)


def test_wrong_client_secret_is_a_configuration_error(
    settings, emulator, refresh_token
):
    # given a client with a wrong secret
    sso = SSOClient(settings.replace(sso_client_secret="not-the-secret"))

    # when a refresh is attempted
    with pytest.raises(SSOConfigurationError) as caught:
        sso.refresh(refresh_token)

    # then the error says to check the credentials and hides the secret
    assert "CLIENT_SECRET" in str(caught.value)
    assert "not-the-secret" not in str(caught.value)


def test_an_unreachable_sso_is_transient(settings, refresh_token):
    # given a client pointed at a port nobody listens on
    sso = SSOClient(settings.replace(sso_base_url="http://127.0.0.1:1"))

    # when a refresh is attempted
    with pytest.raises(SSOTransientError):
        sso.refresh(refresh_token)


def test_classify_takes_the_code_before_a_colon():
    # given the non-standard answer the SSO once sent
    response = requests.Response()
    response.status_code = 400
    response._content = b'{"error": "invalid_grant: Token is expired or invalid."}'

    # when it is classified
    error = classify_token_error(response)

    # then it is a dead grant
    assert isinstance(error, SSOGrantError)
    assert error.error == "invalid_grant"


def test_grant_repr_and_logs_hide_the_secrets(emulator, sso, refresh_token, caplog):
    # given a refresh logged at debug level for our modules
    caplog.set_level(logging.DEBUG, logger="worker")

    # when a refresh happens
    grant = sso.refresh(refresh_token)

    # then neither secret shows in the repr or in any log line
    for secret in (
        grant.access_token,
        grant.refresh_token,
        refresh_token,
        emulator.client_secret,
    ):
        assert secret not in repr(grant)
        assert secret not in repr(sso)
        assert secret not in caplog.text
