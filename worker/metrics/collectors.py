"""Gauges read from the database at scrape time: tokens and queued runs.

Only the scheduler (or the one ``run`` process) registers these, so a
deployment exposes each of them once however many workers it runs. They
are computed on every scrape from a few indexed counts; nothing is kept
in memory between scrapes, so they are right after a restart too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ..jobs import Job
    from ..runtime import Runtime

log = logging.getLogger(__name__)

# Horizons of ``esi_worker_tokens_expiring``, in seconds.
EXPIRY_HORIZONS_S = (300, 1200, 3600, 86400)
# Horizons of ``esi_worker_access_tokens_expiring`` (0: already expired);
# an access token lives 20 minutes.
ACCESS_HORIZONS_S = (0, 60, 300, 600)
# Refresh tokens reportedly stop working after about 30 days without use
# (ESI.md 1.6, UNVERIFIED); CCP's docs say they last until revoked.
REFRESH_IDLE_EXPIRY_S = 30 * 86400.0
# An access token lives 20 minutes, so its expiry minus this is when the
# refresh token was last used successfully.
ACCESS_LIFETIME_S = 1200.0
# A scrape must never hang on a busy database.
STATEMENT_TIMEOUT_MS = 2000

_HORIZON_SQL = (
    "count(*) FILTER (WHERE usable"
    " AND lost_at <= %(now)s + interval '{s} s')"
)
_ACCESS_SQL = (
    "count(*) FILTER (WHERE usable"
    " AND access_expires <= %(now)s + interval '{s} s')"
)
_TOKENS_SQL = f"""
SELECT state, count(*),
       {", ".join(_HORIZON_SQL.format(s=s) for s in EXPIRY_HORIZONS_S)},
       {", ".join(_ACCESS_SQL.format(s=s) for s in ACCESS_HORIZONS_S)}
FROM (
    SELECT CASE WHEN state = %(valid)s AND refresh_token IS NOT NULL
                     AND EXISTS (SELECT 1 FROM esi_sso_client_refusal
                                 WHERE client_id = %(client_id)s)
                THEN %(config_error)s ELSE state
           END AS state,
           state = %(valid)s AS usable,
           access_expires,
           CASE WHEN refresh_token IS NULL THEN access_expires
                ELSE access_expires + %(idle)s * interval '1 s'
           END AS lost_at
    FROM esi_token
) AS t
GROUP BY state
"""
_QUEUED_SQL = (
    "SELECT count(*) FROM esi_job_run WHERE started IS NULL AND finished IS NULL"
)


class DatabaseCollector(Collector):
    """Token counts by state and by time to expiry, and the depth of the run queue.

    A token is *about to be lost* (``esi_worker_tokens_expiring``) when it is
    valid and nothing will keep it past the horizon: without a refresh token
    it dies with its access token; with one, it dies when the refresh token
    has gone unused for ``idle_expiry_s`` (counted from the last successful
    refresh; the 30 days reported for SSO are unverified). A healthy worker
    shows zero in every horizon. ``esi_worker_access_tokens_expiring``
    counts valid tokens by when their access token expires, which needs no
    such assumption.

    While the SSO refuses our client credentials (``client_id``), valid
    tokens that depend on a refresh are counted as ``config_error``, as
    ``esi-worker tokens list`` shows them; the horizons still count them.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        clock: Clock = SYSTEM_CLOCK,
        idle_expiry_s: float = REFRESH_IDLE_EXPIRY_S,
        client_id: str | None = None,
    ) -> None:
        self._pool = pool
        self._client_id = client_id or ""
        self._clock = clock
        self._idle_s = idle_expiry_s - ACCESS_LIFETIME_S

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families this collector yields (no database call)."""
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Count from the database; on failure yield nothing and log why."""
        try:
            by_state, expiring, access, queued = self._read()
        except Exception as exc:  # noqa: BLE001 (no trouble may break a scrape)
            log.warning("database gauges unavailable: %s", type(exc).__name__)
            return
        from ..tokens.token import STATES  # not at import: tokens import metrics

        tokens, tokens_expiring, access_expiring, queue_depth = self._families()
        for state in sorted(set(STATES) | set(by_state)):
            tokens.add_metric([state], by_state.get(state, 0))
        for horizon, count in zip(EXPIRY_HORIZONS_S, expiring, strict=True):
            tokens_expiring.add_metric([str(horizon)], count)
        for horizon, count in zip(ACCESS_HORIZONS_S, access, strict=True):
            access_expiring.add_metric([str(horizon)], count)
        queue_depth.add_metric([], queued)
        yield from (tokens, tokens_expiring, access_expiring, queue_depth)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "esi_worker_tokens", "Stored tokens, by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                "esi_worker_tokens_expiring",
                "Valid tokens that will be lost within `within` seconds unless "
                "refreshed: no refresh token and the access token expires, or "
                "the refresh token reaches its idle expiry.",
                labels=["within"],
            ),
            GaugeMetricFamily(
                "esi_worker_access_tokens_expiring",
                "Valid tokens whose access token expires within `within` "
                "seconds (0: has expired); a refresh renews it.",
                labels=["within"],
            ),
            GaugeMetricFamily(
                "esi_worker_job_queue_depth",
                "Job runs queued and not yet started.",
            ),
        )

    def _read(self) -> tuple[dict[str, int], list[int], list[int], int]:
        params = {
            "valid": "valid",
            "config_error": "config_error",
            "client_id": self._client_id,
            "now": self._clock.now(),
            "idle": self._idle_s,
        }
        with self._pool.connection() as conn:
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            rows = conn.execute(_TOKENS_SQL, params).fetchall()
            queued = conn.execute(_QUEUED_SQL).fetchone()

        by_state = {str(row[0]): int(row[1]) for row in rows}
        first = 2 + len(EXPIRY_HORIZONS_S)
        expiring = _column_sums(rows, 2, first)
        access = _column_sums(rows, first, first + len(ACCESS_HORIZONS_S))
        return by_state, expiring, access, int(queued[0]) if queued else 0


