"""Leadership on PostgreSQL: one scheduler plans, another takes over, no run twice."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import psycopg
import pytest

from worker.clock import FrozenClock
from worker.jobs import Job
from worker.leader import Leadership
from worker.runtime import Runtime
from worker.scheduler import JobScheduler
from worker.testing.harness import StartedWorker


@pytest.fixture
def candidates(frozen_runtime: Runtime) -> Any:
    made: list[Leadership] = []

    def make() -> Leadership:
        settings = frozen_runtime.settings
        made.append(Leadership(settings.database_url, settings.scheduler_lock_key))
        return made[-1]

    yield make
    for leadership in made:
        leadership.release()


def test_one_candidate_leads_and_a_follower_takes_over_when_its_session_dies(
    frozen_runtime: Runtime, candidates: Any
) -> None:
    # given: two candidates; the first takes the lock
    first, second = candidates(), candidates()
    assert first.check() and not second.check()

    # when: the leader's database session dies (as when its process is killed)
    with psycopg.connect(frozen_runtime.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND objid = %s",
            (frozen_runtime.settings.scheduler_lock_key,),
        )
        # pg_terminate_backend only signals: wait until the lock is let go.
        _wait_for_lock_release(conn, frozen_runtime.settings.scheduler_lock_key)

    # then: the follower leads on its next try, and the old leader knows it lost
    assert second.check()
    assert not first.check()
    assert second.check() and second.is_leader


def _wait_for_lock_release(conn: psycopg.Connection[Any], key: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
            (key,),
        ).fetchone()
        if held is not None and held[0] == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the terminated leader's advisory lock was never released")


@pytest.mark.parametrize(
    "with_leadership", [True, False], ids=["leader-elected", "both-believe-they-lead"]
)
def test_two_schedulers_ticking_at_once_enqueue_each_run_exactly_once(
    redis_worker: StartedWorker,
    clock: FrozenClock,
    pilots: list[int],
    probe_jobs: dict[str, Job],
    probe: Any,
    candidates: Any,
    sends: Any,
    with_leadership: bool,
) -> None:
    # given: two schedulers on the same database and Redis broker
    schedulers = [
        redis_worker.scheduler(probe_jobs, candidates() if with_leadership else None)
        for _ in range(2)
    ]

    # when: both tick at the same instants, once a minute for three periods
    for _ in range(30):
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_tick, args=(s, barrier)) for s in schedulers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        redis_worker.join()
        clock.advance(60)

    # then: each slot of each job and character was enqueued and run exactly once
    with redis_worker.runtime.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, job, subject, due, outcome FROM esi_job_run"
        ).fetchall()
    slots = collections.Counter((job, subject, due) for _, job, subject, due, _ in rows)
    assert slots and max(slots.values()) == 1
    assert sorted(sends.sent) == sorted(row[0] for row in rows)
    assert {row[4] for row in rows} == {"success"}
    assert len(probe.calls) == len(rows)
    per_subject = collections.Counter((job, subject) for job, subject, _ in slots)
    assert per_subject[("character_probe", pilots[0])] == 3


def _tick(scheduler: JobScheduler, barrier: threading.Barrier) -> None:
    barrier.wait()
    scheduler.tick_all()


def test_a_new_leader_sends_again_what_the_old_one_queued_but_never_sent(
    redis_worker: StartedWorker,
    clock: FrozenClock,
    probe_jobs: dict[str, Job],
    probe: Any,
    candidates: Any,
) -> None:
    # given: a leader that recorded a run as queued and died before sending it
    old = JobScheduler(
        redis_worker.runtime,
        probe_jobs,
        _NoSend(redis_worker.actors),
        leadership=candidates(),
    )
    assert old.tick_all() == 1
    old.shutdown()

    # when: a follower takes over on its next tick
    new = redis_worker.scheduler(probe_jobs, candidates())
    clock.advance(5)
    new.tick_all()
    redis_worker.join()

    # then: the queued run was sent and ran, once
    assert [name for name, _, _ in probe.calls] == ["once_probe"]
    assert [r["outcome"] for r in redis_worker.runs()] == ["success"]


class _NoSend:
    """Actors whose messages are lost: the process died right after recording."""

    def __init__(self, actors: Any) -> None:
        self._actors = actors

    def enqueue(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_lock_sessions_give_up_a_silent_peer_within_about_a_minute(
    frozen_runtime: Runtime,
) -> None:
    from worker.leader import session_connection

    # when: a session for a lock is opened (the leader's and the run holder's)
    conn = session_connection(frozen_runtime.settings.database_url, "probe")
    try:
        server = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
            )
        }
        client = {
            o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info
        }
    finally:
        conn.close()

    # then: PostgreSQL drops the session (and its lock) when the peer goes
    # silent, and libpq notices a dead server, both within about a minute
    assert server == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }
    assert client["keepalives"] == "1" and client["tcp_user_timeout"] == "60000"
