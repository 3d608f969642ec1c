"""Clocks, injected wherever expiry or schedules are computed."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the worker asks of a clock."""

    def now(self) -> dt.datetime:
        """The current instant, UTC-aware."""

    def time(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """A monotonic reading for durations."""

    def sleep(self, seconds: float) -> None:
        """Wait for ``seconds``."""


class SystemClock:
    """The real clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class FrozenClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime.now(dt.UTC)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def monotonic(self) -> float:
        return self._now.timestamp()

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)


SYSTEM_CLOCK = SystemClock()
