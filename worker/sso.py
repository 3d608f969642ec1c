"""EVE SSO v2: login URLs, code exchange, refresh, revoke and JWT checks.

Every answer of the token endpoint goes through :func:`classify_token_error`,
so callers see only :class:`SSOGrantError`, :class:`SSOConfigurationError`
and :class:`SSOTransientError`, never a requests or oauthlib exception.

requests-oauthlib logs request bodies (refresh tokens included) at DEBUG on
the ``requests_oauthlib`` logger; nothing here ever turns that logger up.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import hashlib
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests
from oauthlib.oauth2 import OAuth2Error
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from .clock import SYSTEM_CLOCK, Clock
from .errors import (
    ConfigurationError,
    JWTValidationError,
    ScopeError,
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    SSOTransientError,
)
from .scopes import normalize_scopes
from .settings import Settings

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

_GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token"})
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


@dataclasses.dataclass(frozen=True)
class LoginRequest:
    """Where to send the browser, and what to keep until the callback."""

    url: str
    state: str
    code_verifier: str | None = dataclasses.field(default=None, repr=False)


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


@dataclasses.dataclass(frozen=True)
class TokenGrant:
    """A token-endpoint answer: both secrets and the verified claims."""

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    expires_at: dt.datetime
    claims: AccessTokenClaims

    def __repr__(self) -> str:
        return (
            f"TokenGrant(character_id={self.claims.character_id}, "
            f"expires_at={self.expires_at.isoformat()}, "
            f"scopes={len(self.claims.scopes)}, "
            f"refreshable={self.refresh_token is not None})"
        )


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """The SSO URLs, from the discovery document or the documented paths."""

    authorize: str
    token: str
    revoke: str
    jwks: str

    @classmethod
    def defaults(cls, base_url: str) -> Endpoints:
        """The documented v2 paths under ``base_url``."""
        return cls(
            authorize=f"{base_url}/v2/oauth/authorize",
            token=f"{base_url}/v2/oauth/token",
            revoke=f"{base_url}/v2/oauth/revoke",
            jwks=f"{base_url}/oauth/jwks",
        )


def classify_token_error(
    response: requests.Response | None = None,
    *,
    exc: BaseException | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> SSOError | None:
    """The error a token-endpoint answer amounts to; ``None`` when usable.

    :param response: the HTTP answer, when one came.
    :param exc: the exception raised instead of an answer (timeout, ...).
    """
    if response is None:
        kind = type(exc).__name__ if exc is not None else "no answer"
        return SSOTransientError(f"SSO token endpoint unreachable ({kind})")

    status = response.status_code
    if status == 429:
        return SSOTransientError(
            "SSO throttled the request (429)",
            status=status,
            retry_after_s=_retry_after_s(response, clock),
        )
    if status >= 500:
        return SSOTransientError(f"SSO answered {status}", status=status)

    body = _json_object(response)
    if body is None:
        return SSOTransientError(
            f"SSO answered {status} without a JSON object", status=status
        )
    error = _error_code(body.get("error"))
    if error in _GRANT_ERRORS:
        return SSOGrantError(
            f"SSO rejected the grant ({error})", status=status, error=error
        )
    if error in _CLIENT_ERRORS:
        return SSOConfigurationError(
            f"SSO rejected the client credentials ({error}); check "
            "ESI_WORKER_SSO_CLIENT_ID and ESI_WORKER_SSO_CLIENT_SECRET",
            status=status,
            error=error,
        )
    if error is not None or status != 200:
        return SSOTransientError(
            f"SSO answered {status} ({error or 'no error code'})",
            status=status,
            error=error,
        )
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        return SSOTransientError(
            "SSO answered 200 without an access token", status=status
        )
    return None


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


class SSOClient:
    """Talks to EVE SSO v2 for one registered application.

    Token calls build a fresh ``OAuth2Session`` each (sessions are not
    thread-safe) that share one connection pool.
    """

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock
        self._base_url = settings.sso_base_url
        self._timeout_s = settings.sso_timeout_s
        self._adapter = HTTPAdapter(
            pool_maxsize=max(10, 2 * settings.refresh_parallelism)
        )
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()
        self.keys = KeySet(
            self._fetch_jwks, max_age_s=settings.jwks_max_age_s, clock=clock
        )
        _allow_loopback_http(self._base_url)

    def __repr__(self) -> str:
        return f"SSOClient(base_url={self._base_url!r}, client_id={self._client_id!r})"

    @property
    def endpoints(self) -> Endpoints:
        """The SSO URLs; the discovery document is fetched once."""
        with self._lock:
            if self._endpoints is None:
                self._endpoints = self._discover()
            return self._endpoints

    def authorization_url(
        self,
        scopes: str | list[str] | tuple[str, ...] | None,
        *,
        state: str | None = None,
        pkce: bool = False,
    ) -> LoginRequest:
        """The URL that starts a login, with a random ``state`` unless given.

        :raises ScopeError: a malformed scope.
        :raises ConfigurationError: no client id is configured.
        """
        state = state or secrets.token_urlsafe(24)
        params = {
            "response_type": "code",
            "client_id": self._require_client_id(),
            "redirect_uri": self._settings.sso_callback_url,
            "scope": " ".join(normalize_scopes(scopes)),
            "state": state,
        }
        verifier = None
        if pkce:
            verifier = secrets.token_urlsafe(48)
            params["code_challenge"] = _s256(verifier)
            params["code_challenge_method"] = "S256"
        url = f"{self.endpoints.authorize}?{urlencode(params)}"
        return LoginRequest(url=url, state=state, code_verifier=verifier)

    def exchange_code(
        self, code: str, *, code_verifier: str | None = None
    ) -> TokenGrant:
        """Trade an authorization code for a verified grant.

        :raises SSOGrantError: the code is invalid, used or expired.
        :raises SSOConfigurationError: the client credentials were refused.
        :raises SSOTransientError: the SSO could not answer properly.
        :raises JWTValidationError: the access token failed verification.
        """
        if not code:
            raise ValueError("exchange_code() needs the authorization code")
        session = self._session()
        extra = {"code_verifier": code_verifier} if code_verifier else {}
        auth = self._basic_auth()
        body = self._call(
            lambda: session.fetch_token(
                self.endpoints.token,
                code=code,
                auth=auth,
                include_client_id=auth is None,
                timeout=self._timeout_s,
                **extra,
            )
        )
        return self._grant(body, previous_refresh_token=None)

    def refresh(
        self,
        refresh_token: str,
        *,
        session: OAuth2Session | None = None,
        auth: Any = None,
    ) -> TokenGrant:
        """Trade a refresh token for a new access token (and maybe a new refresh token).

        :param session: an ``OAuth2Session`` to send through (django-esi habit).
        :param auth: a requests auth object replacing the configured Basic auth.
        :raises SSOGrantError: the grant is dead.
        :raises SSOConfigurationError: the client credentials were refused.
        :raises SSOTransientError: the SSO could not answer properly.
        :raises JWTValidationError: the new access token failed verification.
        """
        if not refresh_token:
            raise ValueError("refresh() needs a refresh token")
        session = self._prepare(session) if session is not None else self._session()
        auth = auth if auth is not None else self._basic_auth()
        extra = {} if auth is not None else {"client_id": self._require_client_id()}
        body = self._call(
            lambda: session.refresh_token(
                self.endpoints.token,
                refresh_token=refresh_token,
                auth=auth,
                timeout=self._timeout_s,
                **extra,
            )
        )
        return self._grant(body, previous_refresh_token=refresh_token)

    def revoke(self, refresh_token: str) -> None:
        """Revoke a refresh token; the SSO answers 200 even for unknown ones.

        :raises SSOConfigurationError: the client credentials were refused.
        :raises SSOTransientError: the SSO could not be reached or failed.
        """
        data = {"token_type_hint": "refresh_token", "token": refresh_token}
        auth = self._basic_auth()
        if auth is None:
            data["client_id"] = self._require_client_id()
        try:
            response = self._http().post(
                self.endpoints.revoke, data=data, auth=auth, timeout=self._timeout_s
            )
        except requests.RequestException as exc:
            raise classify_token_error(exc=exc) from exc  # type: ignore[misc]
        if not 200 <= response.status_code < 300:
            error = classify_token_error(response, clock=self._clock)
            raise error or SSOTransientError(
                f"SSO answered {response.status_code} to a revocation",
                status=response.status_code,
            )

    def verify_access_token(
        self, token: str, *, allow_expired: bool = False
    ) -> AccessTokenClaims:
        """Check an access token's signature and claims; return the claims.

        :param allow_expired: skip the expiry check (importing an old grant).
        :raises JWTValidationError: naming the check that failed.
        :raises SSOTransientError: the key set could not be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JWTValidationError(
                "the access token is not a well-formed JWT"
            ) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in SUPPORTED_ALGORITHMS:
            raise JWTValidationError(f"algorithm {alg!r} is not accepted")
        if not isinstance(kid, str):
            raise JWTValidationError("the JWT header names no key id")

        key = self.keys.key_for(kid, alg)
        claims = _decode(token, key, alg)
        _check_claims(claims, client_id=self._require_client_id())
        return _claims_from(claims, self._clock, allow_expired=allow_expired)

    def close(self) -> None:
        """Close the pooled connections."""
        self._adapter.close()

    # -- helpers -------------------------------------------------------------

    @property
    def _client_id(self) -> str | None:
        return self._settings.sso_client_id

    def _require_client_id(self) -> str:
        if not self._client_id:
            raise ConfigurationError(
                "ESI_WORKER_SSO_CLIENT_ID is not set; register an application "
                "at developers.eveonline.com and configure it"
            )
        return self._client_id

    def _basic_auth(self) -> HTTPBasicAuth | None:
        """Basic client auth for web apps; ``None`` for PKCE-only (native) apps."""
        secret = self._settings.sso_client_secret
        if secret is None:
            return None
        return HTTPBasicAuth(self._require_client_id(), secret.get_secret_value())

    def _http(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = self._settings.user_agent
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        return session

    def _session(self) -> OAuth2Session:
        session = OAuth2Session(
            self._require_client_id(), redirect_uri=self._settings.sso_callback_url
        )
        session.headers["User-Agent"] = self._settings.user_agent
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        return self._prepare(session)

    @staticmethod
    def _prepare(session: OAuth2Session) -> OAuth2Session:
        # Hooks are kept in sets, so registering the same function twice on a
        # caller's session is harmless.
        session.register_compliance_hook("access_token_response", _raise_for_answer)
        session.register_compliance_hook("refresh_token_response", _raise_for_answer)
        return session

    def _call(self, send: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        """Run one token request; translate whatever escapes into our errors."""
        try:
            return send()
        except SSOError:
            raise
        except requests.RequestException as exc:
            raise classify_token_error(exc=exc) from exc  # type: ignore[misc]
        except (OAuth2Error, ValueError, Warning) as exc:
            # oauthlib's exceptions may hold the parsed token; do not chain.
            raise SSOTransientError(
                f"SSO token answer could not be parsed ({type(exc).__name__})"
            ) from None

    def _grant(
        self, body: Mapping[str, Any], *, previous_refresh_token: str | None
    ) -> TokenGrant:
        access_token = str(body["access_token"])
        claims = self.verify_access_token(access_token)
        refresh_token = body.get("refresh_token") or previous_refresh_token
        return TokenGrant(
            access_token=access_token,
            refresh_token=str(refresh_token) if refresh_token else None,
            expires_at=claims.expires_at,
            claims=claims,
        )

    def _discover(self) -> Endpoints:
        defaults = Endpoints.defaults(self._base_url)
        url = f"{self._base_url}/.well-known/oauth-authorization-server"
        try:
            response = self._http().get(url, timeout=self._timeout_s)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning(
                "SSO discovery failed (%s); using the documented paths",
                type(exc).__name__,
            )
            return defaults
        if not isinstance(document, dict):
            return defaults
        return Endpoints(
            authorize=str(document.get("authorization_endpoint") or defaults.authorize),
            token=str(document.get("token_endpoint") or defaults.token),
            revoke=str(document.get("revocation_endpoint") or defaults.revoke),
            jwks=str(document.get("jwks_uri") or defaults.jwks),
        )

    def _fetch_jwks(self) -> Mapping[str, Any]:
        try:
            response = self._http().get(self.endpoints.jwks, timeout=self._timeout_s)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise SSOTransientError(
                f"SSO key set could not be fetched ({type(exc).__name__})"
            ) from exc
        if not isinstance(document, dict):
            raise SSOTransientError("SSO key set is not a JSON object")
        return document


def _raise_for_answer(response: requests.Response) -> requests.Response:
    """requests-oauthlib compliance hook: our classification before its parser."""
    error = classify_token_error(response)
    if error is not None:
        raise error
    return response


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_code(value: Any) -> str | None:
    """The OAuth error code; the SSO once sent ``"invalid_grant: <text>"``."""
    if not isinstance(value, str) or not value:
        return None
    code = value.split(":", 1)[0].strip().lower()
    return code if code.replace("_", "").isalpha() else "malformed"


def _retry_after_s(response: requests.Response, clock: Clock) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - clock.now()).total_seconds())


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """Usable signing keys by kid; entries PyJWT cannot read are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys") or ():
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
    # aud in _check_claims (PyJWT would accept either audience alone).
    options = {
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "verify_aud": False,
        "verify_iss": False,
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
    issuer = claims.get("iss")
    if issuer not in ACCEPTED_ISSUERS:
        raise JWTValidationError(f"issuer {issuer!r} is not EVE SSO")
    audience = claims.get("aud")
    audiences = {audience} if isinstance(audience, str) else set(audience or ())
    for expected in (client_id, EVE_AUDIENCE):
        if expected not in audiences:
            raise JWTValidationError(f"audience does not include {expected!r}")
    if not isinstance(claims.get("exp"), (int, float)):
        raise JWTValidationError("the access token has no numeric exp claim")


def _claims_from(
    claims: Mapping[str, Any], clock: Clock, *, allow_expired: bool
) -> AccessTokenClaims:
    expires_at = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    if not allow_expired and clock.time() > claims["exp"] + CLOCK_LEEWAY_S:
        raise JWTValidationError(
            f"the access token expired at {expires_at.isoformat()}"
        )
    token_type, character_id = _subject(claims.get("sub"))
    name, owner = claims.get("name"), claims.get("owner")
    if not isinstance(name, str) or not isinstance(owner, str) or not owner:
        raise JWTValidationError("the access token lacks the name or owner claim")

    iat = claims.get("iat")
    return AccessTokenClaims(
        character_id=character_id,
        character_name=name,
        owner_hash=owner,
        scopes=_scopes(claims.get("scp")),
        expires_at=expires_at,
        token_type=token_type,
        issued_at=dt.datetime.fromtimestamp(iat, dt.UTC)
        if isinstance(iat, (int, float))
        else None,
    )


def _subject(sub: Any) -> tuple[str, int]:
    """``CHARACTER:EVE:<id>`` -> ("character", id)."""
    parts = sub.split(":") if isinstance(sub, str) else []
    if len(parts) != 3 or parts[1] != "EVE" or not parts[2].isdigit():
        raise JWTValidationError(
            f"subject {sub!r} is not of the form CHARACTER:EVE:<id>"
        )
    return parts[0].lower(), int(parts[2])


def _scopes(scp: Any) -> tuple[str, ...]:
    """The ``scp`` claim: a list, a single string, or absent for no scopes."""
    if scp is None:
        return ()
    try:
        return normalize_scopes(scp)
    except ScopeError as exc:
        raise JWTValidationError(f"the scp claim is malformed: {exc}") from None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _allow_loopback_http(base_url: str) -> None:
    """Let oauthlib talk plain HTTP to an SSO on this machine (the emulator).

    oauthlib refuses non-HTTPS token URLs unless this process-wide switch is
    set; it is only ever set for loopback hosts, never for a remote SSO.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
    else:
        raise ConfigurationError(
            f"ESI_WORKER_SSO_BASE_URL must use https unless it is on this "
            f"machine, got {base_url!r}"
        )
