"""The emulator process: one threaded HTTP server for SSO, ESI and admin."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..scopes import normalize_scopes
from .admin import AdminService
from .config import EmulatorConfig
from .esi import ESIService
from .grants import Grant
from .messages import DROP_CONNECTION, Request, Response, error_response
from .operations import SpecDocuments, load_operation_table
from .recordings import load_library
from .sso import SSOService
from .state import EmulatorState

log = logging.getLogger(__name__)


class Emulator:
    """ESI and EVE SSO on real HTTP at 127.0.0.1, with switches for tests.

    Nothing is bound or generated until :meth:`start`; keys are new for
    every start, so tokens of one run never verify on another.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._initial = config or EmulatorConfig()
        self._clock = clock
        self._state: EmulatorState | None = None
        self._esi: ESIService | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._server else "stopped"
        return f"<Emulator {where}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; SSO and ESI share it (kept after stop)."""
        if self._state is None:
            raise ConfigurationError("the emulator has no URL until start()")
        return self._state.base_url

    @property
    def client_id(self) -> str:
        """The registered web application's client id."""
        return self._initial.client_id

    @property
    def client_secret(self) -> str:
        """The web application's secret."""
        return self._initial.client_secret

    @property
    def native_client_id(self) -> str:
        """A native (PKCE) application's client id; it has no secret."""
        return self._initial.native_client_id

    @property
    def config(self) -> EmulatorConfig:
        """The switches in force."""
        return self._running().config

    def start(self) -> Self:
        """Generate keys, bind the port and serve from a daemon thread."""
        if self._server is not None:
            return self
        table = load_operation_table()
        library = load_library(
            frozenset(op.operation_id for op in table.by_id.values() if op.localized)
        )
        state = EmulatorState(self._initial, self._clock)

        server = self._bind()
        host, port = str(server.server_address[0]), int(server.server_address[1])
        state.base_url = f"http://{host}:{port}"
        esi = ESIService(state, table, library, SpecDocuments(table, state.base_url))
        server.routers = (AdminService(self), SSOService(state, lambda: table.scopes))
        server.esi = esi

        self._state, self._esi, self._server = state, esi, server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"emulator-{port}", daemon=True
        )
        self._thread.start()
        log.info("emulator serving on %s", state.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("emulator stopped")

    def create_grant(
        self,
        character_id: int,
        character_name: str,
        scopes: Iterable[str] | str,
        owner_hash: str | None = None,
        refresh_token: str | None = None,
    ) -> Grant:
        """A grant as if the character had logged in to the web application.

        The access token is already expired, so the first use refreshes.
        ``refresh_token`` adopts a token a previous emulator run issued, so a
        database kept across demo runs stays usable.

        :raises ScopeError: malformed scope names.
        :raises ValueError: a character id that is not a positive int.
        """
        state = self._running()
        if isinstance(character_id, bool) or int(character_id) <= 0:
            raise ValueError(
                f"character_id must be a positive int, got {character_id!r}"
            )
        character_id = int(character_id)
        scope_names = normalize_scopes(scopes)

        owner = state.grants.owner_hash(character_id, preset=owner_hash)
        refresh_token = state.grants.create(
            self.client_id, character_id, character_name, scope_names, refresh_token
        )
        issued = self._clock.time() - state.switches.expires_in - 60
        access_token, exp = state.grants.access_token(
            state.switches,
            self.client_id,
            character_id,
            character_name,
            scope_names,
            issued_at=issued,
        )
        return Grant(
            refresh_token,
            access_token,
            character_id,
            character_name,
            owner,
            scope_names,
            dt.datetime.fromtimestamp(exp, dt.UTC),
        )

    def configure(self, **switches: Any) -> EmulatorConfig:
        """Change switches at run time (see :class:`EmulatorConfig`).

        :raises ConfigurationError: an unknown switch or a bad value.
        """
        return self._running().configure(switches)

    def reset(self) -> None:
        """Clear grants, counters, faults, caches and limits; default switches."""
        self._running().reset()
        if self._esi is not None:
            self._esi.clear()

    def stats(self) -> dict[str, Any]:
        """The counters (see :class:`~worker.emulator.state.Stats`)."""
        return self._running().stats.snapshot()

    def _bind(self) -> _Server:
        host, port = self._initial.host, self._initial.port
        try:
            return _Server((host, port), _Handler)
        except (OSError, OverflowError) as exc:
            # OverflowError: a port outside 0-65535 given from Python.
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigurationError(
                f"cannot serve the emulator on {host}:{port} ({reason})"
            ) from exc

    def _running(self) -> EmulatorState:
        if self._state is None or self._server is None:
            raise ConfigurationError("the emulator is not running: call start() first")
        return self._state


def serve(
    host: str = "127.0.0.1", port: int = 0, config: EmulatorConfig | None = None
) -> None:
    """Run an emulator in the foreground until interrupted (the CLI's entry)."""
    base = config or EmulatorConfig()
    emulator = Emulator(dataclasses.replace(base, host=host, port=port))
    emulator.start()
    print(f"esi-worker emulator on {emulator.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        emulator.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self.routers: tuple[Any, ...] = ()
        self.esi: ESIService | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        """Admin, then SSO, then ESI."""
        for router in self.routers:
            handler = router.route(request)
            if handler is not None:
                return cast(Response, handler(request))
        assert self.esi is not None
        return self.esi.handle(request)

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Remember open connections so :meth:`close_connections` can end them."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake every keep-alive handler thread by shutting its socket."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called from socketserver's except clause, so the error is at hand.
        log.debug(
            "connection from %r ended abruptly", client_address, exc_info=sys.exc_info()
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "esi-worker-emulator"
    # Headers and body go out in two writes; with Nagle on, a keep-alive
    # client's delayed ACK would stall every answer by ~40 ms.
    disable_nagle_algorithm = True
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes the request line, query string and all, to
        # stderr; a legacy ``?token=`` would leak an access token there.
        log.debug("emulator: %s", self.command)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        url = urlsplit(self.path)
        query = {
            k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()
        }
        request = Request(
            self.command,
            url.path,
            query,
            cast(Any, self.headers),
            body,
            self.client_address[0],
        )
        try:
            response = self.server.dispatch(request)
        except Exception:
            log.exception("emulator failed on %s %s", self.command, url.path)
            response = error_response(500, "emulator internal error")
        self._send(response)

    def _send(self, response: Response) -> None:
        if response.status == DROP_CONNECTION.status:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        # Cache answers carry their own Date, taken with the same clock
        # reading as Expires; the base class would add a second one.
        self.log_request(response.status)
        self.send_response_only(response.status)
        self.send_header("Server", self.version_string())
        if response.header("Date") is None:
            self.send_header("Date", self.date_time_string())
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.cut:
            self.wfile.write(response.body[: len(response.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if response.body:
            self.wfile.write(response.body)
