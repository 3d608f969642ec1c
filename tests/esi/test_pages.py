"""Paged results stay one snapshot; cursor routes are walked both ways."""

from __future__ import annotations

import pytest

from worker.errors import ESIError, PagesInconsistentError
from worker.esi import MemoryCache, esi_client_factory

REGION = 10000070
MARKET = "/markets/10000070/orders"


def generations(orders: list[dict]) -> set[int]:
    """The emulator generations the orders were stamped with."""
    return {order["emulator_generation"] for order in orders}


def fresh_walk(esi_settings) -> list[dict]:
    """What an uncached client reads at this moment."""
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache())
    return client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all").results()


def test_304_on_one_page_beside_200s_never_yields_mixed_data(
    client, clock, emulator, esi_settings
) -> None:
    # given three cached pages, then a new snapshot in which ESI answers a
    # revalidated page 2 with 304 although pages 1 and 3 changed
    emulator.configure(
        esi_mutations=[
            {"path_contains": MARKET, "stable_pages": [2], "bump_after": 3}
        ]
    )
    op = client.Market.get_markets_region_id_orders
    first = op(region_id=REGION, order_type="all").results()
    clock.advance(3600)

    # when the stale pages are read again
    future = op(region_id=REGION, order_type="all")
    orders = future.results()

    # then every order comes from the new snapshot: page 2 was fetched again
    assert generations(first) == {0}
    assert generations(orders) == {1}
    assert len(orders) == len(first)
    assert [r.status_code for r in future.responses] == [200, 200, 200]
    statuses = emulator.stats()["esi_requests_by_status"]
    assert statuses[304] == 1


def test_pages_of_two_snapshots_are_fetched_again(
    client, emulator, esi_settings
) -> None:
    # given a snapshot that expires after the second page served
    emulator.configure(
        esi_mutations=[{"path_contains": MARKET, "bump_after": 2, "bumps": 1}]
    )

    # when
    orders = client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all").results()

    # then the answer is the new snapshot whole, equal to a fresh read
    assert generations(orders) == {1}
    assert orders == fresh_walk(esi_settings)
    assert emulator.stats()["esi_requests"] >= 6


def test_pages_that_never_agree_raise_after_bounded_walks(
    client, emulator, esi_settings
) -> None:
    # given a snapshot that changes after every second page served
    emulator.configure(
        esi_mutations=[{"path_contains": MARKET, "bump_after": 2, "bumps": 1000}]
    )

    # when / then
    with pytest.raises(PagesInconsistentError) as caught:
        client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all").results()
    assert "get_markets_region_id_orders" in str(caught.value)
    walks = esi_settings.esi_page_consistency_retries + 1
    assert emulator.stats()["esi_requests"] <= walks * 3 + 3


def test_all_pages_304_is_an_unchanged_result(client, clock, emulator) -> None:
    # given three cached pages gone stale while ESI's snapshot stayed
    op = client.Market.get_markets_region_id_orders
    first = op(region_id=REGION, order_type="all").results()
    clock.advance(3600)

    # when
    future = op(region_id=REGION, order_type="all")
    orders = future.results()

    # then
    assert orders == first
    assert future.not_modified is True
    assert emulator.stats()["esi_requests_by_status"] == {200: 3, 304: 3}


def test_cursor_backfill_returns_every_record_oldest_first_and_an_after_token(
    client, emulator
) -> None:
    # given 250 records behind a cursor route
    emulator.configure(cursor_records=250)
    op = client.Corporation.get_corporations_corporation_id_projects

    # when
    page = op(corporation_id=98000001).results_cursor()

    # then
    ids = [record["id"] for record in page.records]
    assert ids == sorted(ids) and len(ids) == 250 == len(set(ids))
    assert page.after is not None


def test_cursor_after_token_returns_only_newer_records(client, emulator) -> None:
    # given a backfill, then ten more records
    emulator.configure(cursor_records=120)
    op = client.Corporation.get_corporations_corporation_id_projects
    backfill = op(corporation_id=98000001).results_cursor()
    emulator.configure(cursor_records=130)

    # when
    update = op(corporation_id=98000001).results_cursor(after=backfill.after)
    nothing = op(corporation_id=98000001).results_cursor(after=update.after)

    # then
    newest = backfill.records[-1]["id"]
    assert [r["id"] for r in update.records] == list(range(newest + 1, newest + 11))
    assert nothing.records == [] and nothing.after == update.after


def test_cursor_walk_on_a_page_numbered_route_is_refused(client) -> None:
    # given / when / then
    with pytest.raises(TypeError):
        client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all").results_cursor()


# -- X-Pages changing under the walk (finding 6), and bogus (finding 20) -------


@pytest.mark.parametrize("past_last", ["404", "empty"])
@pytest.mark.parametrize("counts", [[3, 2], [2, 3]])
def test_pages_count_changing_mid_walk_is_walked_again(
    emulator, esi_settings, past_last, counts
) -> None:
    # given a snapshot whose successor has another number of pages, and an
    # ESI answering past the last page one way or the other
    emulator.configure(
        past_last_page=past_last,
        esi_mutations=[{"path_contains": MARKET, "pages": counts, "bump_after": 1}],
    )
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # when
    future = client.Market.get_markets_region_id_orders(
        region_id=REGION, order_type="all"
    )
    orders = future.results()

    # then one snapshot, whole: the newer one
    assert generations(orders) == {1}
    assert len(future.responses) == counts[1]
    assert {r.headers["X-Pages"] for r in future.responses} == {str(counts[1])}


def test_a_page_that_stays_gone_raises_pages_inconsistent(emulator, esi_settings):
    # given page 3 missing from every snapshot ESI serves
    emulator.configure(
        esi_faults=[{"status": 404, "path_contains": MARKET, "page": 3, "count": 100}]
    )
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # when / then
    with pytest.raises(PagesInconsistentError) as caught:
        client.Market.get_markets_region_id_orders(
            region_id=REGION, order_type="all"
        ).results()
    assert "404" in str(caught.value)


def test_more_pages_than_the_setting_are_refused_before_walking(
    emulator, esi_settings
) -> None:
    # given 50 pages and a ceiling of 10
    settings = esi_settings.replace(esi_max_pages=10)
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when / then
    with pytest.raises(ESIError) as caught:
        client.Market.get_markets_region_id_orders(
            region_id=19000001, order_type="all"
        ).results()
    assert "X-Pages 50" in str(caught.value) and "esi_max_pages" in str(caught.value)
    assert emulator.stats()["esi_requests"] == 1


def test_a_bogus_x_pages_is_not_walked(esi_settings, recording_server) -> None:
    # given a server claiming 100,000 pages
    recording_server.reply = (200, "application/json", b"[1]")
    recording_server.headers = {"X-Pages": "100000"}
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled"
    )
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when / then
    with pytest.raises(ESIError):
        client.Universe.get_universe_types().results()
    assert len(recording_server.requests) == 1
