"""Access-token verification: signature, key choice, issuer, audience, expiry, scp."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.clock import FrozenClock
from worker.errors import JWTValidationError, SSOTransientError
from worker.sso import UNKNOWN_KID_REFETCH_S, KeySet, SSOClient, verify_access_token

from .conftest import ASSETS, CHARACTER_ID, CHARACTER_NAME, SKILLS


def _fresh_access_token(emulator, sso: SSOClient, scopes=(ASSETS, SKILLS)) -> str:
    """A current access token, as the SSO hands out on refresh."""
    grant = emulator.create_grant(
        character_id=CHARACTER_ID, character_name=CHARACTER_NAME, scopes=list(scopes)
    )
    return sso.refresh(grant.refresh_token).access_token


def _with_payload(token: str, **changes) -> str:
    """The token with claims changed but the old signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = json.dumps(claims).encode()
    forged = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_a_fresh_token_verifies_into_its_claims(emulator, sso):
    # given a current access token
    token = _fresh_access_token(emulator, sso)

    # when it is verified
    claims = sso.verify_access_token(token)

    # then the claims describe the character and its scopes
    assert claims.character_id == CHARACTER_ID
    assert claims.character_name == CHARACTER_NAME
    assert claims.scopes == (ASSETS, SKILLS)
    assert claims.token_type == "character"
    assert claims.owner_hash
    assert claims.issued_at is not None and claims.issued_at < claims.expires_at


def test_an_es256_token_verifies_with_the_ec_key(emulator, sso):
    # given an SSO signing with its EC key
    emulator.configure(sign_alg="ES256")
    token = _fresh_access_token(emulator, sso)

    # when it is verified
    claims = sso.verify_access_token(token)

    # then the EC key was found by kid and accepted
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims.character_id == CHARACTER_ID


@pytest.mark.parametrize(
    ("scp_form", "scopes", "expected"),
    [
        ("list", [ASSETS, SKILLS], (ASSETS, SKILLS)),
        ("list", [ASSETS], (ASSETS,)),
        ("string", [ASSETS], (ASSETS,)),
        ("auto", [], ()),
        ("absent", [ASSETS], ()),
    ],
)
def test_scp_may_be_a_list_a_string_or_absent(
    emulator, sso, scp_form, scopes, expected
):
    # given an SSO writing scp in one form
    emulator.configure(scp_form=scp_form)
    grant = emulator.create_grant(
        character_id=CHARACTER_ID, character_name=CHARACTER_NAME, scopes=scopes
    )

    # when its access token is verified (the emulator's grant has expired)
    claims = sso.verify_access_token(grant.access_token, allow_expired=True)

    # then the scopes come out as a tuple
    assert claims.scopes == expected


def test_a_tampered_token_fails_the_signature_check(emulator, sso):
    # given a token whose character was changed after signing
    token = _with_payload(
        _fresh_access_token(emulator, sso), sub="CHARACTER:EVE:90000001"
    )

    # when it is verified
    with pytest.raises(JWTValidationError, match="signature") as caught:
        sso.verify_access_token(token)

    # then the message names the check, never the token
    assert token not in str(caught.value)


def test_a_token_for_another_application_fails_the_audience_check(emulator, settings):
    # given a verifier registered under another client id
    sso = SSOClient(settings.replace(sso_client_id="someone-else"))
    token = _fresh_access_token(emulator, SSOClient(settings))

    # when the token is verified
    with pytest.raises(JWTValidationError, match="audience"):
        sso.verify_access_token(token)
    # then it was refused for the audience


@pytest.mark.parametrize(
    "issuer", ["login.eveonline.com", "https://login.eveonline.com"]
)
def test_both_documented_issuers_are_accepted(emulator, sso, issuer):
    # given an SSO naming itself one of the documented ways
    emulator.configure(issuer=issuer)

    # when its token is verified
    claims = sso.verify_access_token(_fresh_access_token(emulator, sso))

    # then it passes
    assert claims.character_id == CHARACTER_ID


def test_a_foreign_issuer_is_refused(emulator, sso):
    # given an SSO claiming another issuer
    emulator.configure(issuer="https://login.example.com")

    # when its token is verified
    with pytest.raises(JWTValidationError, match="issuer"):
        sso.verify_access_token(_fresh_access_token(emulator, sso))
    # then the issuer check failed


