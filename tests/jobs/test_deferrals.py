"""Deferred runs come back spread: after ESI's downtime, after a route was
reported down, after ESI's limits, 1,000 characters on an hourly job never
put more than 5 % of their runs in one minute, and a long outage writes
about one deferral per character and period, not one a minute."""

from __future__ import annotations

import collections
import datetime as dt
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker.clock import FrozenClock
from worker.errors import ErrorLimitedError
from worker.jobs import JobContext, JobRegistry, job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

SKILLS = "esi-skills.read_skills.v1"
ROUTE = "/characters/{character_id}/skills/"
CHARACTERS = 1000
MAX_PER_MINUTE = CHARACTERS * 5 // 100


class Ran:
    """When the hourly job really ran (not deferred), per character."""

    def __init__(self) -> None:
        self.at: list[tuple[int | None, dt.datetime]] = []
        self._lock = threading.Lock()

    def note(self, ctx: JobContext) -> None:
        with self._lock:
            self.at.append((ctx.character_id, ctx.clock.now()))

    def per_minute(self, since: dt.datetime) -> collections.Counter[int]:
        return collections.Counter(
            int((when - since).total_seconds() // 60)
            for _, when in self.at
            if when >= since
        )


def _store_characters(runtime: Runtime) -> None:
    with runtime.pool.connection() as conn:
        scope = conn.execute(
            "INSERT INTO esi_scope (name) VALUES (%s) RETURNING id", (SKILLS,)
        ).fetchone()
        assert scope is not None
        conn.execute(
            "INSERT INTO esi_token (access_token, refresh_token, access_expires,"
            " character_id, character_name, character_owner_hash)"
            " SELECT 'unused', 'refresh-' || n, now() + interval '1 day',"
            " 2112000001 + 7919 * n, 'Pilot ' || n, 'hash-' || n"
            " FROM generate_series(0, %s - 1) AS n",
            (CHARACTERS,),
        )
        conn.execute(
            "INSERT INTO esi_token_scope (token_id, scope_id)"
            " SELECT id, %s FROM esi_token",
            (scope[0],),
        )


def _drive(
    worker: StartedWorker,
    clock: FrozenClock,
    minutes: int,
    each_minute: Callable[[dt.datetime], None] = lambda now: None,
) -> None:
    """The real scheduler ticking once a minute, every run done before the next."""
    scheduler = worker.scheduler()
    for _ in range(minutes):
        each_minute(clock.now())
        scheduler.tick_all()
        worker.join()
        clock.advance(60)


def _deferrals(runtime: Runtime) -> int:
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM esi_job_run WHERE outcome = 'deferred'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def hourly(frozen_runtime: Runtime) -> Iterator[tuple[Ran, StartedWorker]]:
    ran = Ran()
    limited = threading.Event()

    @job("hourly", scopes=SKILLS, fan_out="per_character", every=3600, routes=[ROUTE])
    def hourly_job(ctx: JobContext) -> None:
        if limited.is_set():
            raise ErrorLimitedError("ESI answered 420", reset_s=40)
        ran.note(ctx)

    _store_characters(frozen_runtime)
    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[hourly_job]))
    worker.limited = limited  # type: ignore[attr-defined]
    yield ran, worker
    worker.stop()


def test_runs_deferred_by_the_downtime_resume_spread_out(
    frozen_runtime: Runtime, clock: FrozenClock, hourly: tuple[Ran, StartedWorker]
) -> None:
    # given: ESI's downtime 11:00-11:15, the plan starting just before it
    ran, worker = hourly
    frozen_runtime.settings = frozen_runtime.settings.replace(
        esi_downtime_utc="11:00-11:15"
    )
    clock._now = dt.datetime(2026, 3, 2, 10, 59, tzinfo=dt.UTC)
    window_end = clock.now().replace(hour=11, minute=15)

    # when: the scheduler ticks once a minute until 12:20
    _drive(worker, clock, 81)

    # then: nothing ran inside the window, everybody ran, and no minute
    # after it holds more than 5 % of the runs
    assert all(not (window_end - dt.timedelta(minutes=15) <= t < window_end)
               for _, t in ran.at)
    assert len({c for c, _ in ran.at}) == CHARACTERS
    busiest = max(ran.per_minute(window_end).values())
    assert busiest <= MAX_PER_MINUTE, ran.per_minute(window_end).most_common(3)
    # and: one deferral per character whose slot fell in the window
    assert _deferrals(frozen_runtime) <= CHARACTERS * 20 // 60


@pytest.fixture
def status_server() -> Iterator[dict[str, Any]]:
    """A real HTTP server answering ``/meta/status``; ``down`` says if ROUTE is."""
    state: dict[str, Any] = {"down": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/meta/status":
                self.send_error(404)
                return
            status = "Down" if state["down"] else "OK"
            routes = [{"method": "GET", "path": ROUTE, "status": status}]
            body = json.dumps({"routes": routes}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("outage_min", [60])
def test_runs_deferred_while_a_route_is_down_resume_spread_out(
    frozen_runtime: Runtime,
    clock: FrozenClock,
    hourly: tuple[Ran, StartedWorker],
    status_server: dict[str, Any],
    outage_min: int,
) -> None:
    # given: ESI's status reports the job's route down from the start
    ran, worker = hourly
    frozen_runtime.settings = frozen_runtime.settings.replace(
        esi_base_url=status_server["url"], esi_status_max_age_s=0
    )
    start = clock.now()
    up_at = start + dt.timedelta(minutes=outage_min)

    def route(now: dt.datetime) -> None:
        status_server["down"] = now < up_at

    # when: the scheduler ticks once a minute through the outage and an hour on
    _drive(worker, clock, outage_min + 65, route)

    # then: nothing ran while down; after, no minute holds more than 5 %
    assert all(t >= up_at for _, t in ran.at)
    per_minute = ran.per_minute(up_at)
    assert max(per_minute.values()) <= MAX_PER_MINUTE, per_minute.most_common(3)
    assert len({c for c, _ in ran.at}) == CHARACTERS
    # and: about one deferral per character and period, not one a minute
    assert _deferrals(frozen_runtime) <= 2 * CHARACTERS * outage_min // 60 + 100


def test_runs_deferred_by_esi_limits_resume_spread_out(
    frozen_runtime: Runtime, clock: FrozenClock, hourly: tuple[Ran, StartedWorker]
) -> None:
    # given: ESI answers 420 (reset in 40 s) to every run for 20 minutes
    ran, worker = hourly
    limited: threading.Event = worker.limited  # type: ignore[attr-defined]
    start = clock.now()
    lifted = start + dt.timedelta(minutes=20)

    def limits(now: dt.datetime) -> None:
        if now < lifted:
            limited.set()
        else:
            limited.clear()

    # when
    _drive(worker, clock, 20 + 65, limits)

    # then: the deferred runs did not all come back when the limit reset
    per_minute = ran.per_minute(lifted)
    assert max(per_minute.values()) <= MAX_PER_MINUTE, per_minute.most_common(3)
    assert len({c for c, _ in ran.at}) == CHARACTERS
