"""Logging a character in: the SSO authorization flow, for web apps and the CLI.

A web app that hosts its own callback calls :func:`begin_login` (it gets
the URL to send the browser to) and, on the callback, :func:`complete_login`.
Between the two, the login waits in ``esi_pending_login`` under its
``state``, single use and for ``pending_login_ttl_s``. The CLI runs the same
two steps around a one-shot loopback server (:func:`loopback_login`), with
PKCE when the application is native (has no secret).

An unknown, used or expired ``state`` raises :class:`SSOGrantError` with
``error="invalid_state"``, and a grant whose scopes are not the ones the
login asked for (the code of another login) ``error="scope_mismatch"``:
that login is dead and must start again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigurationError, SSOGrantError, WorkerError
from .scopes import normalize_scopes
from .tokens import GrantFields
from .tokens.grants import grant_fields
from .wording import counted

if TYPE_CHECKING:
    from .sso import TokenGrant
    from .tokens import Token, TokenStore

log = logging.getLogger(__name__)


def begin_login(
    scopes: str | Iterable[str] | None,
    *,
    user: str | None = None,
    redirect_to: str | None = None,
    redirect_uri: str | None = None,
    pkce: bool | None = None,
    store: TokenStore | None = None,
) -> tuple[str, str]:
    """Start a login; the authorization URL and its ``state``.

    :param user: the app's user the token will belong to.
    :param redirect_to: where the app wants to go after the callback
        (returned by nothing here; kept for the app with the login).
    :param redirect_uri: the callback URL, if not ``sso_callback_url``.
    :param pkce: use PKCE; by default only a native app (no secret) does.
    :raises ScopeError: a malformed scope.
    """
    store = store or _current_store()
    names = normalize_scopes(scopes)
    use_pkce = store.sso.is_native if pkce is None else pkce
    request = store.sso.authorization_url(
        names, pkce=use_pkce, redirect_uri=redirect_uri
    )
    now = store.clock.now()
    stale = now - dt.timedelta(seconds=store.settings.pending_login_ttl_s)
    with store.pool.connection() as conn:
        conn.execute("DELETE FROM esi_pending_login WHERE created < %s", (stale,))
        conn.execute(
            "INSERT INTO esi_pending_login (state, created, scopes, code_verifier,"
            " redirect_to, user_id) VALUES (%s, %s, %s, %s, %s, %s)",
            (
                request.state,
                now,
                list(names),
                store.cipher.encrypt(request.code_verifier),
                redirect_to,
                user,
            ),
        )
    log.info("login started for %s", counted(len(names), "scope"))
    return request.url, request.state


def complete_login(
    code: str,
    state: str,
    *,
    redirect_uri: str | None = None,
    store: TokenStore | None = None,
) -> Token:
    """Finish a login: check ``state``, exchange ``code``, store the token.

    The token is merged into an equivalent one (same character, scopes and
    user, or one without a user) instead of duplicated. When the access
    token carries no ``scp`` claim (ESI.md lists that as possible), the
    scopes asked for are stored: the SSO only hands out a refresh token
    for a login that was granted scopes.

    :raises SSOGrantError: unknown, used or expired state; a bad code; or
        a grant holding other scopes than the login asked for.
    :raises SSOError: the SSO could not exchange the code.
    :raises JWTValidationError: the access token failed verification.
    """
    store = store or _current_store()
    pending = _take_pending(store, state)
    verifier = store.cipher.decrypt(pending["code_verifier"])
    grant = store.sso.exchange_code(
        code, code_verifier=verifier, redirect_uri=redirect_uri
    )
    fields = _login_fields(grant, normalize_scopes(pending["scopes"]))
    token = store.add(**dataclasses.asdict(fields), user=pending["user_id"])
    log.info(
        "login of character %r stored as token %r",
        token.character_id,
        token.id,
        extra={"character_id": token.character_id, "token_id": token.id},
    )
    return token


def pending_redirect(state: str, *, store: TokenStore | None = None) -> str | None:
    """Where the app asked to go after the login with ``state`` (not consumed)."""
    store = store or _current_store()
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT redirect_to FROM esi_pending_login WHERE state = %s", (state,)
        ).fetchone()
    return row[0] if row else None


def loopback_login(
    scopes: str | Iterable[str] | None,
    *,
    store: TokenStore,
    on_url: Callable[[str], None],
    user: str | None = None,
    port: int | None = None,
    timeout_s: float | None = None,
) -> Token:
    """Log in through a one-shot callback server on 127.0.0.1.

    :param on_url: told the authorization URL once the server listens.
    :param port: the port to listen on; by default the one of
        ``sso_callback_url`` (0 picks a free one).
    :raises ConfigurationError: the callback is not a loopback HTTP URL,
        or its port cannot be listened on (naming the port).
    :raises TimeoutError: no callback arrived within ``timeout_s``.
    """
    callback = urlsplit(store.settings.sso_callback_url)
    if callback.scheme != "http" or callback.hostname not in ("127.0.0.1", "localhost"):
        raise ConfigurationError(
            "the CLI login needs ESI_WORKER_SSO_CALLBACK_URL on "
            f"http://127.0.0.1, got {store.settings.sso_callback_url!r}"
        )
    path = callback.path or "/"
    listen = (callback.port or 80) if port is None else port
    server = _listen(listen, from_setting=port is None)
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}{path}"

    try:
        url, state = begin_login(
            scopes, user=user, redirect_uri=redirect_uri, store=store
        )
        server.expect(path, state, redirect_uri, store)
        on_url(url)
        return server.wait(timeout_s or store.settings.login_timeout_s)
    finally:
        server.server_close()


def _listen(port: int, *, from_setting: bool) -> _CallbackServer:
    """The callback server on 127.0.0.1:``port``, or an error naming it."""
    try:
        return _CallbackServer(("127.0.0.1", port))
    except OSError as exc:
        # The SSO sends the browser to the registered callback URL only, so
        # a new port means registering that URL for the application too.
        source = "ESI_WORKER_SSO_CALLBACK_URL" if from_setting else "--port"
        raise ConfigurationError(
            f"cannot listen for the SSO callback on 127.0.0.1:{port} (from "
            f"{source}: {exc.strerror or type(exc).__name__}): free that port, "
            "or set another in ESI_WORKER_SSO_CALLBACK_URL (or pass --port) "
            "and register that callback URL for the application at "
            "developers.eveonline.com"
        ) from exc


class _CallbackServer(HTTPServer):
    """Serves callback requests until one finishes the expected login."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _CallbackHandler)
        self.timeout = 0.5
        self.path = "/"
        self.state = ""
        self.redirect_uri = ""
        self.store: TokenStore | None = None
        self.token: Token | None = None
        self.failure: Exception | None = None
        self.done = threading.Event()

    def expect(
        self, path: str, state: str, redirect_uri: str, store: TokenStore
    ) -> None:
        """What the callback must look like."""
        self.path, self.state = path, state
        self.redirect_uri, self.store = redirect_uri, store

    def wait(self, timeout_s: float) -> Token:
        """Handle requests until the login finished; its token."""
        assert self.store is not None
        deadline = self.store.clock.monotonic() + timeout_s
        while not self.done.is_set():
            if self.store.clock.monotonic() > deadline:
                raise TimeoutError(f"no SSO callback within {timeout_s:.0f} s")
            self.handle_request()
        if self.failure is not None:
            raise self.failure
        assert self.token is not None
        return self.token


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _CallbackServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != self.server.path or query.get("state") != self.server.state:
            self._reply(404, "This is not the login this server waits for.")
            return
        if "code" not in query:
            reason = query.get("error_description") or query.get("error") or "no code"
            self._finish(SSOGrantError(f"login refused: {reason}"))
            self._reply(400, f"Login failed: {reason}")
            return

        try:
            token = complete_login(
                query["code"],
                query["state"],
                redirect_uri=self.server.redirect_uri,
                store=self.server.store,
            )
        except Exception as exc:
            # Whatever went wrong ends the login: the waiting caller gets the
            # error now instead of a timeout minutes later.
            if not isinstance(exc, WorkerError):
                log.exception("the login callback failed")
            self._finish(exc)
            self._reply(400, f"Login failed: {_shown(exc)}")
            return
        self._finish(None, token)
        self._reply(200, f"Logged in {token.character_name}. You can close this.")

    def _finish(self, failure: Exception | None, token: Token | None = None) -> None:
        self.server.failure, self.server.token = failure, token
        self.server.done.set()

    def log_message(self, format: str, *args: Any) -> None:
        # The default would print the query string, authorization code included.
        log.debug("login callback: %s", self.command)

    def _reply(self, status: int, text: str) -> None:
        body = f"<html><body><p>{html.escape(text)}</p></body></html>".encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            # The browser went away; the login's outcome is already set.
            log.debug("login callback: the browser closed the connection")


