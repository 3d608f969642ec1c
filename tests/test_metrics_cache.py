"""The cache gauges: entries and bytes of the memory cache and of the shared Redis one."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from prometheus_client import REGISTRY

from worker.clock import FrozenClock
from worker.esi.cache import CachedResponse, RedisCache
from worker.metrics.refresh import SharedCacheProbe

REDIS_URL = "redis://127.0.0.1:6379/9"


def _gauge(name: str, backend: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"backend": backend})


def test_a_cached_esi_answer_shows_in_the_memory_cache_gauges(runtime: Any) -> None:
    # given an ESI answer the process-wide memory cache keeps
    from worker.metrics.server import process_registry

    client = runtime.esi.client
    client.Universe.get_universe_types_type_id(type_id=35).result()

    # when the process's endpoint is scraped (that refreshes the gauges)
    list(process_registry().collect())

    # then the cache's entries and bytes are above zero
    assert (_gauge("esi_worker_cache_entries", "memory") or 0) >= 1
    assert (_gauge("esi_worker_cache_bytes", "memory") or 0) > 100


def test_the_shared_cache_is_measured_at_most_once_a_minute() -> None:
    # given a Redis cache with two entries under its own prefix
    cache = RedisCache(REDIS_URL, prefix=f"esi-worker-test:{uuid.uuid4().hex}:")
    clock = FrozenClock(dt.datetime(2026, 3, 2, 14, 0, tzinfo=dt.UTC))
    probe = SharedCacheProbe(cache, clock=clock, every_s=60)
    entry = CachedResponse(200, {"ETag": '"a"'}, '{"x": 1}', expires_at=0.0)
    try:
        for key in ("one", "two"):
            cache.set(key, entry, ttl_s=300)

        # when probed, a third entry is added, probed again at once and
        # once more a minute later
        probe.refresh()
        first = _gauge("esi_worker_cache_entries", "redis")
        cache.set("three", entry, ttl_s=300)
        probe.refresh()
        soon = _gauge("esi_worker_cache_entries", "redis")
        clock.advance(61)
        probe.refresh()
        later = _gauge("esi_worker_cache_entries", "redis")
    finally:
        for key in ("one", "two", "three"):
            cache.delete(key)
        cache.close()

    # then the count follows the cache, but the SCAN ran once per minute
    assert (first, soon, later) == (2, 2, 3)
    assert (_gauge("esi_worker_cache_bytes", "redis") or 0) >= 3 * len(entry.to_json())


def test_redis_usage_gives_up_rather_than_undercount() -> None:
    # given more entries than the probe may count
    cache = RedisCache(REDIS_URL, prefix=f"esi-worker-test:{uuid.uuid4().hex}:")
    entry = CachedResponse(200, {}, "{}", expires_at=0.0)
    try:
        for n in range(5):
            cache.set(str(n), entry, ttl_s=300)

        # when counted with a limit of 3, then there is no number at all
        assert cache.usage(max_keys=3) is None
        assert cache.usage() == (5, 5 * len(entry.to_json()))
    finally:
        for n in range(5):
            cache.delete(str(n))
        cache.close()
