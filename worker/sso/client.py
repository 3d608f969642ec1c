"""The SSO client: login URLs, code exchange, refresh and revoke for one app.

Token requests are plain form POSTs through requests, and their answers
are parsed and classified here (``answers``), never by oauthlib: its
parser drops a rotated refresh token on any odd field, and
requests-oauthlib logs request bodies (refresh tokens included) at DEBUG.
A caller's ``OAuth2Session`` (django-esi habit) is used as the transport
only; the requests-oauthlib loggers get the redaction filter anyway
(:func:`worker.logs.guard_library_loggers`), for code that calls them
directly.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from ..access_tokens import AccessTokenClaims, KeySet, verify_access_token
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, SSOError, SSOTransientError
from ..logs import guard_library_loggers
from ..scopes import normalize_scopes
from ..settings import Settings
from .answers import answer_body, classify_token_error

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
    it, else the one that was sent. ``problem`` is set when the answer
    carried a usable refresh token but no usable access token (a garbled
    200): :meth:`SSOClient.verify_answer` raises it, and a caller that
    stores tokens keeps the refresh token all the same.
    """

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    rotated: bool = False
    problem: SSOError | None = None


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

    Token calls build a fresh ``requests.Session`` each (sessions are not
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
        self._sessions = threading.local()
        self.keys = KeySet(
            self._fetch_jwks, max_age_s=settings.jwks_max_age_s, clock=clock
        )
        _allow_loopback_http(self._base_url)
        guard_library_loggers()

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
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri or self._settings.sso_callback_url,
        }
        if code_verifier:
            form["code_verifier"] = code_verifier
        answer = self._token_request(form, None, None, previous=None)
        return self.verify_answer(answer)

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
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self._token_request(form, session, auth, previous=refresh_token)

    def verify_answer(self, answer: TokenAnswer) -> TokenGrant:
        """A grant from a token answer whose access token verifies.

        :raises JWTValidationError: the access token failed verification.
        :raises SSOTransientError: the answer had no usable access token, or
            the key set could not be fetched.
        """
        if answer.problem is not None:
            raise answer.problem
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
        response = self._post(self.endpoints.revoke, data, None, auth)
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

    def require_application(self) -> str:
        """The client id, checked before anything is asked of the SSO.

        :raises ConfigurationError: no SSO application is configured.
        """
        return require_sso_application(self._settings)

    def close(self) -> None:
        """Close the pooled connections."""
        self._adapter.close()

    # -- helpers -------------------------------------------------------------

    @property
    def _client_id(self) -> str | None:
        return self._settings.sso_client_id

    def _require_client_id(self) -> str:
        return require_sso_application(self._settings)

    def _basic_auth(self) -> HTTPBasicAuth | None:
        """Basic client auth for web apps; ``None`` for PKCE-only (native) apps."""
        secret = self._settings.sso_client_secret
        if secret is None:
            return None
        return HTTPBasicAuth(self._require_client_id(), secret.get_secret_value())

    def _http(self) -> requests.Session:
        # One session per thread over the shared connection pool: building
        # a session makes two adapters of its own, a cost per refresh.
        session: requests.Session | None = getattr(self._sessions, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self._settings.user_agent
            session.mount("https://", self._adapter)
            session.mount("http://", self._adapter)
            self._sessions.session = session
        return session

    def _token_request(
        self,
        form: dict[str, str],
        session: requests.Session | None,
        auth: Any,
        *,
        previous: str | None,
    ) -> TokenAnswer:
        """POST one token request and read its answer (see :func:`_answer`)."""
        auth = auth if auth is not None else self._basic_auth()
        if auth is None:
            form["client_id"] = self._require_client_id()
        response = self._post(self.endpoints.token, form, session, auth)
        return _answer(response, previous=previous, clock=self._clock)

    def _post(
        self,
        url: str,
        form: Mapping[str, str],
        session: requests.Session | None,
        auth: Any,
    ) -> requests.Response:
        """Send a form; every failure to get an answer becomes our error."""
        # requests.Session.request, not the session's own: OAuth2Session's
        # would add its token to the request and log the form at DEBUG.
        http = session if session is not None else self._http()
        headers = {"Accept": "application/json"}
        if session is not None:
            headers["User-Agent"] = self._settings.user_agent
        try:
            return requests.Session.request(
                http,
                "POST",
                url,
                data=dict(form),
                auth=auth,
                headers=headers,
                timeout=self._timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise classify_token_error(exc=exc) from exc  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 (reported as our error)
            # Anything else (a caller's adapter, a decoding bug) is still an
            # answer we did not get; its text may hold the form, so no chain.
            raise SSOTransientError(
                f"SSO token request failed ({type(exc).__name__})"
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


def require_sso_application(settings: Settings) -> str:
    """The configured client id; what every SSO call needs first.

    A native application (PKCE) has no secret, so only the id is required;
    a web application missing its secret learns it from the SSO's
    ``invalid_client``, which is recorded and reported loudly.

    :raises ConfigurationError: no client id, naming the settings to set.
    """
    if not settings.sso_client_id:
        raise ConfigurationError(
            "no SSO application configured: set ESI_WORKER_SSO_CLIENT_ID and "
            "ESI_WORKER_SSO_CLIENT_SECRET (from developers.eveonline.com; a "
            "native application sets the client id only)"
        )
    return settings.sso_client_id


def _answer(
    response: requests.Response, *, previous: str | None, clock: Clock
) -> TokenAnswer:
    """The secrets of a token answer, or the error it amounts to.

    A 200 whose access token is unusable but which carries a new refresh
    token is still an answer: with rotation, that refresh token may be the
    only live one now, so it is handed back with the ``problem``.

    :raises SSOError: the answer is an error, or unusable and holds no new
        refresh token.
    """
    error = classify_token_error(response, clock=clock)
    if error is not None and response.status_code != 200:
        raise error
    refresh_token = _refresh_token_of(response, previous)
    if error is not None:
        if refresh_token in (None, previous):
            raise error
        log.warning("SSO answer unusable (%s); keeping its new refresh token", error)
        return TokenAnswer("", refresh_token, previous is not None, problem=error)

    body = answer_body(response)
    assert body is not None
    return TokenAnswer(
        access_token=body["access_token"],
        refresh_token=refresh_token,
        rotated=previous is not None and refresh_token != previous,
    )


# A complete "refresh_token": "..." pair in a body that is not valid JSON
# (cut short, or with junk around it).
_REFRESH_TOKEN_RE = re.compile(rb'"refresh_token"\s*:\s*"([A-Za-z0-9+/=._~-]{8,512})"')


def _refresh_token_of(response: requests.Response, previous: str | None) -> str | None:
    """The refresh token to keep after ``response``.

    A missing (or empty) refresh token means the SSO kept ours. One of a
    wrong type is not ours to keep: the answer is then unusable as a whole.

    :raises SSOTransientError: the refresh token field is not a string.
    """
    body = answer_body(response)
    if body is None:
        found = _REFRESH_TOKEN_RE.search(response.content or b"")
        return found.group(1).decode("ascii") if found else previous
    new = body.get("refresh_token")
    if new is None or new == "":
        return previous
    if not isinstance(new, str):
        raise SSOTransientError(
            f"SSO answered {response.status_code} with a refresh_token that is "
            f"not a string ({type(new).__name__})",
            status=response.status_code,
        )
    return new


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