def test_an_expired_token_is_refused(emulator, settings):
    # given a verifier whose clock is two hours ahead
    clock = FrozenClock()
    sso = SSOClient(settings, clock=clock)
    token = _fresh_access_token(emulator, sso)
    clock.advance(7200)

    # when the token is verified
    with pytest.raises(JWTValidationError, match="expired"):
        sso.verify_access_token(token)

    # then it still verifies when expiry is waived (importing old grants)
    assert sso.verify_access_token(token, allow_expired=True).character_id


def test_a_token_signed_by_an_unknown_key_is_refused(emulator, sso):
    # given a token signed by a key the SSO never published
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    real = jwt.decode(
        _fresh_access_token(emulator, sso), options={"verify_signature": False}
    )
    token = jwt.encode(real, key, algorithm="RS256", headers={"kid": "rogue-key"})

    # when it is verified
    with pytest.raises(JWTValidationError, match="rogue-key"):
        sso.verify_access_token(token)
    # then the unknown key id is named


def test_alg_none_is_refused(emulator, sso):
    # given an unsigned token
    real = jwt.decode(
        _fresh_access_token(emulator, sso), options={"verify_signature": False}
    )
    token = jwt.encode(real, None, algorithm="none")

    # when it is verified
    with pytest.raises(JWTValidationError, match="algorithm"):
        sso.verify_access_token(token)
    # then the algorithm was refused


def test_an_unknown_kid_refetches_the_key_set_at_most_once_a_minute(emulator, sso):
    # given a key set fed by the real JWKS endpoint, counting fetches
    clock = FrozenClock()
    fetches = []

    def fetch():
        fetches.append(clock.now())
        return sso._fetch_jwks()

    keys = KeySet(fetch, max_age_s=3600, clock=clock)
    keys.key_for("JWT-Signature-Key", "RS256")

    # when unknown kids are asked for twice within the minute, then after it
    clock.advance(UNKNOWN_KID_REFETCH_S)
    for _ in range(2):
        with pytest.raises(JWTValidationError):
            keys.key_for("rotated-key", "RS256")
    clock.advance(UNKNOWN_KID_REFETCH_S)
    with pytest.raises(JWTValidationError):
        keys.key_for("rotated-key", "RS256")

    # then the first load plus one re-fetch per minute happened
    assert len(fetches) == 3


def test_a_key_is_only_used_for_its_own_algorithm(emulator, sso):
    # given the published RSA key
    # when it is asked for under ES256
    with pytest.raises(JWTValidationError, match="RS256"):
        sso.keys.key_for("JWT-Signature-Key", "ES256")
    # then the mismatch is refused


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_a_time_claim_out_of_range_is_refused_as_a_bad_token(emulator, sso, claim):
    # given a validly signed token whose time claim no calendar can hold
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="local-key", alg="RS256", use="sig")
    keys = KeySet(lambda: {"keys": [jwk]}, max_age_s=300)
    claims = jwt.decode(
        _fresh_access_token(emulator, sso), options={"verify_signature": False}
    )
    claims[claim] = 1e20
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "local-key"})

    # when it is verified (expiry waived, so only the range is checked)
    with pytest.raises(JWTValidationError, match=claim):
        verify_access_token(
            token, keys, client_id=emulator.client_id, allow_expired=True
        )
    # then it is one of our errors, naming the claim


