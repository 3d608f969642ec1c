"""ESI's two limiters: the legacy error budget and the token buckets."""

from __future__ import annotations

import collections
import math
import threading

from ..clock import Clock


class ErrorLimiter:
    """100 errors per fixed 60 s window; then 420 everywhere until it ends."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._errors = 0

    def clear(self) -> None:
        """A fresh window on the next request."""
        with self._lock:
            self._window_start, self._errors = 0.0, 0

    def state(
        self, budget: int, window_s: float, rounding: str = "up"
    ) -> tuple[int, int]:
        """(errors left, whole seconds until the window resets, rounded so)."""
        with self._lock:
            now = self._roll(window_s)
            left = self._window_start + window_s - now
            reset_s = math.ceil(left) if rounding == "up" else math.floor(left)
            return max(0, budget - self._errors), max(0, reset_s)

    def record(self, status: int, window_s: float) -> None:
        """Count ``status`` if it is an error (4xx/5xx other than 420 itself).

        Which errors reach here is the caller's choice (the switches).
        """
        if status < 400 or status == 420:
            return
        with self._lock:
            self._roll(window_s)
            self._errors += 1

    def _roll(self, window_s: float) -> float:
        now = self._clock.time()
        if now >= self._window_start + window_s:
            self._window_start, self._errors = now, 0
        return now


class BucketLimiter:
    """Floating-window token buckets keyed by group and caller.

    Each answer's cost comes back to the bucket one window after it was
    spent (ESI.md 3.7): 2xx costs 2, 3xx 1, 4xx 5 (429 free), 5xx nothing.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, str], collections.deque[tuple[float, int]]] = {}

    def clear(self) -> None:
        """Empty every bucket's history."""
        with self._lock:
            self._spent.clear()

    def check(
        self, key: tuple[str, str], max_tokens: int, window_s: float
    ) -> tuple[int, float]:
        """(tokens left, seconds until a success would fit; 0 when it fits now)."""
        with self._lock:
            now = self._clock.time()
            spent = self._expire(key, now, window_s)
            remaining = max_tokens - sum(cost for _, cost in spent)
            if remaining >= 2:
                return remaining, 0.0

            freed, wait_s = remaining, window_s
            for at, cost in spent:
                freed += cost
                if freed >= 2:
                    wait_s = at + window_s - now
                    break
            return remaining, max(1.0, wait_s)

    def spend(
        self, key: tuple[str, str], status: int, max_tokens: int, window_s: float
    ) -> tuple[int, int]:
        """Charge the cost of ``status``; (cost, tokens left afterwards)."""
        cost = bucket_cost(status)
        with self._lock:
            now = self._clock.time()
            spent = self._expire(key, now, window_s)
            if cost:
                spent.append((now, cost))
            remaining = max_tokens - sum(c for _, c in spent)
        return cost, max(0, remaining)

    def _expire(
        self, key: tuple[str, str], now: float, window_s: float
    ) -> collections.deque[tuple[float, int]]:
        spent = self._spent.setdefault(key, collections.deque())
        while spent and spent[0][0] + window_s <= now:
            spent.popleft()
        return spent


def bucket_cost(status: int) -> int:
    """Tokens an answer with ``status`` costs."""
    if status == 429 or status >= 500:
        return 0
    if status >= 400:
        return 5
    return 1 if status >= 300 else 2
