"""Timeouts: a run past its timeout is stopped and recorded, a blocked one is
recorded and never overlapped, and the retry policy applies to both.

The watchdog reads the runtime's clock: these tests move the frozen clock
past the timeout instead of waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from worker.clock import FrozenClock
from worker.jobs import Job, JobContext, JobRegistry, job
from worker.jobs.records import recent_runs
from worker.runs import execute_job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

TIMEOUT_S = 5


class Gate:
    """A job's view of the test: it says when it started, waits to be let go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished: list[str] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        self.started.set()

    def leave(self, how: str) -> None:
        with self._lock:
            self.active -= 1
            self.finished.append(how)


@pytest.fixture
def gate() -> Iterator[Gate]:
    made = Gate()
    yield made
    made.release.set()  # never leave a job thread blocked behind a failed test


def _runs(runtime: Runtime, name: str) -> list[dict[str, Any]]:
    with runtime.pool.connection() as conn:
        return list(reversed(recent_runs(conn, 100, job=name)))


def _wait_until(check: Any, what: str, timeout_s: float = 20.0) -> Any:
    # Waits for another thread to act; asserts nothing about how long it took.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def _looping(gate: Gate, **options: Any) -> Job:
    """A job busy in Python until let go: an interruption can reach it."""

    @job("looping", every=600, timeout=TIMEOUT_S, **options)
    def looping(ctx: JobContext) -> None:
        gate.enter()
        try:
            while not gate.release.wait(0.01):
                pass
        except BaseException:
            gate.leave("interrupted")
            raise
        gate.leave("let go")

    return looping


def _blocked(gate: Gate, **options: Any) -> Job:
    """A job stuck in one call that never returns to Python until let go."""

    @job("blocked", every=600, timeout=TIMEOUT_S, **options)
    def blocked(ctx: JobContext) -> None:
        gate.enter()
        gate.release.wait()  # one C-level wait: no interruption gets in
        gate.leave("let go")

    return blocked


@pytest.fixture(params=["stub", "redis"])
def broker(request: pytest.FixtureRequest) -> Any:
    if request.param == "stub":
        return None  # the harness's in-process broker
    return request.getfixturevalue("redis_broker")


def test_a_run_past_its_timeout_is_stopped_and_recorded_as_failed(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate, broker: Any
) -> None:
    # given: a worker running a job that would go on until let go
    looping = _looping(gate)
    worker = StartedWorker(
        frozen_runtime, JobRegistry("none", extra=[looping]), broker=broker
    )
    try:
        worker.actors.enqueue(looping)
        assert gate.started.wait(20)

        # when: its timeout passes
        clock.advance(TIMEOUT_S + 1)
        worker.join()
    finally:
        worker.stop()

    # then: the job was interrupted and the run recorded as timed out
    assert gate.finished == ["interrupted"]
    [run] = _runs(frozen_runtime, "looping")
    assert (run["state"], run["outcome"]) == ("finished", "failure")
    assert run["error"] == f"timed out after {TIMEOUT_S} s"


def test_a_blocked_run_is_recorded_as_timed_out_and_never_overlapped(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    # given: the scheduler's run of a job stuck in a call no interruption reaches
    blocked = _blocked(gate)
    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[blocked]))
    scheduler = worker.scheduler({"blocked": blocked})
    try:
        assert scheduler.tick_all() == 1
        assert gate.started.wait(20)

        # when: its timeout passes, and so does its next slot
        clock.advance(700)
        _wait_until(
            lambda: _runs(frozen_runtime, "blocked")[0]["outcome"], "the timeout"
        )
        sent_while_blocked = scheduler.tick_all()
        first = _runs(frozen_runtime, "blocked")[0]
        inside_while_blocked = gate.peak

        # and: the stuck call returns at last
        gate.release.set()
        worker.join()
        after = _runs(frozen_runtime, "blocked")
        sent_after = scheduler.tick_all()
        worker.join()
    finally:
        gate.release.set()
        worker.stop()

    # then: the run said it timed out while its thread was still inside
    assert (first["state"], first["outcome"]) == ("running", "failure")
    assert first["error"] == f"timed out after {TIMEOUT_S} s"
    # and: no second run started beside it, and its late end rewrote nothing
    assert sent_while_blocked == 0 and inside_while_blocked == 1
    assert [(r["state"], r["outcome"], r["error"]) for r in after] == [
        ("finished", "failure", f"timed out after {TIMEOUT_S} s")
    ]
    # and: once it was out, the plan went on with the newest slot
    assert sent_after == 1
    assert [r["outcome"] for r in _runs(frozen_runtime, "blocked")] == [
        "failure",
        "success",
    ]


def test_a_timed_out_run_is_retried_by_the_jobs_policy(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    # given: a job with one retry 30 s later, whose first attempt hangs
    attempts: list[int] = []

    @job("hangs_once", every=3600, timeout=TIMEOUT_S, retries=1, retry_backoff=30)
    def hangs_once(ctx: JobContext) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            gate.enter()
            while True:
                time.sleep(0.01)

    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[hangs_once]))
    scheduler = worker.scheduler({"hangs_once": hangs_once})
    try:
        scheduler.tick_all()
        assert gate.started.wait(20)
        clock.advance(TIMEOUT_S + 1)
        worker.join()
        timed_out = _runs(frozen_runtime, "hangs_once")[0]

        # when: the backoff passes
        clock.advance(31)
        scheduler.tick_all()
        worker.join()
    finally:
        worker.stop()

    # then: the timed-out run was retried once, and the retry succeeded
    assert timed_out["error"] == f"timed out after {TIMEOUT_S} s"
    assert (timed_out["next_due"] - timed_out["finished"]).total_seconds() == 30
    runs = _runs(frozen_runtime, "hangs_once")
    assert [(r["attempt"], r["outcome"]) for r in runs] == [
        (0, "failure"),
        (1, "success"),
    ]


