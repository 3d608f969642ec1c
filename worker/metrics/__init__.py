"""Prometheus metrics: names, labels and the HTTP endpoint.

One module per area (``tokens``, ``esi``, ``jobs``); the gauges read from
the database at scrape time are in ``collectors`` and, for the
scheduler's endpoint, ``scheduling``; the cache and limit gauges read
from the process's own state in ``refresh``; the zero-valued series made
at start-up in ``series``, the endpoint in ``server``. Every metric is
also importable from here. Labels are bounded: job, operation, status,
outcome, reason, SSO answer class, group, backend, limiter. Never a
character id, a token or anything that grows with the data.
"""

from __future__ import annotations

from .collectors import (
    DatabaseCollector,
    JobIntervalCollector,
    register_database_collector,
)
from .esi import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_REVALIDATIONS,
    ERROR_LIMIT_REMAINING,
    ERROR_LIMIT_RESET_SECONDS,
    ESI_HELD_SECONDS,
    ESI_LIMITED,
    ESI_NOT_MODIFIED,
    ESI_PAGES,
    ESI_REQUEST_SECONDS,
    ESI_REQUESTS,
    ESI_RETRIES,
    RATE_LIMIT_FILL,
    prime_operation,
)
from .jobs import (
    JOB_LAG_SECONDS,
    JOB_RUN_SECONDS,
    JOB_RUNS,
    JOB_RUNS_DEFERRED,
    SCHEDULER_HEARTBEAT,
    SCHEDULER_LEADER,
)
from .refresh import SharedCacheProbe, refresh_process_gauges, start_refreshing
from .scheduling import JobRunCollector, SchedulerCollector, scheduler_registry
from .series import prime_series
from .server import multiprocess_registry, process_registry, start_metrics_server
from .tokens import TOKEN_REFRESH_SECONDS, TOKEN_REFRESHES

__all__ = [
    "CACHE_BYTES",
    "CACHE_ENTRIES",
    "CACHE_ERRORS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CACHE_REVALIDATIONS",
    "ERROR_LIMIT_REMAINING",
    "ERROR_LIMIT_RESET_SECONDS",
    "ESI_HELD_SECONDS",
    "ESI_LIMITED",
    "ESI_NOT_MODIFIED",
    "ESI_PAGES",
    "ESI_REQUESTS",
    "ESI_REQUEST_SECONDS",
    "ESI_RETRIES",
    "JOB_LAG_SECONDS",
    "JOB_RUNS",
    "JOB_RUNS_DEFERRED",
    "JOB_RUN_SECONDS",
    "RATE_LIMIT_FILL",
    "SCHEDULER_HEARTBEAT",
    "SCHEDULER_LEADER",
    "TOKEN_REFRESHES",
    "TOKEN_REFRESH_SECONDS",
    "DatabaseCollector",
    "JobIntervalCollector",
    "JobRunCollector",
    "SchedulerCollector",
    "SharedCacheProbe",
    "multiprocess_registry",
    "prime_operation",
    "prime_series",
    "process_registry",
    "refresh_process_gauges",
    "register_database_collector",
    "scheduler_registry",
    "start_metrics_server",
    "start_refreshing",
]
