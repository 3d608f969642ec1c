"""The emulator's SSO fault injection and the switches for unverified behaviour."""

from __future__ import annotations

import json

import jwt
import pytest
import requests

from worker.clock import FrozenClock
from worker.emulator import Emulator, EmulatorConfig
from worker.errors import ConfigurationError

ASSETS = "esi-assets.read_assets.v1"
CHARACTER_ID = 2112000001


def _refresh(emulator: Emulator, refresh_token: str, **extra) -> requests.Response:
    return requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=10,
    )


def _jwks(emulator: Emulator) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(
        requests.get(f"{emulator.base_url}/oauth/jwks", timeout=5).json()
    )


def _verified(emulator: Emulator, token: str) -> dict:
    """The claims, checked against the served JWKS as a client would."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = _jwks(emulator)[kid]
    return jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience=emulator.client_id,
        issuer="login.eveonline.com",
    )


def _grant(emulator: Emulator, character_id: int = CHARACTER_ID):
    return emulator.create_grant(character_id, "Test Pilot One", [ASSETS])


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "body"),
    [
        (
            {
                "status": 400,
                "body": "<html>Bad Request</html>",
                "content_type": "text/html",
            },
            400,
            "text/html",
            b"<html>Bad Request</html>",
        ),
        (
            {"status": 400, "json": {"error": "invalid_request"}},
            400,
            "application/json",
            b'{"error": "invalid_request"}',
        ),
        ({"status": 403, "body": "Forbidden"}, 403, "text/plain", b"Forbidden"),
        (
            {
                "status": 200,
                "body": '{"access_token": "eyJ',
                "content_type": "application/json",
            },
            200,
            "application/json",
            b'{"access_token": "eyJ',
        ),
        ({"status": 200, "json": []}, 200, "application/json", b"[]"),
        ({"status": 204, "body": ""}, 204, "text/plain", b""),
    ],
    ids=[
        "400-html",
        "400-invalid-request",
        "403-text",
        "200-truncated",
        "200-list",
        "204",
    ],
)
def test_a_fault_answers_any_status_with_any_body(
    emulator, fault, status, content_type, body
):
    # given a live grant and a fault queued for the token endpoint
    grant = _grant(emulator)
    emulator.configure(sso_faults=[fault])

    # when a refresh is sent
    answer = _refresh(emulator, grant.refresh_token)

    # then the fault is the answer, byte for byte, and the grant was untouched
    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith(content_type)
    assert answer.content == body
    assert _refresh(emulator, grant.refresh_token).status_code == 200


def test_a_fault_can_carry_headers_repeat_and_wait_for_its_grant_type(emulator):
    # given a fault for refreshes only, twice, with its own headers
    grant = _grant(emulator)
    emulator.configure(
        sso_faults=[
            {
                "status": 503,
                "headers": {"X-Upstream": "down"},
                "retry_after": 7,
                "count": 2,
                "grant_type": "refresh_token",
            }
        ]
    )

    # when a code exchange and then three refreshes are sent
    exchange = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "authorization_code", "code": "nope"},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=10,
    )
    answers = [_refresh(emulator, grant.refresh_token) for _ in range(3)]

    # then the exchange was not hit, the two refreshes were, then service
    assert exchange.status_code == 400 and exchange.json()["error"] == "invalid_grant"
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["X-Upstream"] == "down"
    assert answers[0].headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("craft", "check"),
    [
        ("expired", jwt.ExpiredSignatureError),
        ("unknown_kid", KeyError),
        ("bad_signature", jwt.InvalidSignatureError),
        ("wrong_issuer", jwt.InvalidIssuerError),
        ("wrong_audience", jwt.InvalidAudienceError),
        ("not_a_jwt", jwt.DecodeError),
    ],
)
def test_a_crafted_access_token_fails_the_check_it_is_made_for(emulator, craft, check):
    # given an SSO that retires used refresh tokens, and a crafted answer queued
    emulator.configure(
        rotation="rotate_reject_old", sso_faults=[{"access_token": craft}]
    )
    grant = _grant(emulator)

    # when a refresh is sent
    answer = _refresh(emulator, grant.refresh_token)

    # then the refresh really happened (new refresh token, old one retired)
    # and only the access token is wrong, in the way asked for
    body = answer.json()
    assert answer.status_code == 200 and body["refresh_token"] != grant.refresh_token
    assert _refresh(emulator, grant.refresh_token).status_code == 400
    with pytest.raises(check):
        _verified(emulator, body["access_token"])
    assert _refresh(emulator, body["refresh_token"]).status_code == 200


def test_crafted_tokens_for_another_character_or_owner_verify_but_mislead(emulator):
    # given crafts that pass every signature check
    grant = _grant(emulator)
    emulator.configure(
        sso_faults=[
            {"access_token": "other_character", "character_id": 2112000099},
            {"access_token": "other_owner"},
            {"access_token": "unsigned"},
        ]
    )

    # when three refreshes are sent
    other, owner, unsigned = (
        _refresh(emulator, grant.refresh_token).json()["access_token"] for _ in range(3)
    )

    # then the first names another character, the second another owner,
    # and the third carries no signature at all
    assert _verified(emulator, other)["sub"] == "CHARACTER:EVE:2112000099"
    claims = _verified(emulator, owner)
    assert claims["sub"] == f"CHARACTER:EVE:{CHARACTER_ID}"
    assert claims["owner"] != grant.owner_hash
    assert jwt.get_unverified_header(unsigned)["alg"] == "none"


def test_a_processed_fault_rotates_the_token_but_loses_the_answer(emulator):
    # given an SSO that retires used refresh tokens, behind a gateway that
    # will lose its next answer
    emulator.configure(
        rotation="rotate_reject_old",
        sso_faults=[
            {"process": True, "status": 502, "body": "<html>Bad Gateway</html>"}
        ],
    )
    grant = _grant(emulator)

    # when the refresh is sent, then sent again
    lost = _refresh(emulator, grant.refresh_token)
    again = _refresh(emulator, grant.refresh_token)

    # then the client saw a 502, yet the SSO had rotated the refresh token
    assert lost.status_code == 502 and lost.content == b"<html>Bad Gateway</html>"
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert emulator.stats()["sso_refreshes_by_character"] == {CHARACTER_ID: 1}


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"patch": {"expires_in": "soon", "scope": 123}}, "patched"),
        ({"drop": ["access_token"]}, "dropped"),
        ({"truncate": -1}, "truncated"),
    ],
)
def test_a_real_answer_can_be_patched_cut_or_stripped(emulator, change, check):
    # given a fault that changes the real answer
    grant = _grant(emulator)
    emulator.configure(rotation="rotate_reject_old", sso_faults=[change])

    # when a refresh is sent
    answer = _refresh(emulator, grant.refresh_token)

    # then the answer is the real one (a rotated refresh token), changed
    raw = answer.content
    if check == "truncated":
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        assert raw.endswith(b'"') and b'"refresh_token":' in raw
        return
    body = json.loads(raw)
    assert body["refresh_token"] != grant.refresh_token
    if check == "patched":
        assert body["expires_in"] == "soon" and body["scope"] == 123
    else:
        assert "access_token" not in body


def test_a_dropped_connection_gives_no_answer(emulator):
    # given a fault that closes the connection
    grant = _grant(emulator)
    emulator.configure(sso_faults=[{"kind": "drop"}])

    # when a refresh is sent
    with pytest.raises(requests.ConnectionError):
        _refresh(emulator, grant.refresh_token)

    # then the next one is served
    assert _refresh(emulator, grant.refresh_token).status_code == 200


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 200, "bogus": 1},
        {"status": 700},
        {"kind": "explode"},
        {"access_token": "forged"},
        {"status": 500, "body": 42},
        {"status": 500, "kind": "timeout"},
        {"patch": []},
        {"status": 503, "count": 0},
        {"status": 503, "grant_type": "password"},
    ],
)
def test_a_malformed_fault_is_refused_over_http(emulator, fault):
    # when a malformed fault is configured through the admin endpoint
    answer = requests.patch(
        f"{emulator.base_url}/_emulator/config", json={"sso_faults": [fault]}, timeout=5
    )

    # then it is refused naming the problem, and nothing was queued
    assert answer.status_code == 400
    assert emulator.config.sso_faults == ()


@pytest.fixture
def frozen_emulator():
    """An emulator of its own whose clock only moves when told to."""
    clock = FrozenClock()
    emu = Emulator(EmulatorConfig(), clock=clock)
    emu.start()
    yield emu, clock
    emu.stop()


def test_a_rotated_out_token_works_during_the_grace_period_only(frozen_emulator):
    # given rotation with a 60 s grace period for the old refresh token
    emulator, clock = frozen_emulator
    emulator.configure(rotation="rotate_reject_old", rotation_grace_s=60)
    grant = _grant(emulator)
    first = _refresh(emulator, grant.refresh_token)

    # when the old token is used again within the grace period, then after it
    clock.advance(30)
    within = _refresh(emulator, grant.refresh_token)
    clock.advance(31)
    after = _refresh(emulator, grant.refresh_token)

    # then it worked once more (handing out yet another token), then not;
    # the tokens it handed out live on
    assert first.status_code == 200 and within.status_code == 200
    assert within.json()["refresh_token"] not in (
        grant.refresh_token,
        first.json()["refresh_token"],
    )
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert _refresh(emulator, first.json()["refresh_token"]).status_code == 200


def test_an_idle_refresh_token_expires(frozen_emulator):
    # given refresh tokens that die after 30 days without use
    emulator, clock = frozen_emulator
    emulator.configure(rotation="off", refresh_idle_expiry_s=30 * 86400)
    used = _grant(emulator, 2112000001)
    idle = _grant(emulator, 2112000002)

    # when one is used every 20 days and the other not at all
    clock.advance(20 * 86400)
    first = _refresh(emulator, used.refresh_token)
    clock.advance(20 * 86400)
    second = _refresh(emulator, used.refresh_token)
    forgotten = _refresh(emulator, idle.refresh_token)

    # then the used one lives on, the idle one is refused
    assert first.status_code == second.status_code == 200
    assert forgotten.status_code == 400 and forgotten.json()["error"] == "invalid_grant"


def test_a_transfer_can_kill_every_grant_of_the_character(emulator):
    # given a character with two grants, transferred, under the switch that
    # makes a transfer void its grants
    one, two = _grant(emulator), _grant(emulator)
    emulator.configure(owner_changes=[CHARACTER_ID], transfer_revokes=True)

    # when both are refreshed
    answers = [_refresh(emulator, g.refresh_token) for g in (one, two)]

    # then both are dead grants, and a new login gets the new owner hash
    assert [a.status_code for a in answers] == [400, 400]
    assert {a.json()["error"] for a in answers} == {"invalid_grant"}
    fresh = _grant(emulator)
    assert fresh.owner_hash != one.owner_hash


def test_the_sso_can_sign_with_a_new_kid_published_late(emulator):
    # given an SSO that starts signing with a new key it does not publish yet
    grant = _grant(emulator)
    emulator.configure(
        signing_kid="JWT-Signature-Key-2", jwks_withdrawn=["JWT-Signature-Key-2"]
    )

    # when a token is refreshed before and after the key is published
    early = _refresh(emulator, grant.refresh_token).json()["access_token"]
    unpublished = {k.key_id for k in _jwks(emulator).keys}
    emulator.configure(jwks_withdrawn=[])
    late = _refresh(emulator, grant.refresh_token).json()["access_token"]

    # then both are signed with the new kid, which is served only once
    # published, next to the old one
    assert jwt.get_unverified_header(early)["kid"] == "JWT-Signature-Key-2"
    assert "JWT-Signature-Key-2" not in unpublished
    assert _verified(emulator, late)["sub"] == f"CHARACTER:EVE:{CHARACTER_ID}"
    assert {"JWT-Signature-Key", "JWT-Signature-Key-2"} <= {
        k.key_id for k in _jwks(emulator).keys
    }


def test_a_kid_cannot_change_its_algorithm(emulator):
    # given a kid made for RS256
    emulator.configure(signing_kid="only-rsa")

    # when it is asked to sign ES256, then the switch is refused
    with pytest.raises(ConfigurationError, match="RS256"):
        emulator.configure(sign_alg="ES256")


def test_reset_forgets_added_keys(emulator):
    # given a key added by a switch
    emulator.configure(signing_kid="temporary")

    # when the emulator is reset
    emulator.reset()

    # then the JWKS is back to the two keys made at start
    assert "temporary" not in {k.key_id for k in _jwks(emulator).keys}
    assert len(_jwks(emulator).keys) == 2
