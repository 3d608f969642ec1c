"""When runs are due: interval or cron slots, shifted by a stable phase.

Each job and subject (a character, token or corporation) gets a phase
from a hash of both, so a thousand characters on an hourly job are spread
over the hour instead of all asking ESI at its top, and a character keeps
its minute from one restart to the next. Cron schedules of fan-out jobs
are spread the same way, over the smallest gap between two fire times.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

MIN_INTERVAL_S = 1.0
# The gaps of a cron line are measured over this many fire times from a
# fixed instant, so every process finds the same spread.
_GAP_SAMPLE = 64
_REFERENCE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def stable_fraction(job: str, subject: int) -> float:
    """A number in [0, 1) fixed by ``job`` and ``subject``, alike in every process."""
    digest = hashlib.sha256(f"{job}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@functools.lru_cache(maxsize=1024)
def schedule_of(
    interval_s: float = 3600.0,
    cron: str | None = None,
    jitter_s: float = 0.0,
    *,
    spread_cron: bool = False,
) -> Schedule:
    """The :class:`Schedule` for these values, built (and its cron parsed) once.

    :raises ValueError: for an invalid interval or cron line.
    """
    return Schedule(interval_s, cron, jitter_s, spread_cron=spread_cron)


@dataclass(frozen=True)
class Schedule:
    """An interval or a crontab line (UTC), and the window runs are spread over.

    :param spread_cron: without jitter, spread a cron schedule's subjects
        over its smallest gap (fan-out jobs) instead of not at all.
    """

    interval_s: float = 3600.0
    cron: str | None = None
    jitter_s: float = 0.0
    spread_cron: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.interval_s) or self.interval_s <= 0:
            raise ValueError(
                f"interval must be positive and finite, got {self.interval_s!r}"
            )
        if self.interval_s < MIN_INTERVAL_S:
            raise ValueError(
                f"interval must be at least {MIN_INTERVAL_S:g} s, "
                f"got {self.interval_s:g} s"
            )
        if self.cron is not None:
            self._check_cron()

    def describe(self) -> str:
        """A short text for listings: ``every 3600 s`` or ``cron '5 11 * * *'``."""
        spread = f" +{self.window_s:.0f} s" if self.window_s else ""
        if self.cron is not None:
            return f"cron {self.cron!r}{spread}"
        return f"every {self.interval_s:.0f} s"

    @property
    def period_s(self) -> float:
        """The interval, or the smallest gap between two fire times of the cron."""
        if self.cron is None:
            return self.interval_s
        return self._smallest_gap_s

    @property
    def window_s(self) -> float:
        """Width of the phase window: the jitter, else the period if spread."""
        if self.jitter_s:
            return self.jitter_s
        if self.cron is None or self.spread_cron:
            return self.period_s
        return 0.0

    def phase_s(self, job: str, subject: int) -> float:
        """The subject's stable offset into the window."""
        return stable_fraction(job, subject) * self.window_s

    def next_after(self, job: str, subject: int, after: dt.datetime) -> dt.datetime:
        """The first slot of ``job`` for ``subject`` strictly after ``after``."""
        phase = self.phase_s(job, subject)
        if self.cron is None:
            period, offset = _us(self.interval_s), _us(phase)
            k = (_us_since_epoch(after) - offset) // period + 1
            return _EPOCH + dt.timedelta(microseconds=k * period + offset)
        shift = dt.timedelta(seconds=phase)
        return self._fire_after(after - shift) + shift

    def latest_at_or_before(
        self, job: str, subject: int, now: dt.datetime, since: dt.datetime
    ) -> dt.datetime | None:
        """The newest slot in ``(since, now]``, or ``None`` when there is none.

        However many slots an outage skipped, only the newest is returned:
        the backlog collapses into one run. A cron line is searched, not
        walked, so a week missed costs a few dozen look-ups.
        """
        first = self.next_after(job, subject, since)
        if first > now:
            return None
        if self.cron is None:
            period, offset = _us(self.interval_s), _us(self.phase_s(job, subject))
            k = (_us_since_epoch(now) - offset) // period
            return _EPOCH + dt.timedelta(microseconds=k * period + offset)
        shift = dt.timedelta(seconds=self.phase_s(job, subject))
        return self._newest_fire(first - shift, now - shift) + shift

    def _newest_fire(self, first: dt.datetime, at: dt.datetime) -> dt.datetime:
        """The newest fire time in ``[first, at]``; ``first`` is a fire time."""
        following = self._fire_after(first)
        if following > at:
            return first  # the usual case: one slot since the last run

        # Widen a window back from ``at`` until it holds a fire time...
        gap = dt.timedelta(seconds=self.period_s)
        width, low = gap, first
        while at - width > first:
            if self._fire_after(at - width) <= at:
                low = at - width
                break
            width *= 2
        # ...then halve it: a fire lies in (low, at], none in (high, at].
        high = at
        while high - low > gap:
            middle = low + (high - low) / 2
            if self._fire_after(middle) <= at:
                low = middle
            else:
                high = middle
        return self._fire_after(low)

    def _fire_after(self, instant: dt.datetime) -> dt.datetime:
        fire = self._trigger.get_next_fire_time(None, instant + _EPSILON)
        if fire is None:  # excluded by _check_cron; kept for the type checker
            raise ValueError(f"cron expression {self.cron!r} never fires")
        return fire.astimezone(dt.UTC)  # type: ignore[no-any-return]

    def _check_cron(self) -> None:
        trigger = self._trigger
        if trigger.get_next_fire_time(None, _REFERENCE) is None:
            raise ValueError(f"cron expression {self.cron!r} never fires")

    @cached_property
    def _smallest_gap_s(self) -> float:
        fires = [self._fire_after(_REFERENCE)]
        for _ in range(_GAP_SAMPLE):
            fires.append(self._fire_after(fires[-1]))
        return min((b - a).total_seconds() for a, b in itertools.pairwise(fires))

    @cached_property
    def _trigger(self) -> Any:
        from apscheduler.triggers.cron import CronTrigger

        assert self.cron is not None
        try:
            return CronTrigger.from_crontab(self.cron, timezone=dt.UTC)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None


_EPSILON = dt.timedelta(microseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _us(seconds: float) -> int:
    # Whole microseconds, so a slot computed twice is the very same instant.
    return round(seconds * 1_000_000)


def _us_since_epoch(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // _EPSILON