def test_a_job_run_by_hand_is_stopped_by_its_timeout_too(
    frozen_runtime: Runtime,
) -> None:
    # given: a job that waits on the runtime's clock, without end
    @job("patient", every=600, timeout=TIMEOUT_S)
    def patient(ctx: JobContext) -> None:
        while True:
            ctx.clock.sleep(1)  # the frozen clock moves with each wait
            time.sleep(0.01)

    # when: it runs in this thread, as 'esi-worker jobs run' runs it
    outcome = execute_job(
        frozen_runtime, JobRegistry("none", extra=[patient]), "patient"
    )

    # then
    assert outcome == "failure"
    [run] = _runs(frozen_runtime, "patient")
    assert run["error"] == f"timed out after {TIMEOUT_S} s"


def test_a_job_swallowing_the_interruption_is_still_recorded_as_timed_out(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    @job("stubborn", every=600, timeout=TIMEOUT_S)
    def stubborn(ctx: JobContext) -> None:
        gate.enter()
        try:
            while not gate.release.wait(0.01):
                pass
        except BaseException:  # noqa: BLE001 - what the test is about
            ctx.stats.items = 1

    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[stubborn]))
    try:
        worker.actors.enqueue(stubborn)
        assert gate.started.wait(20)
        clock.advance(TIMEOUT_S + 1)
        worker.join()
    finally:
        worker.stop()

    [run] = _runs(frozen_runtime, "stubborn")
    assert (run["outcome"], run["error"]) == (
        "failure",
        f"timed out after {TIMEOUT_S} s",
    )


def test_a_run_whose_worker_is_gone_is_closed_and_retried_but_a_live_one_never(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    # given: a stuck run held by a live worker, long past its timeout on
    # the clock, and runs whose worker died (their holder lock is free)
    blocked = _blocked(gate, retries=2, retry_backoff=60)
    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[blocked]))
    scheduler = worker.scheduler({"blocked": blocked})
    try:
        scheduler.tick_all()
        assert gate.started.wait(20)
        dead = _dead_holder(frozen_runtime)
        with frozen_runtime.pool.connection() as conn:
            for subject, attempt in ((7, 0), (8, 2)):
                conn.execute(
                    "INSERT INTO esi_job_run (job, subject, due, attempt, state,"
                    " started, holder) VALUES ('blocked', %s, %s, %s, 'running',"
                    " %s, %s)",
                    (subject, clock.now(), attempt, clock.now(), dead),
                )
        clock._now = clock.now().replace(year=clock.now().year + 1)

        # when: the scheduler looks for runs whose worker is gone
        scheduler.recover(clock.now())
        rows = {r["subject"]: r for r in _runs(frozen_runtime, "blocked")}
    finally:
        gate.release.set()
        worker.join()
        worker.stop()

    # then: the dead worker's runs are closed, retried while retries are left
    now = clock.now()
    assert rows[7]["outcome"] == rows[8]["outcome"] == "failure"
    assert rows[7]["error"].startswith("abandoned")
    assert (rows[7]["next_due"] - now).total_seconds() == 60
    assert rows[8]["next_due"] is None  # its two retries were spent
    # and: the live one, a year "late", was left open: its thread is inside
    assert rows[0]["state"] == "running"
    assert not (rows[0]["error"] or "").startswith("abandoned")


def test_a_late_result_never_rewrites_a_run_closed_as_abandoned(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    # given: a stuck run whose worker loses its database session (as when
    # its process is cut off), so the scheduler closes the run
    blocked = _blocked(gate)
    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[blocked]))
    scheduler = worker.scheduler({"blocked": blocked})
    try:
        scheduler.tick_all()
        assert gate.started.wait(20)
        _end_holder_session(frozen_runtime)
        scheduler.recover(clock.now())
        closed = _runs(frozen_runtime, "blocked")[0]

        # when: the job returns, successfully, after all
        gate.release.set()
        worker.join()
    finally:
        gate.release.set()
        worker.stop()

    # then: the record still says what the scheduler found
    assert (closed["state"], closed["outcome"]) == ("finished", "failure")
    [run] = _runs(frozen_runtime, "blocked")
    assert (run["outcome"], run["error"]) == (closed["outcome"], closed["error"])
    assert gate.finished == ["let go"]


def _dead_holder(runtime: Runtime) -> int:
    """A holder number nobody holds: a worker that took it and died."""
    with runtime.pool.connection() as conn:
        row = conn.execute("SELECT nextval('esi_job_holder_seq')").fetchone()
    assert row is not None
    return int(row[0])


def _end_holder_session(runtime: Runtime) -> None:
    with psycopg.connect(runtime.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (f"esi-worker runs pid={_pid()}",),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"esi-worker runs pid={_pid()}",),
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.02)
    raise AssertionError("the holder session did not end")


def _pid() -> int:
    import os

    return os.getpid()


def test_the_harness_says_when_a_blocked_run_outlasts_its_wait(
    frozen_runtime: Runtime, clock: FrozenClock, gate: Gate
) -> None:
    # given: a stuck run past its timeout
    blocked = _blocked(gate)
    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[blocked]))
    try:
        worker.actors.enqueue(blocked)
        assert gate.started.wait(20)
        clock.advance(TIMEOUT_S + 1)
        _wait_until(lambda: worker.runs("blocked")[0]["outcome"], "the timeout")

        # when / then: join gives up in its own terms, the record is there
        with pytest.raises(TimeoutError):
            worker.join(timeout_s=0.5)
        assert worker.runs("blocked")[0]["error"] == f"timed out after {TIMEOUT_S} s"
    finally:
        gate.release.set()
        worker.join()
        worker.stop()
