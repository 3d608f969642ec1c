"""Metrics of job runs."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOB_RUNS = Counter(
    "esi_worker_job_runs",
    "Job runs finished, by job and outcome (success, failure, skipped).",
    ["job", "outcome"],
)
JOB_RUN_SECONDS = Histogram(
    "esi_worker_job_run_seconds",
    "Duration of a job run, by job.",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
