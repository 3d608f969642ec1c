"""The emulator's EVE SSO v2, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from worker.emulator import Emulator

ASSETS = "esi-assets.read_assets.v1"
WALLET = "esi-wallet.read_character_wallet.v1"
CALLBACK = "http://localhost/callback/"


def _authorize(emulator: Emulator, client_id: str, scopes: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "scope": scopes,
        "state": "s-1",
        **extra,
    }
    answer = requests.get(
        f"{emulator.base_url}/v2/oauth/authorize",
        params=params,
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert query["state"] == ["s-1"]
    return query["code"][0]


def _refresh(emulator: Emulator, refresh_token: str) -> requests.Response:
    return requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=10,
    )


def _claims(emulator: Emulator, access_token: str) -> dict:
    jwks = requests.get(f"{emulator.base_url}/oauth/jwks", timeout=5).json()
    kid = jwt.get_unverified_header(access_token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    return jwt.decode(
        access_token,
        key,
        algorithms=[key.algorithm_name],
        audience="EVE Online",
        issuer="login.eveonline.com",
    )


def test_discovery_points_every_endpoint_at_the_emulator(emulator: Emulator) -> None:
    # when
    doc = requests.get(
        f"{emulator.base_url}/.well-known/oauth-authorization-server", timeout=5
    ).json()

    # then
    for field in (
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "issuer",
    ):
        assert doc[field].startswith(emulator.base_url)
    assert doc["code_challenge_methods_supported"] == ["S256"]


def test_web_login_exchanges_a_code_for_tokens_once(emulator: Emulator) -> None:
    # given
    code = _authorize(
        emulator,
        emulator.client_id,
        f"{ASSETS} {WALLET}",
        character_id="2112000002",
        character_name="Pilot Two",
    )
    form = {"grant_type": "authorization_code", "code": code}
    auth = (emulator.client_id, emulator.client_secret)

    # when
    first = requests.post(
        f"{emulator.base_url}/v2/oauth/token", data=form, auth=auth, timeout=5
    )
    second = requests.post(
        f"{emulator.base_url}/v2/oauth/token", data=form, auth=auth, timeout=5
    )

    # then
    body = first.json()
    assert first.status_code == 200
    assert body["expires_in"] == 1199 and body["token_type"] == "Bearer"
    assert len(body["refresh_token"]) == 24
    claims = _claims(emulator, body["access_token"])
    assert claims["sub"] == "CHARACTER:EVE:2112000002"
    assert claims["name"] == "Pilot Two"
    assert claims["exp"] - claims["iat"] == 1199
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_native_login_checks_the_pkce_verifier_as_sent(emulator: Emulator) -> None:
    # given: a verifier padded with '=' as CCP's own snippet makes it
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=")
        .decode()
    )
    client = emulator.native_client_id
    good = _authorize(
        emulator, client, ASSETS, code_challenge=challenge, code_challenge_method="S256"
    )
    bad = _authorize(
        emulator, client, ASSETS, code_challenge=challenge, code_challenge_method="S256"
    )
    url = f"{emulator.base_url}/v2/oauth/token"

    # when
    accepted = requests.post(
        url,
        data={
            "grant_type": "authorization_code",
            "code": good,
            "client_id": client,
            "code_verifier": verifier,
        },
        timeout=5,
    )
    refused = requests.post(
        url,
        data={
            "grant_type": "authorization_code",
            "code": bad,
            "client_id": client,
            "code_verifier": "wrong",
        },
        timeout=5,
    )

    # then
    assert accepted.status_code == 200 and accepted.json()["refresh_token"]
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_a_scopeless_login_gets_no_refresh_token(emulator: Emulator) -> None:
    # given
    code = _authorize(emulator, emulator.client_id, "")

    # when
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "authorization_code", "code": code},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )

    # then
    assert answer.status_code == 200
    assert answer.json()["refresh_token"] is None
    assert "scp" not in _claims(emulator, answer.json()["access_token"])


@pytest.mark.parametrize(
    ("rotation", "rotates", "old_still_works"),
    [
        ("off", False, True),
        ("rotate", True, True),
        ("rotate_reject_old", True, False),
    ],
)
def test_refresh_follows_the_rotation_switch(
    emulator: Emulator, rotation: str, rotates: bool, old_still_works: bool
) -> None:
    # given
    emulator.configure(rotation=rotation)
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])

    # when
    first = _refresh(emulator, grant.refresh_token)
    again = _refresh(emulator, grant.refresh_token)

    # then
    assert first.status_code == 200
    assert (first.json()["refresh_token"] != grant.refresh_token) is rotates
    assert (again.status_code == 200) is old_still_works
    assert emulator.stats()["sso_refreshes_by_character"] == {
        2112000001: 2 if old_still_works else 1
    }


@pytest.mark.parametrize(
    ("scp_form", "scopes", "expected"),
    [
        ("auto", [ASSETS, WALLET], [ASSETS, WALLET]),
        ("auto", [ASSETS], ASSETS),
        ("list", [ASSETS], [ASSETS]),
        ("string", [ASSETS, WALLET], f"{ASSETS} {WALLET}"),
        ("absent", [ASSETS], None),
    ],
)
def test_scp_claim_takes_the_configured_form(
    emulator: Emulator, scp_form: str, scopes: list[str], expected: object
) -> None:
    # given
    emulator.configure(scp_form=scp_form)
    grant = emulator.create_grant(2112000001, "Test Pilot One", scopes)

    # when
    claims = _claims(
        emulator, _refresh(emulator, grant.refresh_token).json()["access_token"]
    )

    # then
    assert claims.get("scp") == expected


def test_es256_tokens_verify_with_the_served_jwks(emulator: Emulator) -> None:
    # given
    emulator.configure(sign_alg="ES256", issuer="https://login.eveonline.com")
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])
    token = _refresh(emulator, grant.refresh_token).json()["access_token"]

    # when
    header = jwt.get_unverified_header(token)
    jwks = requests.get(f"{emulator.base_url}/oauth/jwks", timeout=5).json()

    # then
    assert header["alg"] == "ES256"
    assert jwks["SkipUnresolvedJsonWebKeys"] is True
    assert {k["kid"] for k in jwks["keys"]} >= {"JWT-Signature-Key", header["kid"]}
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=emulator.client_id)
    assert claims["iss"] == "https://login.eveonline.com"


def test_wrong_client_secret_is_invalid_client(emulator: Emulator) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])

    # when
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(emulator.client_id, "not-the-secret"),
        timeout=5,
    )

    # then
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["WWW-Authenticate"].startswith("Basic")


def test_json_bodies_are_refused(emulator: Emulator) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])

    # when
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )

    # then
    assert answer.status_code == 400


def test_injected_faults_are_answered_in_order_then_normal_service(
    emulator: Emulator,
) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])
    emulator.configure(
        sso_faults=[
            {"status": 503},
            {"status": 429, "retry_after": 5},
            {"kind": "non_json"},
            {"kind": "no_access_token"},
            {"kind": "invalid_client"},
        ]
    )

    # when
    answers = [_refresh(emulator, grant.refresh_token) for _ in range(6)]

    # then
    assert [a.status_code for a in answers] == [503, 429, 200, 200, 401, 200]
    assert answers[1].headers["Retry-After"] == "5"
    assert answers[2].headers["Content-Type"].startswith("text/html")
    assert "access_token" not in answers[3].json()
    assert "access_token" in answers[5].json()
    assert emulator.config.sso_faults == ()


def test_revoked_grant_cannot_be_refreshed(emulator: Emulator) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])

    # when
    revoked = requests.post(
        f"{emulator.base_url}/v2/oauth/revoke",
        data={"token_type_hint": "refresh_token", "token": grant.refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    bogus = requests.post(
        f"{emulator.base_url}/v2/oauth/revoke",
        data={"token": "bogus"},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )

    # then
    assert revoked.status_code == 200 and bogus.status_code == 200
    refused = _refresh(emulator, grant.refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_legacy_switch_answers_invalid_token(emulator: Emulator) -> None:
    # given
    emulator.configure(legacy_invalid_token=True)

    # when
    answer = _refresh(emulator, "MDEyMzQ1Njc4OWFiY2RlZg==")

    # then
    assert answer.json()["error"] == "invalid_token"


def test_owner_change_gives_a_new_owner_hash_once(emulator: Emulator) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])
    emulator.configure(owner_changes={2112000001})

    # when
    changed = _claims(
        emulator, _refresh(emulator, grant.refresh_token).json()["access_token"]
    )
    kept = _claims(
        emulator, _refresh(emulator, grant.refresh_token).json()["access_token"]
    )

    # then
    assert changed["owner"] != grant.owner_hash
    assert kept["owner"] == changed["owner"]


def test_the_grant_access_token_is_already_expired(emulator: Emulator) -> None:
    # when
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])

    # then
    with pytest.raises(jwt.ExpiredSignatureError):
        _claims(emulator, grant.access_token)
    assert grant.refresh_token not in repr(grant)
    assert grant.access_token not in repr(grant)
