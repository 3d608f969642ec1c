"""Metrics of job runs and of the scheduler."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_RUNS = Counter(
    "esi_worker_job_runs",
    "Job runs finished, by job and outcome (success, failure, skipped, deferred).",
    ["job", "outcome"],
)
JOB_RUN_SECONDS = Histogram(
    "esi_worker_job_run_seconds",
    "Duration of a job run, by job.",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
JOB_LAG_SECONDS = Histogram(
    "esi_worker_job_lag_seconds",
    "Time from a run's due time to its start, by job.",
    ["job"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
JOB_RUNS_DEFERRED = Counter(
    "esi_worker_job_runs_deferred",
    "Runs deferred instead of run, by job and reason (downtime, route_down, limits).",
    ["job", "reason"],
)
JOB_LAST_SUCCESS = Gauge(
    "esi_worker_job_last_success_timestamp_seconds",
    "When a run of the job last succeeded (Unix time), by job.",
    ["job"],
    multiprocess_mode="max",
)
SCHEDULER_HEARTBEAT = Gauge(
    "esi_worker_scheduler_heartbeat_timestamp_seconds",
    "When this scheduler last planned (Unix time), leader or follower.",
    multiprocess_mode="max",
)
SCHEDULER_LEADER = Gauge(
    "esi_worker_scheduler_leader",
    "1 while this scheduler holds the leadership lock, else 0.",
    multiprocess_mode="max",
)
