"""Market orders of the configured regions (public, paged)."""

from __future__ import annotations

from typing import Any

from worker.jobs import JobContext, job

_COLUMNS = (
    "order_id", "type_id", "location_id", "system_id", "is_buy_order", "price",
    "volume_remain", "volume_total", "min_volume", "duration", "issued", "range",
)


@job(every=300, timeout=600, routes=["/markets/{region_id}/orders/"])
def market_orders(ctx: JobContext) -> None:
    """Store the complete order book of each configured region."""
    for region_id in ctx.settings.market_regions:
        operation = ctx.esi.Market.get_markets_region_id_orders
        orders = operation(region_id=region_id, order_type="all").results()
        _replace_region(ctx, region_id, orders)
        ctx.stats.items += len(orders)
        ctx.log.info(
            "stored %d market orders of region %r", len(orders), region_id,
            extra={"region_id": region_id},
        )


def _replace_region(ctx: JobContext, region_id: int, orders: list[dict[str, Any]]) -> None:
    # One transaction: readers see the old book or the new one, never a mix.
    now = ctx.clock.now()
    rows = [(region_id, *(order.get(c) for c in _COLUMNS), now) for order in orders]
    with ctx.connection() as conn, conn.transaction():
        conn.execute("DELETE FROM esi_market_order WHERE region_id = %s", (region_id,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO esi_market_order (region_id, order_id, type_id, location_id,"
                " system_id, is_buy_order, price, volume_remain, volume_total, min_volume,"
                " duration, issued, range, fetched) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
