"""Gauges of the scheduler's endpoint: its own state and each job's record.

Registered only by the scheduler (or the one ``run`` process), so worker
processes never report a scheduler, and read from ``esi_job_run`` at
scrape time, so when a job last succeeded is known right after a
restart as well.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..clock import SYSTEM_CLOCK, Clock
from . import jobs as job_metrics

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ..jobs import Job
    from ..runtime import Runtime

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 2000
# A success is looked for this far back at least (and three periods of
# the slowest job); older than that the job is overdue anyway.
SUCCESS_HORIZON_S = 7 * 86400.0

# Each subquery walks the (job, started) index from one end and stops at
# the first match, so the cost stays small however long the history.
_JOBS_SQL = """
SELECT j.job,
       (SELECT r.finished FROM esi_job_run r
         WHERE r.job = j.job AND r.outcome = 'success' AND r.started >= %(horizon)s
         ORDER BY r.started DESC LIMIT 1),
       (SELECT r.started FROM esi_job_run r
         WHERE r.job = j.job AND r.started IS NOT NULL
         ORDER BY r.started LIMIT 1),
       latest.deferred_reason,
       latest.next_due
FROM unnest(%(jobs)s::text[]) AS j(job)
LEFT JOIN LATERAL (
    SELECT r.deferred_reason, r.next_due FROM esi_job_run r
     WHERE r.job = j.job AND r.started IS NOT NULL AND r.outcome IS NOT NULL
     ORDER BY r.started DESC LIMIT 1
) AS latest ON TRUE
"""


# job, last success, oldest run, latest run's deferral reason and next due
_JobRow = tuple[
    str, dt.datetime | None, dt.datetime | None, str | None, dt.datetime | None
]


class SchedulerCollector(Collector):
    """This process's scheduler: heartbeat and leadership, once it has ticked."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The two families (no values needed)."""
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Each value this process's scheduler has set so far."""
        values = (job_metrics.SCHEDULER_HEARTBEAT, job_metrics.SCHEDULER_LEADER)
        for family, value in zip(self._families(), values, strict=True):
            if value.value is not None:
                family.add_metric([], value.value)
                yield family

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "esi_worker_scheduler_heartbeat_timestamp_seconds",
                "When this scheduler last planned (Unix time), leader or follower.",
            ),
            GaugeMetricFamily(
                "esi_worker_scheduler_leader",
                "1 while this scheduler holds the leadership lock, else 0.",
            ),
        )


class JobRunCollector(Collector):
    """When each scheduled job last succeeded, and what its latest run said.

    ``esi_worker_job_tracked_since_timestamp_seconds`` is when the job's
    record begins: its oldest run kept, or when this collector started if
    that is earlier or there is none, so that a job which never succeeds
    (or never runs) is overdue too.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        jobs: Mapping[str, Job],
        intervals: Mapping[str, float],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._pool = pool
        self._jobs = sorted(jobs)
        slowest = max(intervals.values(), default=0.0)
        self._horizon_s = max(SUCCESS_HORIZON_S, 3 * slowest)
        self._clock = clock
        self._since = clock.now()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families this collector yields (no database call)."""
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read every job's record; on database trouble yield nothing."""
        try:
            rows = self._read()
        except Exception as exc:  # noqa: BLE001 (a scrape survives a busy database)
            log.warning("job run gauges unavailable: %s", type(exc).__name__)
            return

        success, since, deferred = self._families()
        for job, last_success, first_run, reason, next_due in rows:
            if last_success is not None:
                success.add_metric([job], last_success.timestamp())
            start = min(d for d in (first_run, self._since) if d is not None)
            since.add_metric([job], start.timestamp())
            if reason is not None and next_due is not None:
                deferred.add_metric([job, reason], next_due.timestamp())
        yield from (success, since, deferred)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "esi_worker_job_last_success_timestamp_seconds",
                "When a run of the job last succeeded (Unix time), by job.",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "esi_worker_job_tracked_since_timestamp_seconds",
                "Since when the job is expected to run (Unix time): its oldest "
                "run kept, or when this scheduler started, whichever is earlier.",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "esi_worker_job_deferred_until_timestamp_seconds",
                "When a job whose latest run was deferred is due again (Unix "
                "time), by job and reason.",
                labels=["job", "reason"],
            ),
        )

    def _read(self) -> list[_JobRow]:
        horizon = self._clock.now() - dt.timedelta(seconds=self._horizon_s)
        params = {"jobs": self._jobs, "horizon": horizon}
        with self._pool.connection() as conn:
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            return list(conn.execute(_JOBS_SQL, params).fetchall())


def scheduler_registry(runtime: Runtime, jobs: Mapping[str, Job]) -> CollectorRegistry:
    """The registry of a scheduler's (or ``run``'s) endpoint.

    The process's own metrics plus what a deployment must show once: the database gauges (tokens, run queue, each job's record), the
    jobs' periods, this scheduler's heartbeat and the shared Redis cache.
    """
    from ..esi.cache import RedisCache
    from .collectors import JobIntervalCollector, register_database_collector
    from .refresh import SharedCacheProbe
    from .server import process_registry

    refreshers = []
    # Asked only with Redis configured: a scheduler has no memory cache.
    cache = runtime.cache if runtime.settings.redis_url else None
    if isinstance(cache, RedisCache):
        refreshers.append(SharedCacheProbe(cache, clock=runtime.clock).refresh)
    registry = process_registry(refreshers)

    register_database_collector(runtime, registry)
    intervals = JobIntervalCollector(
        jobs, runtime.settings.job_intervals, clock=runtime.clock
    )
    registry.register(intervals)
    registry.register(
        JobRunCollector(runtime.pool, jobs, intervals.periods(), clock=runtime.clock)
    )
    registry.register(SchedulerCollector())
    return registry
