"""Cache hits through the client: a small object in-process and via Redis, a 1,000-item page.

Targets: < 20 us in-process, < 150 us through Redis, < 1 ms for a cached
page of 1,000 orders (the emulator's SYNTHETIC region 19000001).
"""

from __future__ import annotations

import tempfile
import time

from bench_esi_emulator import emulator_process

from worker.esi import MemoryCache, RedisCache, esi_client_factory
from worker.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
N = 2000


def per_call_us(call, n: int = N) -> float:
    call()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def main() -> None:
    with emulator_process(cache_ttl_s=3600) as base:
        settings = Settings(esi_base_url=base, data_dir=tempfile.mkdtemp())
        memory = esi_client_factory(settings=settings, cache=MemoryCache())
        shared = esi_client_factory(
            settings=settings, cache=RedisCache(REDIS_URL, prefix="esi-bench:")
        )
        small = memory.Universe.get_universe_types_type_id(type_id=35)
        small_redis = shared.Universe.get_universe_types_type_id(type_id=35)
        page = memory.Market.get_markets_region_id_orders(
            region_id=19000001, order_type="all", page=1
        )
        print("cache hit, answered without a request:")
        print(f"  small object, in-process  {per_call_us(small.result):8.1f} us"
              "  (target < 20 us)")
        print(f"  small object, Redis       {per_call_us(small_redis.result):8.1f} us"
              "  (target < 150 us)")
        print(f"  1,000-order page          {per_call_us(page.result, 200):8.1f} us"
              "  (target < 1000 us)")

        def called_anew() -> None:
            memory.Universe.get_universe_types_type_id(type_id=35).result()

        # A caller that builds the future every time also pays bravado's
        # parameter marshalling and validation: shown, no target.
        print(f"  small object, new future  {per_call_us(called_anew):8.1f} us"
              "  (reference, no target)")


if __name__ == "__main__":
    main()
