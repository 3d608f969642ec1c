"""Reasons to defer a run instead of failing it: downtime and routes reported down.

ESI goes down daily for the game's downtime (11:00 UTC, about a quarter
of an hour; the window is a setting). The status endpoint lists routes
that are down: ``/meta/status`` on the current ESI (``{"routes": [{"method",
"path", "status": "OK"}]}``) and ``/status.json?version=latest`` on the
legacy one (``[{"method", "route", "status": "green|yellow|red"}]``). A
status document that cannot be read blocks nothing: the run goes ahead.

A deferred run must not come back at the same instant as every other
deferred run (after the downtime, when a route is up again, when ESI's
limits reset): :func:`resume_at` spreads them, with a hash of their own
after the downtime, else by waiting for each subject's next slot, so a
long outage writes one deferral per subject and period, not one a minute.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .schedule import stable_fraction

if TYPE_CHECKING:
    from ..clock import Clock
    from ..settings import Settings
    from .schedule import Schedule

log = logging.getLogger(__name__)

DOWNTIME, ROUTE_DOWN, LIMITS = "downtime", "route_down", "limits"
_VERSION_RE = re.compile(r"^/(latest|legacy|dev|v\d+)(?=/)")
_DOWN_STATES = frozenset({"down", "red"})
_STATUS_TIMEOUT_S = 5.0
# A run deferred again after this long a period retries on an hourly grid
# of its own rather than waiting for its next slot (a day, say).
RETRY_GRID_S = 3600.0


def resume_at(
    schedule: Schedule,
    job: str,
    subject: int,
    earliest: dt.datetime,
    *,
    spread_s: float | None,
) -> dt.datetime:
    """When a deferred run of ``job`` for ``subject`` is due again.

    With ``spread_s``, at ``earliest`` plus a stable share of it, from a
    hash unrelated to the subject's phase (the subjects deferred together
    are those whose slots are close). Without, at the subject's next slot
    after ``earliest``, or its slot on an hourly grid of its own when the
    period is longer: subjects come back as spread as their slots are.
    Never later than the next slot.
    """
    slot = schedule.next_after(job, subject, earliest)
    if spread_s is not None:
        share = stable_fraction(f"{job}\0resume", subject)
        return min(slot, earliest + dt.timedelta(seconds=share * spread_s))
    if schedule.period_s <= RETRY_GRID_S:
        return slot
    phase = stable_fraction(f"{job}\0retry", subject) * RETRY_GRID_S
    since_phase = (earliest - _EPOCH).total_seconds() - phase
    turns = since_phase // RETRY_GRID_S + 1
    grid = _EPOCH + dt.timedelta(seconds=turns * RETRY_GRID_S + phase)
    return min(slot, grid)


class Downtime:
    """A daily window (UTC) in which ESI is expected to be down."""

    def __init__(self, window: str) -> None:
        self._window = window
        if window:
            start, end = window.split("-")
            self._start, self._end = _minutes(start), _minutes(end)

    def contains(self, now: dt.datetime) -> bool:
        """True while ``now`` is inside the window."""
        if not self._window:
            return False
        minute = now.astimezone(dt.UTC)
        at = minute.hour * 60 + minute.minute
        if self._start <= self._end:
            return self._start <= at < self._end
        return at >= self._start or at < self._end  # a window across midnight

    def end_after(self, now: dt.datetime) -> dt.datetime:
        """When the window that holds ``now`` closes."""
        utc = now.astimezone(dt.UTC)
        midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight + dt.timedelta(minutes=self._end)
        return end if end > utc else end + dt.timedelta(days=1)


class RouteStatus:
    """ESI's own report of routes that are down, read at most once per max age."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._down: frozenset[tuple[str, str]] = frozenset()
        self._read_at: float | None = None

    def down(self, routes: Iterable[str]) -> list[str]:
        """Those of ``routes`` (``"/path"`` or ``"GET /path"``) reported down."""
        wanted = {route: _route_key(route) for route in routes}
        if not wanted or not self._settings.esi_status_check:
            return []
        down = self._current()
        return [route for route, key in wanted.items() if key in down]

    def _current(self) -> frozenset[tuple[str, str]]:
        with self._lock:
            now = self._clock.monotonic()
            max_age = self._settings.esi_status_max_age_s
            if self._read_at is None or now - self._read_at >= max_age:
                self._down = self._fetch()
                self._read_at = now
            return self._down

    def _fetch(self) -> frozenset[tuple[str, str]]:
        base = self._settings.esi_base_url
        for url, parse in (
            (f"{base}/meta/status", _parse_meta),
            (f"{base}/status.json?version=latest", _parse_legacy),
        ):
            document = self._get(url)
            if document is not None:
                try:
                    return frozenset(parse(document))
                except (KeyError, TypeError, AttributeError):
                    log.warning("ESI status document at %s has an unknown shape", url)
        return frozenset()

    def _get(self, url: str) -> Any:
        import requests

        headers = {"User-Agent": self._settings.user_agent}
        try:
            response = requests.get(url, headers=headers, timeout=_STATUS_TIMEOUT_S)
        except requests.RequestException as exc:
            log.debug("ESI status at %s not readable: %s", url, type(exc).__name__)
            return None
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None


def _parse_meta(document: Any) -> Iterable[tuple[str, str]]:
    for route in document["routes"]:
        if str(route.get("status", "")).lower() in _DOWN_STATES:
            yield _route_key(f"{route['method']} {route['path']}")


def _parse_legacy(document: Any) -> Iterable[tuple[str, str]]:
    for route in document:
        if str(route.get("status", "")).lower() in _DOWN_STATES:
            yield _route_key(f"{route['method']} {route['route']}")


def _route_key(route: str) -> tuple[str, str]:
    method, _, path = route.strip().rpartition(" ")
    path = _VERSION_RE.sub("", path.strip()).rstrip("/") or "/"
    return (method or "GET").upper(), path.lower()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)
