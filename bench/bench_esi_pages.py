"""results() over 50 pages of 1,000 orders at 50 ms latency, 8 pages at a time.

Prints the time taken against the ideal, latency x (1 + 49 / 8): page 1
alone, then the other 49 pages eight at a time. Target: >= 80 % of ideal.
The route is the emulator's SYNTHETIC region 19000001.
"""

from __future__ import annotations

import math
import tempfile
import time

from bench_esi_emulator import emulator_process

from worker.esi import MemoryCache, esi_client_factory
from worker.settings import Settings

LATENCY_S = 0.05
CONCURRENCY = 8
ROUNDS = 5


def main() -> None:
    with emulator_process(esi_latency_s=LATENCY_S) as base:
        settings = Settings(
            esi_base_url=base,
            sso_base_url=base,
            data_dir=tempfile.mkdtemp(),
            esi_page_concurrency=CONCURRENCY,
            contact_email="bench@example.invalid",
        )
        client = esi_client_factory(settings=settings, cache=MemoryCache())
        op = client.Market.get_markets_region_id_orders
        op(region_id=19000001, order_type="all").results()  # warm connections

        ideal = LATENCY_S * (1 + 49 / CONCURRENCY)
        floor = LATENCY_S * (1 + math.ceil(49 / CONCURRENCY))
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            orders = op(region_id=19000001, order_type="all").results(ignore_cache=True)
            best = min(best, time.perf_counter() - started)
        per_item_us = (best - ideal) / len(orders) * 1e6
        print(f"results(): {len(orders)} orders in 50 pages, best of {ROUNDS}")
        print(f"  took     {best * 1000:8.1f} ms")
        print(f"  ideal    {ideal * 1000:8.1f} ms  (latency x (1 + 49/8))")
        # 49 pages 8 at a time take 7 round trips, not 6.125: no client
        # can beat this floor, so the target's ideal is never reached.
        print(f"  floor    {floor * 1000:8.1f} ms  (latency x (1 + ceil(49/8)))")
        print(f"  ratio    {ideal / best * 100:8.1f} %  (target >= 80 %)")
        print(f"  overhead {max(0.0, per_item_us):8.2f} us per order beyond ideal")


if __name__ == "__main__":
    main()
