"""The scheduler's endpoint: job records from esi_job_run, heartbeat only there,
and durations of runs that did work."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.clock import FrozenClock
from worker.jobs import Job, JobContext, JobRegistry, job
from worker.metrics import jobs as job_metrics
from worker.metrics.scheduling import JobRunCollector, scheduler_registry
from worker.metrics.server import process_registry
from worker.runs import RunGuard, execute_job

NOW = dt.datetime(2026, 3, 2, 14, 0, 0, tzinfo=dt.UTC)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _jobs(*names: str) -> dict[str, Job]:
    def noop(ctx: JobContext) -> None:
        del ctx

    return {name: job(name, every=300)(noop) for name in names}


def _run(pool: Any, name: str, started: dt.datetime, outcome: str,
         reason: str | None = None, next_due: dt.datetime | None = None) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO esi_job_run (job, started, finished, outcome, deferred_reason,"
            " next_due) VALUES (%s, %s, %s, %s, %s, %s)",
            (name, started, started + dt.timedelta(seconds=5), outcome, reason, next_due),
        )


def test_job_records_are_read_from_the_runs_kept_in_the_database(clean_db: Any) -> None:
    # given runs as a restarted scheduler finds them: one job that succeeded
    # and failed since, one that never succeeded, one deferred for downtime,
    # one never run
    hour = dt.timedelta(hours=1)
    _run(clean_db, "ok_then_failing", NOW - 3 * hour, "success")
    _run(clean_db, "ok_then_failing", NOW - 2 * hour, "failure")
    _run(clean_db, "never_ok", NOW - 5 * hour, "failure")
    _run(clean_db, "never_ok", NOW - hour, "failure")
    _run(clean_db, "in_downtime", NOW - 2 * hour, "success")
    _run(clean_db, "in_downtime", NOW - dt.timedelta(minutes=5), "deferred",
         "downtime", NOW + dt.timedelta(minutes=12))
    jobs = _jobs("ok_then_failing", "never_ok", "in_downtime", "never_run")
    registry = CollectorRegistry()
    registry.register(JobRunCollector(clean_db, jobs, {}, clock=FrozenClock(NOW)))

    # when scraped
    samples = _samples(registry)

    # then the last success survives the later failure; a job without any
    # counts from its oldest run, or from the collector's start
    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    success = "esi_worker_job_last_success_timestamp_seconds"
    since = "esi_worker_job_tracked_since_timestamp_seconds"
    deferred = "esi_worker_job_deferred_until_timestamp_seconds"
    assert value(success, job="ok_then_failing") == (NOW - 3 * hour).timestamp() + 5
    assert value(success, job="never_ok") is None
    assert value(since, job="never_ok") == (NOW - 5 * hour).timestamp()
    assert value(since, job="never_run") == NOW.timestamp()
    assert value(deferred, job="in_downtime", reason="downtime") == (
        NOW + dt.timedelta(minutes=12)).timestamp()
    assert value(deferred, job="ok_then_failing", reason="downtime") is None


def test_only_the_scheduler_endpoint_shows_the_scheduler(
    runtime: Any, clean_db: Any
) -> None:
    # given a scheduler that has ticked in this process
    job_metrics.SCHEDULER_HEARTBEAT.set(NOW.timestamp())
    job_metrics.SCHEDULER_LEADER.set(1)

    # when a worker's endpoint and the scheduler's are scraped
    worker = {name for name, _ in _samples(process_registry())}
    scheduler = {name for name, _ in _samples(scheduler_registry(runtime, _jobs("a")))}

    # then a worker reports no heartbeat at all (no 0 that would hide a
    # missing scheduler), the scheduler reports both
    wanted = {"esi_worker_scheduler_heartbeat_timestamp_seconds",
              "esi_worker_scheduler_leader"}
    assert not wanted & worker
    assert wanted <= scheduler


def test_a_run_deferred_before_it_started_adds_no_duration(
    runtime: Any, clean_db: Any
) -> None:
    # given a job and ESI's downtime around now
    jobs = _jobs("deferred_probe")
    now = runtime.clock.now()
    window = "-".join((now + dt.timedelta(minutes=m)).strftime("%H:%M") for m in (-2, 3))
    runtime.settings = runtime.settings.replace(esi_downtime_utc=window)
    registry = JobRegistry("none", extra=jobs.values())
    before = _count("deferred_probe")
    deferred_before = REGISTRY.get_sample_value(
        "esi_worker_job_runs_total", {"job": "deferred_probe", "outcome": "deferred"}
    ) or 0.0

    # when the run is executed, then it is deferred and counted as such...
    outcome = execute_job(runtime, registry, "deferred_probe", guard=RunGuard(runtime))
    assert outcome == "deferred"
    assert REGISTRY.get_sample_value(
        "esi_worker_job_runs_total", {"job": "deferred_probe", "outcome": "deferred"}
    ) == deferred_before + 1

    # ...but its ~0 s is not among the job's durations
    assert _count("deferred_probe") == before


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(
        "esi_worker_job_run_seconds_count", {"job": name}) or 0.0