def _column_sums(rows: list[Any], start: int, stop: int) -> list[int]:
    return [sum(int(row[i]) for row in rows) for i in range(start, stop)]


def register_database_collector(
    runtime: Runtime, registry: CollectorRegistry
) -> DatabaseCollector:
    """Add the database gauges of ``runtime`` to ``registry``."""
    collector = DatabaseCollector(
        runtime.pool,
        clock=runtime.clock,
        idle_expiry_s=runtime.settings.token_idle_expiry_s,
        client_id=runtime.settings.sso_client_id,
    )
    registry.register(collector)
    return collector


class JobIntervalCollector(Collector):
    """The period of every scheduled job, so alerts can tell a late job.

    For a cron job the period is the gap between its next two firings.
    """

    def __init__(
        self,
        jobs: Mapping[str, Job],
        overrides: Mapping[str, float],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._jobs = dict(jobs)
        self._overrides = dict(overrides)
        self._clock = clock

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The one family this collector yields."""
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One series per job, from its schedule."""
        family = self._family()
        for name in sorted(self._jobs):
            try:
                family.add_metric([name], self._period_s(name))
            except Exception as exc:  # noqa: BLE001 (a plugin's odd schedule)
                log.warning("no period for job %r: %s", name, exc, extra={"job": name})
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "esi_worker_job_interval_seconds",
            "How often each job is due, in seconds (the operator's override if set).",
            labels=["job"],
        )

    def periods(self) -> dict[str, float]:
        """Each job's period in seconds; jobs whose period fails are left out."""
        periods = {}
        for name in self._jobs:
            with contextlib.suppress(Exception):  # logged when scraped
                periods[name] = self._period_s(name)
        return periods

    def _period_s(self, name: str) -> float:
        job = self._jobs[name]
        schedule = job.schedule(self._overrides.get(name))
        if schedule.cron is None:
            return float(schedule.interval_s)
        first = schedule.next_after(name, 0, self._clock.now())
        return (schedule.next_after(name, 0, first) - first).total_seconds()
