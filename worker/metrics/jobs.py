"""Metrics of job runs and of the scheduler.

The scheduler's own gauges are plain values here, not prometheus-client
gauges: only a scheduler's endpoint shows them (through
:class:`worker.metrics.scheduling.SchedulerCollector`), so a worker
process never reports a heartbeat of 0 that would hide a missing
scheduler. When a job last succeeded is read from ``esi_job_run`` by the
scheduler too, so it survives restarts.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Histogram

JOB_RUNS = Counter(
    "esi_worker_job_runs",
    "Job runs finished, by job and outcome (success, failure, skipped, deferred).",
    ["job", "outcome"],
)
JOB_RUN_SECONDS = Histogram(
    "esi_worker_job_run_seconds",
    "Duration of a job run that started its work, by job.",
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


class SchedulerValue:
    """One value of this process's scheduler; unset until it has one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: float | None = None

    def set(self, value: float) -> None:
        """Keep ``value`` (the gauge's ``set``)."""
        with self._lock:
            self._value = float(value)

    @property
    def value(self) -> float | None:
        """The value last set, or ``None``."""
        with self._lock:
            return self._value


SCHEDULER_HEARTBEAT = SchedulerValue()
"""When this scheduler last planned (Unix time), leader or follower."""
SCHEDULER_LEADER = SchedulerValue()
"""1 while this scheduler holds the leadership lock, else 0."""
