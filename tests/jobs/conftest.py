"""Shared set-up of the job and scheduling tests: a frozen clock, probe jobs, Redis."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from worker.clock import FrozenClock
from worker.jobs import Job, JobContext, JobRegistry, job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

# A Monday afternoon: far from ESI's daily downtime.
START = dt.datetime(2026, 3, 2, 14, 0, 0, tzinfo=dt.UTC)
SKILLS = "esi-skills.read_skills.v1"
REDIS_URL = "redis://127.0.0.1:6379/12"
PILOTS = (
    (2112000001, "Test Pilot One"),
    (96224792, "Mitani"),
    (2113024536, "Bokobo Shahni"),
)


@dataclass
class Probe:
    """What the probe jobs saw: one entry per run, (job, character, due)."""

    calls: list[tuple[str, int | None, dt.datetime | None]] = field(
        default_factory=list
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ctx: JobContext) -> None:
        with self.lock:
            self.calls.append((ctx.job.name, ctx.character_id, ctx.due))


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def frozen_runtime(
    settings: Any, clean_db: Any, clock: FrozenClock
) -> Iterator[Runtime]:
    """A runtime on the test database whose clock only moves when told."""
    settings = settings.replace(scheduler_lock_key=secrets.randbits(31))
    rt = Runtime.from_settings(settings, pool=clean_db, clock=clock)
    with rt.activated():
        yield rt


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def probe_jobs(probe: Probe) -> dict[str, Job]:
    """A once-job every 10 minutes and a per-character job every 10 minutes."""

    @job("once_probe", every=600)
    def once_probe(ctx: JobContext) -> None:
        probe.record(ctx)

    @job("character_probe", scopes=SKILLS, fan_out="per_character", every=600)
    def character_probe(ctx: JobContext) -> None:
        assert ctx.token is not None and ctx.token.character_id == ctx.character_id
        probe.record(ctx)

    return {j.name: j for j in (once_probe, character_probe)}


@pytest.fixture
def pilots(frozen_runtime: Runtime, emulator: Any) -> list[int]:
    """Three characters whose tokens hold the probe's scope."""
    for character_id, name in PILOTS:
        grant = emulator.create_grant(
            character_id=character_id, character_name=name, scopes=[SKILLS]
        )
        frozen_runtime.tokens.import_grant(grant)
    return [c for c, _ in PILOTS]


@pytest.fixture
def redis_broker() -> Iterator[RedisBroker]:
    """A real Redis broker in a database of its own, emptied first."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    broker = RedisBroker(url=REDIS_URL, namespace=f"esi-worker-{secrets.token_hex(3)}")
    yield broker
    broker.close()


@pytest.fixture
def redis_worker(
    frozen_runtime: Runtime, probe_jobs: dict[str, Job], redis_broker: RedisBroker
) -> Iterator[StartedWorker]:
    """The probe jobs served by real worker threads over the Redis broker."""
    registry = JobRegistry("esi_worker_test.none", extra=probe_jobs.values())
    worker = StartedWorker(frozen_runtime, registry, broker=redis_broker)
    yield worker
    worker.stop()


class TcpGate:
    """A port on 127.0.0.1 that forwards to Redis while open, refuses while shut.

    It stands for a broker that goes down and comes back at one address.
    """

    def __init__(self, target_port: int = 6379) -> None:
        self._target = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._open = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.05)
        self._open.set()
        self._thread = threading.Thread(target=self._accept, args=(listener,))
        self._thread.start()

    def shut(self) -> None:
        self._open.clear()
        if self._thread is not None:
            self._thread.join()
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # shutdown wakes a blocked recv
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._open.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                upstream = socket.create_connection(("127.0.0.1", self._target))
                self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(
                        target=_pump, args=(source, sink), daemon=True
                    ).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # the gate was shut under it
    finally:
        sink.close()


@pytest.fixture
def broker_gate() -> Iterator[TcpGate]:
    """A shut gate to the test Redis; ``open()`` brings the "broker" back."""
    gate = TcpGate()
    yield gate
    gate.shut()


class CountSends(dramatiq.Middleware):
    """Counts the run messages that reach the broker."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self._lock = threading.Lock()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        if message.actor_name == "run_job":
            with self._lock:
                self.sent.append(message.args[3])


@pytest.fixture
def sends(redis_worker: StartedWorker) -> CountSends:
    """The run ids sent to the Redis worker's broker, one entry per message."""
    counter = CountSends()
    redis_worker.broker.add_middleware(counter)
    return counter
