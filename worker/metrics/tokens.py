"""Metrics of the token store: refreshes and their latency."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKEN_REFRESHES = Counter(
    "esi_worker_token_refreshes",
    "Token refreshes, by outcome (success, dead, transient, config_error, skipped).",
    ["outcome"],
)

TOKEN_REFRESH_SECONDS = Histogram(
    "esi_worker_token_refresh_seconds",
    "Time one token refresh took, SSO call included.",
)
