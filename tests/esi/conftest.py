"""Fixtures of the ESI client tests: settings on the emulator, tokens, a frozen clock."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest
import requests

from worker.clock import FrozenClock
from worker.esi import MemoryCache, esi_client_factory
from worker.settings import Settings

if TYPE_CHECKING:
    from bravado.client import SwaggerClient

    from worker.emulator import Emulator


PILOT_ID = 2112000001
ASSETS_SCOPE = "esi-assets.read_assets.v1"
RECORDED = Path(__file__).parents[2] / "worker" / "emulator" / "data" / "recorded"


@dataclasses.dataclass(frozen=True)
class StaticToken:
    """The three members the ESI client uses, around one fresh access token."""

    character_id: int
    scopes: tuple[str, ...]
    access_token: str = dataclasses.field(repr=False)

    def valid_access_token(self) -> str:
        return self.access_token


def issue_token(
    emulator: Emulator, scopes: list[str], character_id: int = PILOT_ID
) -> StaticToken:
    """A grant at the emulator's SSO, refreshed once for a valid access token."""
    grant = emulator.create_grant(
        character_id=character_id, character_name="Test Pilot One", scopes=scopes
    )
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=10,
    )
    answer.raise_for_status()
    return StaticToken(character_id, tuple(scopes), answer.json()["access_token"])


def recorded_pages(operation_id: str, **path_params: str) -> list[Any]:
    """The recorded 200 bodies of an operation's pages, in page order."""
    index = json.loads((RECORDED / "index.json").read_text())
    pages = {}
    for entry in index:
        if (
            entry["operationId"] == operation_id
            and entry["status"] == 200
            and entry["path_params"] == path_params
        ):
            page = int(entry["query"].get("page", 1))
            exchange = json.loads((RECORDED / entry["file"]).read_text())
            pages[page] = exchange["response"]["body"]
    return [pages[n] for n in sorted(pages)]


class RecordingServer:
    """A plain HTTP server that keeps every request and answers one canned reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.headers: dict[str, str] = {}
        self.delay_s = 0.0
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                record = {"path": self.path, "headers": dict(self.headers)}
                with server._lock:
                    server.requests.append(record)
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                time.sleep(server.delay_s)
                with server._lock:
                    server._in_flight -= 1
                self._reply()

            def _reply(self) -> None:
                status, content_type, body = server.reply
                # Only one Date: a test may give the answer an old one.
                self.send_response_only(status)
                if "Date" not in server.headers:
                    self.send_header("Date", self.date_time_string())
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def clock() -> FrozenClock:
    """A clock that moves only when a test (or a retry backoff) moves it."""
    return FrozenClock()


@pytest.fixture
def esi_settings(emulator: Emulator) -> Settings:
    """Settings pointing the ESI client at the emulator; no database."""
    return Settings(
        esi_base_url=emulator.base_url,
        sso_base_url=emulator.base_url,
        contact_email="tests@example.invalid",
        esi_retries=2,
    )


@pytest.fixture
def clocked_emulator(clock: FrozenClock) -> Iterator[Emulator]:
    """An emulator of this test's own on the test's frozen clock.

    Cache lifetimes are counted against ESI's ``Date`` as well as our
    clock: a test moving time for the client must move it for ESI too.
    """
    from worker.emulator import Emulator, EmulatorConfig

    emulator = Emulator(EmulatorConfig(cache_ttl_s=3600), clock=clock)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def clocked_client(
    clocked_emulator: Emulator, clock: FrozenClock, cache: MemoryCache
) -> SwaggerClient:
    """A client without a token on :func:`clocked_emulator`."""
    settings = Settings(
        esi_base_url=clocked_emulator.base_url,
        sso_base_url=clocked_emulator.base_url,
        contact_email="tests@example.invalid",
        esi_retries=2,
        esi_spec_source="bundled",
    )
    return esi_client_factory(settings=settings, cache=cache, clock=clock)


@pytest.fixture
def cache(clock: FrozenClock) -> MemoryCache:
    """A private cache, so no answer leaks between tests."""
    return MemoryCache(clock=clock)


@pytest.fixture
def client(
    esi_settings: Settings, cache: MemoryCache, clock: FrozenClock
) -> SwaggerClient:
    """A client without a token."""
    return esi_client_factory(settings=esi_settings, cache=cache, clock=clock)


@pytest.fixture
def assets_token(emulator: Emulator) -> StaticToken:
    """A token of the test pilot holding the assets scope."""
    return issue_token(emulator, [ASSETS_SCOPE])


@pytest.fixture
def token_with(emulator: Emulator) -> Callable[[list[str]], StaticToken]:
    """Issues a token of the test pilot holding the given scopes."""
    return lambda scopes: issue_token(emulator, scopes)


@pytest.fixture
def esi_requests(emulator: Emulator) -> Callable[[], int]:
    """How many ESI requests the emulator has answered since its reset."""
    return lambda: int(emulator.stats()["esi_requests"])


@pytest.fixture
def recorded() -> Callable[..., list[Any]]:
    """The recorded 200 bodies of an operation's pages, in page order."""
    return recorded_pages


@pytest.fixture
def static_token() -> type[StaticToken]:
    """The token stand-in class, for tests that build one by hand."""
    return StaticToken


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    """A server that records request headers (the emulator keeps none)."""
    with RecordingServer() as server:
        yield server


class RoutedServer:
    """A plain HTTP server answering each path prefix with its canned reply."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                server.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                found = [p for p in server.routes if path.startswith(p)]
                status, content_type, body = (
                    server.routes[max(found, key=len)]
                    if found
                    else (404, "text/plain", b"404 page not found")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def routed_server() -> Iterator[RoutedServer]:
    """A server with a canned answer per path (for spec sources that fail)."""
    with RoutedServer() as server:
        yield server


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own, removed afterwards."""
    import secrets

    import redis

    prefix = f"esi-worker-test:{secrets.token_hex(4)}:"
    yield prefix
    server = redis.Redis.from_url(REDIS_URL)
    for key in server.scan_iter(f"{prefix}*"):
        server.delete(key)
    server.close()


@pytest.fixture
def token_of(emulator: Emulator) -> Callable[[int, list[str]], StaticToken]:
    """Issues a token of the given character holding the given scopes."""
    return lambda character_id, scopes: issue_token(emulator, scopes, character_id)
