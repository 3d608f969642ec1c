"""The SSO client: login URLs, code exchange, refresh and revoke for one app.

requests-oauthlib logs request bodies (refresh tokens included) at DEBUG on
the ``requests_oauthlib`` logger; nothing here ever turns that logger up.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from oauthlib.oauth2 import OAuth2Error
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from ..access_tokens import AccessTokenClaims, KeySet, verify_access_token
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, SSOError, SSOTransientError
from ..scopes import normalize_scopes
from ..settings import Settings
from .answers import classify_token_error, raise_for_answer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoginRequest:
    """Where to send the browser, and what to keep until the callback."""

    url: str
    state: str
    code_verifier: str | None = dataclasses.field(default=None, repr=False)
    redirect_uri: str | None = None


@dataclasses.dataclass(frozen=True)
class TokenAnswer:
    """A token-endpoint answer before its access token is verified.

    ``refresh_token`` is the one to keep: the new one when the SSO rotated
    it, else the one that was sent.
    """

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    rotated: bool = False


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


class SSOClient:
    """Talks to EVE SSO v2 for one registered application.

    Token calls build a fresh ``OAuth2Session`` each (sessions are not
    thread-safe) that share one keep-alive connection pool; the key set is
    cached, so a refresh costs one HTTP round trip.
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

    @property
    def is_native(self) -> bool:
        """Whether this app has no secret and so must log in with PKCE."""
        return self._settings.sso_client_secret is None

    def authorization_url(
        self,
        scopes: str | list[str] | tuple[str, ...] | None,
        *,
        state: str | None = None,
        pkce: bool = False,
        redirect_uri: str | None = None,
    ) -> LoginRequest:
        """The URL that starts a login, with a random ``state`` unless given.

        :param redirect_uri: the callback, if not the configured one.
        :raises ScopeError: a malformed scope.
        :raises ConfigurationError: no client id is configured.
        """
        state = state or secrets.token_urlsafe(24)
        redirect_uri = redirect_uri or self._settings.sso_callback_url
        params = {
            "response_type": "code",
            "client_id": self._require_client_id(),
            "redirect_uri": redirect_uri,
            "scope": " ".join(normalize_scopes(scopes)),
            "state": state,
        }
        verifier = None
        if pkce:
            verifier = secrets.token_urlsafe(48)
            params["code_challenge"] = _s256(verifier)
            params["code_challenge_method"] = "S256"
        url = f"{self.endpoints.authorize}?{urlencode(params)}"
        return LoginRequest(url, state, verifier, redirect_uri)

    def exchange_code(
        self,
        code: str,
        *,
        code_verifier: str | None = None,
        redirect_uri: str | None = None,
    ) -> TokenGrant:
        """Trade an authorization code for a verified grant.

        :raises SSOGrantError: the code is invalid, used or expired.
        :raises SSOConfigurationError: the client credentials were refused.
        :raises SSOTransientError: the SSO could not answer properly.
        :raises JWTValidationError: the access token failed verification.
        """
        if not code:
            raise ValueError("exchange_code() needs the authorization code")
        session = self._session(redirect_uri)
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
        return self.verify_answer(_answer(body, previous=None))

    def refresh(
        self,
        refresh_token: str,
        *,
        session: OAuth2Session | None = None,
        auth: Any = None,
    ) -> TokenGrant:
        """Trade a refresh token for a verified grant (maybe with a new refresh token).

        :param session: an ``OAuth2Session`` to send through (django-esi habit).
        :param auth: a requests auth object replacing the configured Basic auth.
        :raises SSOGrantError: the grant is dead.
        :raises SSOConfigurationError: the client credentials were refused.
        :raises SSOTransientError: the SSO could not answer properly.
        :raises JWTValidationError: the new access token failed verification.
        """
        answer = self.refresh_answer(refresh_token, session=session, auth=auth)
        return self.verify_answer(answer)

    def refresh_answer(
        self,
        refresh_token: str,
        *,
        session: OAuth2Session | None = None,
        auth: Any = None,
    ) -> TokenAnswer:
        """Like :meth:`refresh`, but without verifying the new access token.

        A caller that stores tokens keeps the answer's refresh token even when
        verification fails: under rotation the old one may already be spent.
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
        return _answer(body, previous=refresh_token)

    def verify_answer(self, answer: TokenAnswer) -> TokenGrant:
        """A grant from a token answer whose access token verifies.

        :raises JWTValidationError: the access token failed verification.
        :raises SSOTransientError: the key set could not be fetched.
        """
        claims = self.verify_access_token(answer.access_token)
        return TokenGrant(
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            expires_at=claims.expires_at,
            claims=claims,
        )

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
        return verify_access_token(
            token,
            self.keys,
            client_id=self._require_client_id(),
            clock=self._clock,
            allow_expired=allow_expired,
        )

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

    def _session(self, redirect_uri: str | None = None) -> OAuth2Session:
        session = OAuth2Session(
            self._require_client_id(),
            redirect_uri=redirect_uri or self._settings.sso_callback_url,
        )
        session.headers["User-Agent"] = self._settings.user_agent
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        return self._prepare(session)

    @staticmethod
    def _prepare(session: OAuth2Session) -> OAuth2Session:
        # Hooks are kept in sets, so registering the same function twice on a
        # caller's session is harmless.
        session.register_compliance_hook("access_token_response", raise_for_answer)
        session.register_compliance_hook("refresh_token_response", raise_for_answer)
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


def _answer(body: Mapping[str, Any], *, previous: str | None) -> TokenAnswer:
    """The secrets of a classified answer; a missing refresh token keeps ours."""
    new = body.get("refresh_token")
    refresh_token = str(new) if new else previous
    return TokenAnswer(
        access_token=str(body["access_token"]),
        refresh_token=refresh_token,
        rotated=bool(new) and previous is not None and new != previous,
    )


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
