"""Metrics of the token store: refreshes, their outcome and the SSO's answer."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKEN_REFRESHES = Counter(
    "esi_worker_token_refreshes",
    "Token refreshes, by outcome (success, dead, owner_changed, transient, "
    "config_error, skipped) and the class of the SSO's answer (success, "
    "dead_grant, config, transient, none when no SSO call was made).",
    ["outcome", "sso_class"],
)

TOKEN_REFRESH_SECONDS = Histogram(
    "esi_worker_token_refresh_seconds",
    "Duration of one token refresh: row lock, SSO call and storage.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
