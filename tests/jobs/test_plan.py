"""The plan: spread over the period, no pile-ups, one catch-up run after an outage."""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import pytest

from worker.clock import FrozenClock
from worker.jobs import Job, JobContext, JobRegistry, job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

SKILLS = "esi-skills.read_skills.v1"
HOUR = 3600
REDIS_URL = "redis://127.0.0.1:6379/12"


def _minutes(worker: StartedWorker, clock: FrozenClock, count: int) -> list[int]:
    """Tick once now, then once a minute for ``count`` minutes; runs sent per tick."""
    scheduler = worker.scheduler()
    sent = [scheduler.tick_all()]
    for _ in range(count):
        clock.advance(60)
        sent.append(scheduler.tick_all())
        worker.join()
    return sent


def _store_characters(runtime: Runtime, count: int) -> list[int]:
    ids = [2112000001 + 7919 * n for n in range(count)]
    for character_id in ids:
        runtime.tokens.add(
            access_token="unused",
            refresh_token=f"refresh-{character_id}",
            character_id=character_id,
            character_name=f"Pilot {character_id}",
            character_owner_hash=f"hash-{character_id}",
            scopes=[SKILLS],
            access_expires=runtime.clock.now() + dt.timedelta(days=1),
        )
    return ids


def test_a_thousand_characters_on_an_hourly_job_spread_over_the_hour() -> None:
    # given: an hourly per-character job and 1,000 characters
    @job("hourly", scopes=SKILLS, fan_out="per_character", every=HOUR)
    def hourly(ctx: JobContext) -> None: ...

    schedule = hourly.schedule()
    start = dt.datetime(2026, 3, 2, 14, 0, 0, tzinfo=dt.UTC)
    characters = [90000000 + 131 * n for n in range(1000)]

    # when: the first slot of each character after the top of the hour is planned
    slots = [schedule.next_after("hourly", c, start) for c in characters]

    # then: at most 5 % of the runs fall in any one minute, none at :00:00
    per_minute = collections.Counter(
        int((s - start).total_seconds() // 60) for s in slots
    )
    assert max(per_minute.values()) <= 50
    assert len(per_minute) == 60
    assert all((s - start).total_seconds() % HOUR != 0 for s in slots)
    # and the slots are stable: the same character gets the same minute again
    assert slots == [schedule.next_after("hourly", c, start) for c in characters]
    assert all(
        schedule.next_after("hourly", c, s) - s == dt.timedelta(hours=1)
        for c, s in zip(characters, slots)
    )


def test_the_scheduler_enqueues_a_thousand_characters_spread_over_the_hour(
    frozen_runtime: Runtime, clock: FrozenClock, redis_broker: Any
) -> None:
    # given: 1,000 characters holding the scope and an hourly per-character job
    @job("hourly", scopes=SKILLS, fan_out="per_character", every=HOUR)
    def hourly(ctx: JobContext) -> None: ...

    _store_characters(frozen_runtime, 1000)
    worker = StartedWorker(
        frozen_runtime, JobRegistry("none", extra=[hourly]), broker=redis_broker
    )

    # when: the real scheduler ticks once a minute for an hour (real Redis broker)
    try:
        sent = _minutes(worker, clock, 60)
    finally:
        worker.stop()

    # then: every character ran, never more than 5 % of them in one minute
    assert max(sent) <= 50
    with frozen_runtime.pool.connection() as conn:
        rows = conn.execute(
            "SELECT subject, due, outcome FROM esi_job_run WHERE job = 'hourly'"
        ).fetchall()
    assert len(rows) == sum(sent)
    assert {outcome for _, _, outcome in rows} == {"success"}, [
        r for r in rows if r[2] is None
    ][:5]
    dues: dict[int, list[dt.datetime]] = collections.defaultdict(list)
    for subject, due, _ in rows:
        dues[subject].append(due)
    assert len(dues) == 1000
    # the hour planned is a little over an hour long: a few ran twice, an hour apart
    twice = [sorted(d) for d in dues.values() if len(d) > 1]
    assert len(twice) <= 50
    assert all(len(d) == 2 and d[1] - d[0] == dt.timedelta(hours=1) for d in twice)


def test_an_outage_of_ten_periods_yields_one_catch_up_run_per_job_and_character(
    redis_worker: StartedWorker, clock: FrozenClock, pilots: list[int], probe: Any
) -> None:
    # given: every job has run for every character during a first period
    _minutes(redis_worker, clock, 10)
    ran = {(name, character) for name, character, _ in probe.calls}
    assert ran == {("once_probe", None)} | {("character_probe", c) for c in pilots}
    probe.calls.clear()

    # when: nothing is planned for ten periods, then the scheduler comes back
    clock.advance(10 * 600)
    scheduler = redis_worker.scheduler()
    first = scheduler.tick_all()
    redis_worker.join()
    again = scheduler.tick_all()
    redis_worker.join()

    # then: one catch-up run per job and character, for the newest slot only
    assert first == 1 + len(pilots) and again == 0
    seen = collections.Counter((name, character) for name, character, _ in probe.calls)
    assert seen == collections.Counter(
        [("once_probe", None)] + [("character_probe", c) for c in pilots]
    )
    now = clock.now()
    for _name, _character, due in probe.calls:
        assert now - dt.timedelta(seconds=600) < due <= now


def test_a_run_still_queued_or_running_is_not_enqueued_again(
    frozen_runtime: Runtime,
    clock: FrozenClock,
    probe_jobs: dict[str, Job],
    redis_broker: Any,
) -> None:
    # given: a scheduler whose runs are never consumed (no worker is running)
    scheduler, _actors = _scheduler_without_worker(
        frozen_runtime, probe_jobs, redis_broker, requeue_s=86400
    )

    # when: three periods pass while the first run waits in the queue
    sent = [scheduler.tick_all()]
    for _ in range(3):
        clock.advance(600)
        sent.append(scheduler.tick_all())

    # then: one queued run, one message
    assert sent == [1, 0, 0, 0]
    with frozen_runtime.pool.connection() as conn:
        states = conn.execute("SELECT state FROM esi_job_run").fetchall()
    assert states == [("queued",)]
    assert redis_broker.client.hlen(f"{redis_broker.namespace}:esi_worker.msgs") == 1


def test_a_queued_run_whose_message_was_lost_is_sent_again_and_runs_once(
    frozen_runtime: Runtime,
    clock: FrozenClock,
    probe_jobs: dict[str, Job],
    redis_broker: Any,
    probe: Any,
) -> None:
    # given: a queued run whose message never reached the broker
    scheduler, _actors = _scheduler_without_worker(
        frozen_runtime, probe_jobs, redis_broker, requeue_s=900
    )
    scheduler.tick_all()
    redis_broker.flush_all()

    # when: the requeue period passes, twice
    clock.advance(901)
    scheduler.tick_all()
    clock.advance(10)
    scheduler.tick_all()
    from dramatiq.brokers.redis import RedisBroker

    same_queue = RedisBroker(url=REDIS_URL, namespace=redis_broker.namespace)
    worker = StartedWorker(
        frozen_runtime,
        JobRegistry("none", extra=probe_jobs.values()),
        broker=same_queue,
    )
    try:
        worker.join()
    finally:
        worker.stop()

    # then: the run was sent once more and ran once
    assert [name for name, _, _ in probe.calls] == ["once_probe"]
    assert [r["outcome"] for r in worker.runs()] == ["success"]


def test_the_database_refuses_a_second_active_run_of_the_same_subject(
    frozen_runtime: Runtime,
) -> None:
    import psycopg

    # given: a queued run
    insert = (
        "INSERT INTO esi_job_run (job, subject, due, state) VALUES ('j', 7, now(), %s)"
    )
    with frozen_runtime.pool.connection() as conn:
        conn.execute(insert, ("queued",))

    # when / then: a second queued or running run of job and subject is refused
    for state in ("queued", "running"):
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            frozen_runtime.pool.connection() as conn,
        ):
            conn.execute(insert, (state,))


def _scheduler_without_worker(
    runtime: Runtime, jobs: dict[str, Job], broker: Any, requeue_s: float
) -> tuple[Any, Any]:
    from worker.actors import declare_actors
    from worker.scheduler import JobScheduler

    runtime.settings = runtime.settings.replace(job_requeue_after_s=requeue_s)
    actors = declare_actors(broker, JobRegistry("none", extra=jobs.values()))
    return JobScheduler(runtime, {"once_probe": jobs["once_probe"]}, actors), actors