def _shown(exc: Exception) -> str:
    """What the browser page says about a failure: ours in full, others by type."""
    return str(exc) if isinstance(exc, WorkerError) else type(exc).__name__


def _login_fields(grant: TokenGrant, requested: tuple[str, ...]) -> GrantFields:
    """What to store of a login's grant: its own scopes, or the requested
    ones when the access token names none but came with a refresh token.

    EVE SSO grants a login exactly the scopes it asked for, so a grant with
    other scopes answers another login (its code was pasted into this
    login's callback, say): storing it would file a token under scopes it
    was never asked for, so it is refused.

    :raises SSOGrantError: ``error="scope_mismatch"``; nothing is stored.
    """
    fields = grant_fields(grant)
    if fields.scopes and set(fields.scopes) != set(requested):
        raise _scope_mismatch(requested, fields.scopes)
    if not fields.scopes and requested:
        if grant.refresh_token is None:
            # No scp and no refresh token: a login that asked for nothing.
            raise _scope_mismatch(requested, ())
        log.warning(
            "the login's access token has no scp claim; storing the %d "
            "scopes that were asked for",
            len(requested),
        )
        return dataclasses.replace(fields, scopes=requested)
    return fields


def _scope_mismatch(
    requested: tuple[str, ...], granted: tuple[str, ...]
) -> SSOGrantError:
    missing = sorted(set(requested) - set(granted))
    unasked = sorted(set(granted) - set(requested))
    parts = [f"missing {' '.join(missing)}"] if missing else []
    parts += [f"not asked for {' '.join(unasked)}"] if unasked else []
    return SSOGrantError(
        f"the login asked for {counted(len(requested), 'scope')} but the "
        f"SSO's grant holds {len(granted)} ({'; '.join(parts)}): the callback's code "
        "belongs to another login. Nothing was stored; start the login again",
        error="scope_mismatch",
    )


def _take_pending(store: TokenStore, state: str) -> dict[str, Any]:
    """The pending login of ``state``, removed (single use) and checked fresh."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "DELETE FROM esi_pending_login WHERE state = %s"
            " RETURNING created, scopes, code_verifier, user_id",
            (state,),
        ).fetchone()
    if row is None:
        raise SSOGrantError(
            "unknown or already used login state; start the login again",
            error="invalid_state",
        )
    created, scopes, verifier, user = row
    age = store.clock.now() - created
    if age > dt.timedelta(seconds=store.settings.pending_login_ttl_s):
        raise SSOGrantError(
            f"the login expired ({age.total_seconds():.0f} s old); start again",
            error="invalid_state",
        )
    return {"scopes": scopes or [], "code_verifier": verifier, "user_id": user}


def _current_store() -> TokenStore:
    from .runtime import current

    return current().tokens
