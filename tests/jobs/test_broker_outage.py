"""A broker outage: runs it refused are sent on the next tick after it, once each."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker

from worker.actors import declare_actors
from worker.clock import FrozenClock
from worker.jobs import Job, JobRegistry
from worker.scheduler import JobScheduler
from worker.testing.harness import StartedWorker

PASSWORD = "s3cr3t-broker-pw"
# Nothing listens on port 1: a broker that is down.
DOWN_URL = f"redis://:{PASSWORD}@127.0.0.1:1/12"


@pytest.fixture
def down_broker(redis_worker: StartedWorker) -> Iterator[RedisBroker]:
    """A broker configured with a password at an address nobody answers."""
    runtime = redis_worker.runtime
    runtime.settings = runtime.settings.replace(broker_url=DOWN_URL)
    broker = RedisBroker(url=DOWN_URL, namespace=redis_worker.broker.namespace)
    yield broker
    broker.close()


def _scheduler_on(broker: RedisBroker, worker: StartedWorker, jobs: Any) -> Any:
    actors = declare_actors(broker, JobRegistry("none", extra=jobs.values()))
    return JobScheduler(worker.runtime, jobs, actors)


def _queued(worker: StartedWorker) -> list[tuple[Any, ...]]:
    with worker.runtime.pool.connection() as conn:
        return conn.execute(
            "SELECT job, enqueued FROM esi_job_run WHERE state = 'queued' ORDER BY id"
        ).fetchall()


def test_a_run_the_broker_refused_is_sent_on_the_first_tick_after_it_is_back(
    redis_worker: StartedWorker,
    clock: FrozenClock,
    probe_jobs: dict[str, Job],
    probe: Any,
    broker_gate: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: a scheduler whose broker is down for two ticks
    caplog.set_level(logging.DEBUG, logger="worker.scheduler")
    url = f"redis://127.0.0.1:{broker_gate.port}/12"
    broker = RedisBroker(url=url, namespace=redis_worker.broker.namespace)
    once = {"once_probe": probe_jobs["once_probe"]}
    scheduler = _scheduler_on(broker, redis_worker, once)
    scheduler.tick_all()
    clock.advance(5)
    scheduler.tick_all()
    unsent = _queued(redis_worker)

    # when: the broker comes back, and one tick later (well within the
    # requeue period of 900 s)
    broker_gate.open()
    clock.advance(5)
    scheduler.tick_all()
    redis_worker.join()
    broker.close()

    # then: the run waited as never sent, then was sent and ran, once
    assert unsent == [("once_probe", None)]
    assert [name for name, _, _ in probe.calls] == ["once_probe"]
    assert [r["outcome"] for r in redis_worker.runs()] == ["success"]
    # and: one warning for the outage, naming the run and why; one line
    # when it ended
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 runs of job 'once_probe' not sent to the broker" in warnings[0].message
    assert "ConnectionError" in warnings[0].message
    assert "the broker takes messages again" in caplog.text
    assert "sent 1 queued runs again (1 the broker had refused" in caplog.text


def test_runs_a_scheduler_could_not_send_are_sent_once_by_its_successors(
    redis_worker: StartedWorker,
    down_broker: RedisBroker,
    clock: FrozenClock,
    pilots: list[int],
    probe_jobs: dict[str, Job],
    probe: Any,
    sends: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: a scheduler started while the broker was unreachable plans a
    # once-job, then a slot of each character, and stops
    old = _scheduler_on(down_broker, redis_worker, probe_jobs)
    old.tick_all()
    clock.advance(600)
    old.tick_all()
    old.shutdown()
    unsent = _queued(redis_worker)

    # when: two schedulers on a working broker (both believing they lead)
    # tick at the same instant, seconds later
    schedulers = [redis_worker.scheduler(probe_jobs) for _ in range(2)]
    clock.advance(5)
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=lambda s=s: (barrier.wait(), s.tick_all()))
        for s in schedulers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    redis_worker.join()

    # then: every refused run was sent exactly once and ran once
    assert len(unsent) == 1 + len(pilots)
    assert {enqueued for _, enqueued in unsent} == {None}
    runs = redis_worker.runs()
    assert sorted(sends.sent) == sorted(r["id"] for r in runs)
    assert {r["outcome"] for r in runs} == {"success"}
    assert len(probe.calls) == len(runs) == len(unsent)
    subjects = collections.Counter((r["job"], r["subject"]) for r in runs)
    assert max(subjects.values()) == 1
    # and: the reason was logged, never the broker's password
    assert "not sent to the broker" in caplog.text
    assert "127.0.0.1:1" in caplog.text
    assert PASSWORD not in caplog.text
