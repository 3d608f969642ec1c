"""SSO access tokens: the signing key set and the checks of a JWT's claims.

An access token is trusted only after :func:`verify_access_token` checked
its signature against the SSO's published keys (:class:`KeySet`) and its
issuer, audience, subject and expiry.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import jwt

from .clock import SYSTEM_CLOCK, Clock
from .errors import JWTValidationError, ScopeError, SSOTransientError
from .scopes import normalize_scopes

log = logging.getLogger(__name__)

ACCEPTED_ISSUERS = frozenset(
    {
        "login.eveonline.com",
        "https://login.eveonline.com",
        "https://login.eveonline.com/",
    }
)
EVE_AUDIENCE = "EVE Online"
SUPPORTED_ALGORITHMS = ("RS256", "ES256")
UNKNOWN_KID_REFETCH_S = 60.0
CLOCK_LEEWAY_S = 10.0
# Character ids are stored as bigint.
MAX_CHARACTER_ID = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class AccessTokenClaims:
    """The verified claims of an SSO access token."""

    character_id: int
    character_name: str
    owner_hash: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime
    token_type: str = "character"
    issued_at: dt.datetime | None = None


class KeySet:
    """The SSO's signing keys, fetched on demand and cached by ``kid``.

    An unknown ``kid`` (the SSO rotated its keys) triggers a re-fetch, at
    most once per :data:`UNKNOWN_KID_REFETCH_S`.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        max_age_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key_for(self, kid: str, alg: str) -> Any:
        """The public key to check a token signed with ``kid`` and ``alg``.

        :raises JWTValidationError: no such key, or it is for another algorithm.
        :raises SSOTransientError: the key set could not be fetched at all.
        """
        with self._lock:
            if self._is_stale():
                self._load(keep_old_on_failure=True)
            jwk = self._keys.get(kid)
            if jwk is None and self._may_refetch():
                log.info("unknown JWT key id %r; fetching the SSO key set again", kid)
                self._load(keep_old_on_failure=True)
                jwk = self._keys.get(kid)

        if jwk is None:
            raise JWTValidationError(f"key id {kid!r} is not in the SSO key set")
        if jwk.algorithm_name != alg:
            raise JWTValidationError(
                f"key {kid!r} is for {jwk.algorithm_name}, the token says {alg}"
            )
        return jwk.key

    def _is_stale(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock.monotonic() - self._fetched_at >= self._max_age_s

    def _may_refetch(self) -> bool:
        assert self._fetched_at is not None
        return self._clock.monotonic() - self._fetched_at >= UNKNOWN_KID_REFETCH_S

    def _load(self, *, keep_old_on_failure: bool) -> None:
        try:
            document = self._fetch()
            keys = _parse_jwks(document)
        except SSOTransientError:
            if not (keep_old_on_failure and self._keys):
                raise
            log.warning("SSO key set could not be fetched; using the cached keys")
            keys = self._keys
        self._keys = keys
        self._fetched_at = self._clock.monotonic()


def verify_access_token(
    token: str,
    keys: KeySet,
    *,
    client_id: str,
    clock: Clock = SYSTEM_CLOCK,
    allow_expired: bool = False,
) -> AccessTokenClaims:
    """Check an access token's signature and claims; return the claims.

    :param allow_expired: skip the expiry check (importing an old grant).
    :raises JWTValidationError: naming the check that failed.
    :raises SSOTransientError: the key set could not be fetched.
    """
    header = _unverified_header(token)
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        raise JWTValidationError(f"algorithm {alg!r} is not accepted")
    if not isinstance(kid, str) or not kid:
        raise JWTValidationError("the JWT header names no key id (kid)")

    key = keys.key_for(kid, alg)
    claims = _decode(token, key, alg)
    _check_claims(claims, client_id=client_id)
    return _claims_from(claims, clock, allow_expired=allow_expired)


def issued_to(token: str) -> str | None:
    """The client id an access token says it was issued to (``azp``), read
    without verifying it; None for a token that is not a readable JWT (an
    SSO v1 token) or names no client.

    Only a guard against using a token with the wrong application: never
    trust the answer for anything else.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    segment = token.split(".")[1]
    try:
        claims = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
    except (ValueError, binascii.Error):
        return None
    azp = claims.get("azp") if isinstance(claims, dict) else None
    return azp if isinstance(azp, str) and azp else None


def _unverified_header(token: str) -> dict[str, Any]:
    """The JWT's header, read without its payload or signature.

    PyJWT's own reader decodes all three segments, and the decode that
    follows does it again; the header alone is enough to choose the key.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise JWTValidationError("the access token is not a well-formed JWT")
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
    except (ValueError, binascii.Error):
        raise JWTValidationError("the access token is not a well-formed JWT") from None
    if not isinstance(header, dict):
        raise JWTValidationError("the JWT header is not a JSON object")
    if "crit" in header:
        # RFC 7515: extensions we do not understand make the token invalid.
        raise JWTValidationError("the JWT header names critical extensions (crit)")
    return header


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """Usable signing keys by kid; entries PyJWT cannot read are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys")
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            log.debug("skipping SSO key %r of type %r", entry["kid"], entry.get("kty"))
    if not keys:
        raise SSOTransientError("SSO key set holds no usable key")
    return keys


def _decode(token: str, key: Any, alg: str) -> dict[str, Any]:
    # Time claims are checked against the injected clock in _claims_from, and
    # aud in _check_claims (PyJWT would accept either audience alone); sub
    # too, so its error names the claim.
    options = {
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
    try:
        return jwt.decode(token, key, algorithms=[alg], options=options)  # type: ignore[arg-type]
    except jwt.InvalidSignatureError:
        raise JWTValidationError("the access token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise JWTValidationError(
            f"the access token could not be decoded ({type(exc).__name__})"
        ) from None


def _check_claims(claims: Mapping[str, Any], *, client_id: str) -> None:
    """The issuer, audience and expiry checks; each claim's type first, so
    a malformed token fails as one, never as a ``TypeError``."""
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in ACCEPTED_ISSUERS:
        raise JWTValidationError(f"issuer {_shown(issuer)} is not EVE SSO")
    audiences = _audiences(claims.get("aud"))
    for expected in (client_id, EVE_AUDIENCE):
        if expected not in audiences:
            raise JWTValidationError(f"audience does not include {expected!r}")
    if not _is_number(claims.get("exp")):
        raise JWTValidationError("the access token has no numeric exp claim")


def _claims_from(
    claims: Mapping[str, Any], clock: Clock, *, allow_expired: bool
) -> AccessTokenClaims:
    expires_at = _instant(claims["exp"], "exp")
    if not allow_expired and clock.time() > claims["exp"] + CLOCK_LEEWAY_S:
        raise JWTValidationError(
            f"the access token expired at {expires_at.isoformat()}"
        )
    token_type, character_id = _subject(claims.get("sub"))
    iat = claims.get("iat")
    return AccessTokenClaims(
        character_id=character_id,
        character_name=_text(claims, "name"),
        owner_hash=_text(claims, "owner"),
        scopes=_scopes(claims.get("scp")),
        expires_at=expires_at,
        token_type=token_type,
        issued_at=_instant(iat, "iat") if _is_number(iat) else None,
    )


def _text(claims: Mapping[str, Any], claim: str) -> str:
    """A claim that must be a non-empty string."""
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise JWTValidationError(
            f"the access token's {claim} claim is missing or not a string"
        )
    return value


def _audiences(aud: Any) -> set[str]:
    """The ``aud`` claim: one string or a list of them (RFC 7519 4.1.3)."""
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return set(aud)
    raise JWTValidationError(
        f"the aud claim is a {type(aud).__name__}, not a string or a list of strings"
    )


def _is_number(value: Any) -> TypeGuard[float]:
    # bool is an int to Python, never a time to JWT.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A claim as an error message may show it: a string, else its type."""
    if isinstance(value, str):
        return repr(value[:80])
    return f"of type {type(value).__name__}"


def _instant(seconds: float, claim: str) -> dt.datetime:
    """A time claim as an aware datetime; one out of any calendar's range fails."""
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise JWTValidationError(f"the {claim} claim is out of range") from None


def _subject(sub: Any) -> tuple[str, int]:
    """``CHARACTER:EVE:<id>`` -> ("character", id)."""
    parts = sub.split(":") if isinstance(sub, str) else []
    digits = parts[2] if len(parts) == 3 else ""
    if (
        parts[:2] != ["CHARACTER", "EVE"]
        or not (digits.isascii() and digits.isdigit() and len(digits) <= 19)
        or not 0 < int(digits) <= MAX_CHARACTER_ID
    ):
        raise JWTValidationError(
            f"subject {_shown(sub)} is not of the form CHARACTER:EVE:<id>"
        )
    return parts[0].lower(), int(parts[2])


def _scopes(scp: Any) -> tuple[str, ...]:
    """The ``scp`` claim: a list, a single string, or absent for no scopes."""
    if scp is None:
        return ()
    if not isinstance(scp, (str, list)):
        raise JWTValidationError(
            f"the scp claim is a {type(scp).__name__}, not a string or a list"
        )
    try:
        return normalize_scopes(scp)
    except ScopeError as exc:
        raise JWTValidationError(f"the scp claim is malformed: {exc}") from None
