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


def test_per_character_cron_runs_are_spread_over_the_gap_between_fires() -> None:
    # given: a per-character job on the top of every hour, without jitter,
    # and a once-job on the same line
    @job("hourly_cron", scopes=SKILLS, fan_out="per_character", cron="0 * * * *")
    def hourly_cron(ctx: JobContext) -> None: ...

    @job("once_cron", cron="0 * * * *")
    def once_cron(ctx: JobContext) -> None: ...

    start = dt.datetime(2026, 3, 2, 14, 0, 30, tzinfo=dt.UTC)
    characters = [90000000 + 131 * n for n in range(1000)]

    # when
    schedule = hourly_cron.schedule()
    slots = [schedule.next_after("hourly_cron", c, start) for c in characters]

    # then: at most 5 % in any minute, each an hour after the last
    per_minute = collections.Counter(s.replace(second=0, microsecond=0) for s in slots)
    assert max(per_minute.values()) <= 50 and len(per_minute) >= 55
    assert all(
        schedule.next_after("hourly_cron", c, s) - s == dt.timedelta(hours=1)
        for c, s in zip(characters, slots)
    )
    assert schedule.window_s == HOUR
    # and: the once-job still runs at the time its line says
    assert once_cron.schedule().next_after("once_cron", 0, start) == start.replace(
        hour=15, second=0
    )


@pytest.mark.parametrize(
    "line, gap_s", [("*/15 * * * *", 900), ("0 9,17 * * *", 8 * HOUR), ("5 11 * * 1", 7 * 86400)]
)
def test_the_spread_of_a_cron_line_is_its_smallest_gap(line: str, gap_s: int) -> None:
    @job("spread", scopes=SKILLS, fan_out="per_character", cron=line)
    def spread(ctx: JobContext) -> None: ...

    assert spread.schedule().window_s == gap_s


def test_a_week_long_outage_of_a_per_minute_cron_is_caught_up_in_few_steps() -> None:
    from worker.jobs.schedule import Schedule

    # given: a per-minute cron with a spread, and a count of fire-time look-ups
    class Counted(Schedule):
        lookups = 0

        def _fire_after(self, instant: dt.datetime) -> dt.datetime:
            Counted.lookups += 1
            return super()._fire_after(instant)

    schedule = Counted(cron="* * * * *", jitter_s=30)
    now = dt.datetime(2026, 3, 12, 14, 0, 7, tzinfo=dt.UTC)
    since = now - dt.timedelta(days=7)

    # when: the newest missed slot is looked for
    latest = schedule.latest_at_or_before("job", 42, now, since)

    # then: it is the newest slot at or before now, found in a few dozen steps
    phase = dt.timedelta(seconds=schedule.phase_s("job", 42))
    newest = (now - phase).replace(second=0, microsecond=0) + phase
    assert latest == newest
    assert Counted.lookups < 100
    assert schedule.next_after("job", 42, latest) > now


def test_planning_reads_one_run_per_subject_however_long_the_history(
    frozen_runtime: Runtime,
) -> None:
    from worker.jobs.records import latest_planned

    # given: 300 subjects with 200 finished runs each, written straight into
    # the table (as any older version or a restore would), plus one
    # by-hand run per subject, which is no part of the plan
    subjects, history = 300, 200
    with frozen_runtime.pool.connection() as conn:
        conn.execute(
            "INSERT INTO esi_job_run (job, subject, character_id, due, started,"
            " finished, state, outcome)"
            " SELECT 'long', s, s, now() - make_interval(mins => 10 * (%s - n)),"
            " now(), now(), 'finished', 'success'"
            " FROM generate_series(1, %s) AS s, generate_series(1, %s) AS n"
            " ORDER BY n, s",
            (history, subjects, history),
        )
        conn.execute(
            "INSERT INTO esi_job_run (job, subject, character_id, started, state,"
            " outcome) SELECT 'long', s, s, now(), 'finished', 'success'"
            " FROM generate_series(1, %s) AS s",
            (subjects,),
        )
        newest = dict(
            conn.execute(
                "SELECT DISTINCT ON (subject) subject, id FROM esi_job_run"
                " WHERE job = 'long' AND due IS NOT NULL ORDER BY subject, id DESC"
            ).fetchall()
        )

    # when: the plan is read inside one transaction, whose table reads are counted
    with frozen_runtime.pool.connection() as conn, conn.transaction():
        latest = latest_planned(conn, "long")
        row = conn.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relname = 'esi_job_run'"
        ).fetchone()

    # then: the newest planned run of each subject, read about one row each
    # (the history holds 60,000)
    assert {subject: run.id for subject, run in latest.items()} == newest
    assert row is not None and row[0] <= 2 * subjects


def test_an_outage_of_the_workers_yields_one_catch_up_run_per_job_and_character(
    redis_worker: StartedWorker, clock: FrozenClock, pilots: list[int], probe: Any
) -> None:
    # given: every job has run for every character during a first period
    _minutes(redis_worker, clock, 10)
    probe.calls.clear()

    # when: the workers stop for ten periods while the scheduler goes on
    # (their queued runs wait; lost messages are sent again), then return
    scheduler = redis_worker.scheduler()
    redis_worker._worker.pause()
    for _ in range(100):
        clock.advance(60)
        scheduler.tick_all()
    redis_worker._worker.resume()
    redis_worker.join()
    back = clock.now()
    again = scheduler.tick_all()
    redis_worker.join()

    # then: one run per job and character, for the newest slot only; the
    # next one waits for the slot after it
    seen = collections.Counter((name, character) for name, character, _ in probe.calls)
    assert seen == collections.Counter(
        [("once_probe", None)] + [("character_probe", c) for c in pilots]
    )
    for _name, _character, due in probe.calls:
        assert back - dt.timedelta(seconds=600) < due <= back
    assert again == 0



@pytest.mark.parametrize("run_at_start", [True, False], ids=["demo", "production"])
def test_a_demo_scheduler_runs_every_job_and_subject_once_at_start_then_the_plan(
    redis_worker: StartedWorker,
    clock: FrozenClock,
    pilots: list[int],
    probe: Any,
    run_at_start: bool,
) -> None:
    from worker.scheduler import JobScheduler

    # given: every job has run for every character; no slot is due now
    _minutes(redis_worker, clock, 10)
    probe.calls.clear()
    clock.advance(1)

    # when: a scheduler starts again (as the demo's second start does)
    # and ticks twice
    scheduler = JobScheduler(
        redis_worker.runtime,
        redis_worker.registry.load_all()[0],
        redis_worker.actors,
        run_at_start=run_at_start,
    )
    first = scheduler.tick_all()
    redis_worker.join()
    second = scheduler.tick_all()
    redis_worker.join()

    # then: the demo ran every job and character once, at once, and then
    # waits for their slots; a production start only keeps to the plan
    expected = [("once_probe", None)] + [("character_probe", c) for c in pilots]
    if run_at_start:
        assert first == len(expected) and second == 0
        assert sorted(probe.calls, key=str) == sorted(
            [(name, character, clock.now()) for name, character in expected], key=str
        )
    else:
        assert first == second == 0 and probe.calls == []
