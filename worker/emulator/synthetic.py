"""SYNTHETIC market orders: a 50-page region for benchmarks, no recording behind it.

Region 19000001 does not exist in EVE. Its orders (50 pages of 1,000,
shaped like ``GET /markets/{region_id}/orders``) are generated once per
process so that paging speed can be measured against a large result.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from .recordings import Snapshot

SYNTHETIC_REGION = "19000001"
PAGES = 50
PER_PAGE = 1000


@dataclasses.dataclass
class SyntheticPage:
    """A generated page standing where a recording would."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def market_snapshot() -> Snapshot:
    """The generated pages of the synthetic region, built once."""
    pages = {n: SyntheticPage(_page(n)) for n in range(1, PAGES + 1)}
    return Snapshot(pages, PAGES, 0.0)  # type: ignore[arg-type]


def _page(number: int) -> bytes:
    orders = []
    for i in range(PER_PAGE):
        n = (number - 1) * PER_PAGE + i
        orders.append(
            {
                "duration": 90,
                "is_buy_order": n % 2 == 0,
                "issued": "2026-01-02T03:04:05Z",
                "location_id": 60003760,
                "min_volume": 1,
                "order_id": 7_000_000_000 + n,
                "price": 4.25 + n % 97,
                "range": "region",
                "system_id": 30000142,
                "type_id": 34 + n % 50,
                "volume_remain": 1000 + n % 13,
                "volume_total": 5000,
            }
        )
    return json.dumps(orders, separators=(",", ":")).encode("utf-8")
