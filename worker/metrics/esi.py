"""Metrics of the ESI client: requests, pages, retries, cache and limits.

The cache and limit gauges are not set where requests happen: they are
read from the caches and the limiter when Prometheus scrapes (or every
few seconds in a worker process of a process group, see
:mod:`worker.metrics.refresh`), so they decay while no request is made
and are absent until the process has something to say.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

# Why an ESI request was sent again (``esi_worker_esi_retries_total``).
RETRY_REASONS = ("transient", "pages")

ESI_REQUESTS = Counter(
    "esi_worker_esi_requests",
    "ESI HTTP requests sent, by operation and status code.",
    ["operation", "status"],
)
ESI_REQUEST_SECONDS = Histogram(
    "esi_worker_esi_request_seconds",
    "ESI request latency, by operation (failed connections included).",
    ["operation"],
)
ESI_PAGES = Histogram(
    "esi_worker_esi_pages",
    "Pages read by one results() call, by operation.",
    ["operation"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
ESI_NOT_MODIFIED = Counter(
    "esi_worker_esi_not_modified",
    "ESI answers 304 Not Modified, by operation.",
    ["operation"],
)
ESI_RETRIES = Counter(
    "esi_worker_esi_retries",
    "ESI requests sent again, by operation and reason: transient (a 502, "
    "503, 504 or a failed connection) or pages (the pages of one results() "
    "came from different snapshots and were all read again).",
    ["operation", "reason"],
)
CACHE_HITS = Counter(
    "esi_worker_cache_hits",
    "ESI calls answered from the response cache, by operation.",
    ["operation"],
)
CACHE_MISSES = Counter(
    "esi_worker_cache_misses",
    "ESI calls the response cache could not answer, by operation.",
    ["operation"],
)
CACHE_REVALIDATIONS = Counter(
    "esi_worker_cache_revalidations",
    "Stale cache entries revalidated with If-None-Match, by operation.",
    ["operation"],
)
CACHE_ENTRIES = Gauge(
    "esi_worker_cache_entries",
    "Entries held by the response cache, by backend (memory: this "
    "process's own; redis: the shared one, reported by the scheduler).",
    ["backend"],
    multiprocess_mode="livesum",
)
CACHE_BYTES = Gauge(
    "esi_worker_cache_bytes",
    "Approximate bytes held by the response cache, by backend.",
    ["backend"],
    multiprocess_mode="livesum",
)
CACHE_ERRORS = Counter(
    "esi_worker_cache_errors",
    "Failures of the cache backend (the call went on without it).",
    ["backend"],
)
ERROR_LIMIT_REMAINING = Gauge(
    "esi_worker_error_limit_remaining",
    "Errors ESI still allows in the current window (the full budget once "
    "the window has reset); absent until ESI has told. By limiter: shared "
    "(state in Redis) or process (this process alone).",
    ["limiter"],
    multiprocess_mode="livemin",
)
ERROR_LIMIT_RESET_SECONDS = Gauge(
    "esi_worker_error_limit_reset_seconds",
    "Seconds until ESI's error window resets (0 once it has), by limiter.",
    ["limiter"],
    multiprocess_mode="livemax",
)
RATE_LIMIT_FILL = Gauge(
    "esi_worker_rate_limit_fill_ratio",
    "Share of a rate-limit bucket spent within its window (0..1), by group; "
    "the fullest bucket of the group.",
    ["group"],
    multiprocess_mode="livemax",
)
ESI_LIMITED = Counter(
    "esi_worker_esi_limited",
    "420 and 429 answers received from ESI, by status.",
    ["status"],
)
ESI_HELD_SECONDS = Counter(
    "esi_worker_esi_held_seconds",
    "Time requests were held back by the limiter, by reason.",
    ["reason"],
)


@functools.lru_cache(maxsize=4096)
def prime_operation(name: str) -> None:
    """Create the per-operation counters of ``name`` at zero, once.

    Called on an operation's first request: its first retry, 304 or cache
    hit then counts in ``rate()`` instead of appearing at 1.
    """
    for counter in (ESI_NOT_MODIFIED, CACHE_HITS, CACHE_MISSES, CACHE_REVALIDATIONS):
        counter.labels(name)
    for reason in RETRY_REASONS:
        ESI_RETRIES.labels(name, reason)
