"""Cache and limit gauges, read from this process's caches and limiters.

A gauge set only when an ESI answer arrives keeps its last value while no
answer does: an error budget of 15 would read 15 long after ESI's window
reset. These gauges are therefore read from the state itself, which
decays with time: at scrape time in a process serving its own
``/metrics``, and every :data:`REFRESH_S` in a worker process of a
process group, whose metric files the group's endpoint adds up.

A process that has made no ESI call exports no limit gauge at all.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..clock import SYSTEM_CLOCK, Clock
from . import esi

if TYPE_CHECKING:
    from ..esi.cache import RedisCache

log = logging.getLogger(__name__)

REFRESH_S = 5.0
SHARED_CACHE_EVERY_S = 60.0

_groups_lock = threading.Lock()
_groups_seen: set[str] = set()


def refresh_process_gauges() -> None:
    """Set the memory-cache and limit gauges from this process's state."""
    _refresh_memory_caches()
    _refresh_limits()


def start_refreshing(every_s: float = REFRESH_S) -> threading.Event:
    """Refresh the gauges every ``every_s`` from a daemon thread.

    :returns: an event that stops the thread when set.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                refresh_process_gauges()
            except Exception as exc:  # noqa: BLE001 (the worker goes on)
                log.warning("gauges not refreshed: %s", type(exc).__name__)

    threading.Thread(target=loop, name="esi-worker-gauges", daemon=True).start()
    log.debug("refreshing the cache and limit gauges every %.1f s", every_s)
    return stop


class SharedCacheProbe:
    """Measures the shared Redis cache for the scheduler's endpoint.

    Every process uses the one Redis cache, so only the scheduler (or
    ``run``) reports it; a ``SCAN`` of its keys runs at most once per
    ``every_s``, however often Prometheus scrapes.
    """

    def __init__(
        self,
        cache: RedisCache,
        *,
        clock: Clock = SYSTEM_CLOCK,
        every_s: float = SHARED_CACHE_EVERY_S,
    ) -> None:
        self._cache = cache
        self._clock = clock
        self._every_s = every_s
        self._at: float | None = None

    def refresh(self) -> None:
        """Count the shared cache's entries and bytes, if it is time to."""
        now = self._clock.time()
        if self._at is not None and now - self._at < self._every_s:
            return
        self._at = now
        try:
            usage = self._cache.usage()
        except Exception as exc:  # noqa: BLE001 (Redis down: keep the last numbers)
            log.warning("shared cache not measured: %s", type(exc).__name__)
            return
        if usage is None:
            log.warning("shared cache too large to count; its gauges are stale")
            return
        esi.CACHE_ENTRIES.labels("redis").set(usage[0])
        esi.CACHE_BYTES.labels("redis").set(usage[1])


def _refresh_memory_caches() -> None:
    from ..esi.cache import MemoryCache, shared_caches

    caches = [c for c in shared_caches() if isinstance(c, MemoryCache)]
    if caches:
        esi.CACHE_ENTRIES.labels("memory").set(sum(len(c) for c in caches))
        esi.CACHE_BYTES.labels("memory").set(sum(c.bytes_used for c in caches))


def _refresh_limits() -> None:
    from ..esi.limits import shared_limiters

    remaining: dict[str, int] = {}
    reset_s: dict[str, float] = {}
    fill: dict[str, float] = {}
    for limiter, clock in shared_limiters():
        levels = limiter.levels(clock)
        kind = "shared" if levels.shared else "process"
        if levels.remaining is not None and levels.reset_s is not None:
            remaining[kind] = min(
                remaining.get(kind, levels.remaining), levels.remaining
            )
            reset_s[kind] = max(reset_s.get(kind, 0.0), levels.reset_s)
        for group, share in levels.fill.items():
            fill[group] = max(fill.get(group, 0.0), share)

    for kind, value in remaining.items():
        esi.ERROR_LIMIT_REMAINING.labels(kind).set(value)
        esi.ERROR_LIMIT_RESET_SECONDS.labels(kind).set(reset_s[kind])
    # A group once shown stays, at 0 once its window has passed: series
    # cannot be removed from a process group's files.
    with _groups_lock:
        _groups_seen.update(fill)
        groups = sorted(_groups_seen)
    for group in groups:
        esi.RATE_LIMIT_FILL.labels(group).set(fill.get(group, 0.0))
