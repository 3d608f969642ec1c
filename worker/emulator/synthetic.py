"""SYNTHETIC answers: routes the emulator serves with no recording behind them.

Two routes are answered here (see ``data/README.md``):

* Market orders of region 19000001, which does not exist in EVE: 50 pages
  of 1,000 orders shaped like ``GET /markets/{region_id}/orders``,
  generated once per process so paging speed can be measured.
* A character's corporation roles, ``GET /characters/{character_id}/roles``:
  no public project published a recording of it, so the roles come from
  the ``character_roles`` switch (none by default).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable

from .operations import load_operation_table
from .recordings import Snapshot

SYNTHETIC_REGION = "19000001"
ROLES_OPERATION = "get_characters_character_id_roles"
# A Director holds every role in game, and ESI lets one through any
# route's ``x-required-roles``.
DIRECTOR = "Director"
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


def roles_snapshot(roles: Iterable[str]) -> Snapshot:
    """The one-page answer of the roles route for a character holding ``roles``.

    Only ``roles`` is filled: roles held at a base, at HQ or elsewhere
    never open a corporate route, so the emulator has no switch for them.
    """
    body = {
        "roles": list(roles),
        "roles_at_base": [],
        "roles_at_hq": [],
        "roles_at_other": [],
    }
    page = SyntheticPage(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    return Snapshot({1: page}, 1, 0.0)  # type: ignore[dict-item]


def holds_required_role(held: Iterable[str], required: Iterable[str]) -> bool:
    """Whether ``held`` opens a route needing any one of ``required``."""
    have = set(held)
    return DIRECTOR in have or not have.isdisjoint(required)


@functools.lru_cache(maxsize=1)
def corporation_roles() -> frozenset[str]:
    """Every role name ESI knows: the enum of the roles route in the spec."""
    template = load_operation_table().by_id[ROLES_OPERATION].template
    spec = load_operation_table().swagger["paths"][template]["get"]
    schema = spec["responses"]["200"]["schema"]
    return frozenset(schema["properties"]["roles"]["items"]["enum"])


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