@pytest.fixture
def local_signer(emulator, sso):
    """Sign any header and claims (a real token's, changed) with the key of
    a local key set, byte for byte: PyJWT's encoder refuses odd shapes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="local-key", alg="RS256", use="sig")
    keys = KeySet(lambda: {"keys": [jwk]}, max_age_s=300)
    real = jwt.decode(
        _fresh_access_token(emulator, sso), options={"verify_signature": False}
    )

    def segment(value) -> bytes:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    def sign(changes=None, *, drop=(), header=None):
        claims = {k: v for k, v in {**real, **(changes or {})}.items() if k not in drop}
        if header is None:
            header = {"alg": "RS256", "typ": "JWT", "kid": "local-key"}
        signing_input = segment(header) + b"." + segment(claims)
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + b"." + segment(signature)
        return token.decode(), keys

    return sign


_MISSING = object()


@pytest.mark.parametrize(
    ("claim", "value", "named"),
    [
        ("aud", 12345, "aud claim"),
        ("aud", {"client": "EVE Online"}, "aud claim"),
        ("aud", ["EVE Online", 7], "aud claim"),
        ("aud", [["nested"], "EVE Online"], "aud claim"),
        ("aud", _MISSING, "aud claim"),
        ("iss", ["login.eveonline.com"], "issuer"),
        ("iss", 42, "issuer"),
        ("sub", 2112000001, "subject"),
        ("sub", "CHARACTER:EVE:abc", "subject"),
        ("sub", "CHARACTER:EVE:-5", "subject"),
        ("sub", "CHARACTER:EVE:0", "subject"),
        ("sub", "CHARACTER:EVE:" + "9" * 30, "subject"),
        ("sub", "CHARACTER:EVE:" + "9" * 5000, "subject"),
        ("sub", "CORPORATION:EVE:98000001", "subject"),
        ("sub", "CHARACTER:EVE:1:2", "subject"),
        ("sub", ["CHARACTER:EVE:1"], "subject"),
        ("sub", _MISSING, "subject"),
        ("owner", 12345, "owner"),
        ("owner", ["hash"], "owner"),
        ("owner", _MISSING, "owner"),
        ("name", _MISSING, "name"),
        ("name", {"first": "Test"}, "name"),
        ("name", "", "name"),
        ("exp", "1700000000", "exp"),
        ("exp", True, "exp"),
        ("exp", None, "exp"),
        ("exp", _MISSING, "exp"),
        ("scp", 7, "scp"),
        ("scp", {"esi-assets.read_assets.v1": True}, "scp"),
        ("scp", [1, 2], "scp"),
        ("scp", "esi-assets.read_assets.v1,esi-skills.read_skills.v1", "scp"),
    ],
)
def test_a_malformed_claim_is_a_clear_validation_error(
    emulator, local_signer, claim, value, named
):
    # given a validly signed token whose one claim has the wrong shape
    drop = (claim,) if value is _MISSING else ()
    token, keys = local_signer({} if drop else {claim: value}, drop=drop)

    # when it is verified
    with pytest.raises(JWTValidationError) as caught:
        verify_access_token(
            token, keys, client_id=emulator.client_id, allow_expired=True
        )

    # then it fails as one of our errors, naming the claim, never the token
    assert named in str(caught.value)
    assert token not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ({"alg": "RS256"}, "kid"),
        ({"alg": "RS256", "kid": 7}, "kid"),
        ({"alg": "RS256", "kid": ""}, "kid"),
        ({"alg": "RS256", "kid": ["local-key"]}, "kid"),
        ({"alg": ["RS256"], "kid": "local-key"}, "algorithm"),
        ({"kid": "local-key"}, "algorithm"),
        ([1, 2], "JWT"),
        ("RS256", "JWT"),
        (7, "JWT"),
        (b"{not json", "JWT"),
    ],
    ids=[
        "no-kid",
        "int-kid",
        "empty-kid",
        "list-kid",
        "list-alg",
        "no-alg",
        "list-header",
        "string-header",
        "int-header",
        "not-json-header",
    ],
)
def test_a_malformed_header_is_a_clear_validation_error(
    emulator, local_signer, header, named
):
    # given a signed token whose header is malformed
    token, keys = local_signer(header=header)

    # when it is verified
    with pytest.raises(JWTValidationError, match=named):
        verify_access_token(token, keys, client_id=emulator.client_id)
    # then it fails as one of our errors, naming what is wrong


def test_a_key_set_whose_keys_are_not_a_list_is_transient(emulator):
    # given an SSO key set document with a malformed keys member
    keys = KeySet(lambda: {"keys": 5}, max_age_s=300)

    # when a key is asked for
    with pytest.raises(SSOTransientError, match="no usable key"):
        keys.key_for("local-key", "RS256")
    # then it is an outage to retry, not a TypeError
