"""The ESI request metrics: failed connections timed, retries by reason, series
made at an operation's first request."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from worker.clock import FrozenClock
from worker.errors import ESITransientError
from worker.esi import MemoryCache, esi_client_factory
from worker.settings import Settings

MARKET = "/markets/10000070/orders/"
REGION = 10000070


@pytest.fixture
def esi_settings(emulator: Any) -> Settings:
    return Settings(esi_base_url=emulator.base_url, sso_base_url=emulator.base_url,
                    contact_email="tests@example.invalid", esi_retries=2)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_request_that_never_connected_is_still_timed(esi_settings: Settings) -> None:
    # given ESI where nothing listens, and a clock that takes backoffs at once
    settings = esi_settings.replace(
        esi_base_url="http://127.0.0.1:1", esi_spec_source="bundled"
    )
    client = esi_client_factory(settings=settings, cache=MemoryCache(),
                                clock=FrozenClock())
    before = _value("esi_worker_esi_request_seconds_count", operation="get_status")

    # when the call fails after its retries
    with pytest.raises(ESITransientError):
        client.Status.get_status().result()

    # then each of the three attempts is in the latency histogram
    after = _value("esi_worker_esi_request_seconds_count", operation="get_status")
    assert after - before == 3


def test_page_rewalks_and_transient_retries_are_told_apart(
    esi_settings: Settings, emulator: Any
) -> None:
    # given one 503 on the market, and its snapshot changing after the
    # second page served once
    emulator.configure(
        esi_faults=[{"status": 503, "path_contains": MARKET, "count": 1}],
        esi_mutations=[{"path_contains": MARKET, "bump_after": 2, "bumps": 1}],
    )
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache(),
                                clock=FrozenClock())
    operation = "get_markets_region_id_orders"
    before = {r: _value("esi_worker_esi_retries_total", operation=operation, reason=r)
              for r in ("transient", "pages")}

    # when the pages are read
    client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all").results()

    # then the 503 counts as transient, the new walk as pages
    after = {r: _value("esi_worker_esi_retries_total", operation=operation, reason=r)
             for r in ("transient", "pages")}
    assert after["transient"] - before["transient"] == 1
    assert after["pages"] - before["pages"] == 1


def test_an_operation_s_counters_exist_at_zero_from_its_first_request(
    esi_settings: Settings,
) -> None:
    # given an operation no test has called yet in this process
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache(),
                                clock=FrozenClock())
    operation = "get_universe_types_type_id"

    # when it is called once, successfully
    client.Universe.get_universe_types_type_id(type_id=34).result()

    # then its retry, 304 and cache series are there to count their first
    # event in rate() (None would mean the series does not exist)
    for name, labels in (
        ("esi_worker_esi_retries_total", {"reason": "transient"}),
        ("esi_worker_esi_retries_total", {"reason": "pages"}),
        ("esi_worker_esi_not_modified_total", {}),
        ("esi_worker_cache_hits_total", {}),
        ("esi_worker_cache_revalidations_total", {}),
    ):
        assert REGISTRY.get_sample_value(
            name, {"operation": operation, **labels}) is not None, name
