"""Metrics of the ESI client: requests, retries, cache."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ESI_REQUESTS = Counter(
    "esi_worker_esi_requests",
    "ESI HTTP requests sent, by operation and status code.",
    ["operation", "status"],
)
ESI_REQUEST_SECONDS = Histogram(
    "esi_worker_esi_request_seconds",
    "ESI request latency, by operation.",
    ["operation"],
)
ESI_RETRIES = Counter(
    "esi_worker_esi_retries",
    "ESI requests retried after a transient failure, by operation.",
    ["operation"],
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
CACHE_ERRORS = Counter(
    "esi_worker_cache_errors",
    "Failures of the cache backend (the call went on without it).",
    ["backend"],
)
