"""Prometheus metrics: names, labels and the HTTP endpoint.

Labels are bounded: job, operation, status, outcome. Never a character id,
a token or anything else that grows with the data.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

TOKEN_REFRESHES = Counter(
    "esi_worker_token_refreshes",
    "Token refreshes, by outcome (success, dead, transient, config_error, skipped).",
    ["outcome"],
)
TOKEN_REFRESH_SECONDS = Histogram(
    "esi_worker_token_refresh_seconds",
    "Time one token refresh took, SSO call included.",
)
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


def start_metrics_server(host: str, port: int) -> int:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread.

    :returns: the port bound (useful when ``port`` is 0).
    """
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics served on http://%s:%d/metrics", host, bound)
    return int(bound)
