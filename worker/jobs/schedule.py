"""When runs are due: interval or cron slots, shifted by a stable phase.

Each job and subject (a character, token or corporation) gets a phase
from a hash of both, so a thousand characters on an hourly job are spread
over the hour instead of all asking ESI at its top, and a character keeps
its minute from one restart to the next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# A cron schedule caught up after a long outage is walked slot by slot;
# past this many slots it jumps, since only the newest slot matters.
_MAX_CRON_STEPS = 10_000


def stable_fraction(job: str, subject: int) -> float:
    """A number in [0, 1) fixed by ``job`` and ``subject``, alike in every process."""
    digest = hashlib.sha256(f"{job}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Schedule:
    """An interval or a crontab line (UTC), and the window runs are spread over."""

    interval_s: float = 3600.0
    cron: str | None = None
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("interval must be positive")
        if self.cron is not None:
            self._trigger  # noqa: B018 - parse now, so a bad line fails early

    def describe(self) -> str:
        """A short text for listings: ``every 3600 s`` or ``cron '5 11 * * *'``."""
        spread = f" +{self.window_s:.0f} s" if self.window_s else ""
        if self.cron is not None:
            return f"cron {self.cron!r}{spread}"
        return f"every {self.interval_s:.0f} s"

    @property
    def window_s(self) -> float:
        """Width of the phase window: the jitter, else the period for intervals."""
        if self.jitter_s:
            return self.jitter_s
        return 0.0 if self.cron is not None else self.interval_s

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
        shifted = after - dt.timedelta(seconds=phase)
        fire = self._trigger.get_next_fire_time(None, shifted + _EPSILON)
        return fire.astimezone(dt.UTC) + dt.timedelta(seconds=phase)

    def latest_at_or_before(
        self, job: str, subject: int, now: dt.datetime, since: dt.datetime
    ) -> dt.datetime | None:
        """The newest slot in ``(since, now]``, or ``None`` when there is none.

        However many slots an outage skipped, only the newest is returned:
        the backlog collapses into one run.
        """
        first = self.next_after(job, subject, since)
        if first > now:
            return None
        if self.cron is None:
            period, offset = _us(self.interval_s), _us(self.phase_s(job, subject))
            k = (_us_since_epoch(now) - offset) // period
            return _EPOCH + dt.timedelta(microseconds=k * period + offset)
        return self._walk(job, subject, first, now)

    def _walk(
        self, job: str, subject: int, slot: dt.datetime, now: dt.datetime
    ) -> dt.datetime:
        for _ in range(_MAX_CRON_STEPS):
            following = self.next_after(job, subject, slot)
            if following > now:
                return slot
            slot = following
        # Still behind after many slots: restart the walk one day back.
        return self._walk(
            job, subject, self.next_after(job, subject, now - dt.timedelta(days=1)), now
        )

    @cached_property
    def _trigger(self) -> Any:
        from apscheduler.triggers.cron import CronTrigger

        assert self.cron is not None
        try:
            return CronTrigger.from_crontab(self.cron, timezone=dt.UTC)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None


_EPSILON = dt.timedelta(microseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _us(seconds: float) -> int:
    # Whole microseconds, so a slot computed twice is the very same instant.
    return round(seconds * 1_000_000)


def _us_since_epoch(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // _EPSILON
