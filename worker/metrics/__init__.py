"""Prometheus metrics: names, labels and the HTTP endpoint.

One module per area (``tokens``, ``esi``, ``jobs``); every metric is also
importable from here. Labels are bounded: job, operation, status, outcome,
group. Never a character id, a token or anything that grows with the data.
"""

from __future__ import annotations

from .esi import (
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_MISSES,
    ESI_REQUEST_SECONDS,
    ESI_REQUESTS,
    ESI_RETRIES,
)
from .jobs import JOB_RUN_SECONDS, JOB_RUNS
from .server import start_metrics_server
from .tokens import TOKEN_REFRESH_SECONDS, TOKEN_REFRESHES

__all__ = [
    "CACHE_ERRORS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "ESI_REQUESTS",
    "ESI_REQUEST_SECONDS",
    "ESI_RETRIES",
    "JOB_RUNS",
    "JOB_RUN_SECONDS",
    "TOKEN_REFRESHES",
    "TOKEN_REFRESH_SECONDS",
    "start_metrics_server",
]
