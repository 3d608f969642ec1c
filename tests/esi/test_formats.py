"""Dates come back as datetime and date objects, as bravado gives them, fast."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from bravado_core.unmarshal import unmarshal_schema_object

from worker.errors import ESIError
from worker.esi import MemoryCache, esi_client_factory
from worker.esi.formats import plan_for, to_date, to_datetime
from worker.esi.operations import facts

# One call of each shape of date in the bundled spec, answered from recordings.
CALLS = {
    "market orders": lambda c: c.Market.get_markets_region_id_orders(
        region_id=10000070, order_type="all", page=1
    ),
    "market history": lambda c: c.Market.get_markets_region_id_history(
        region_id=10000002, type_id=34
    ),
    "status": lambda c: c.Status.get_status(),
    "killmail": lambda c: c.Killmails.get_killmails_killmail_id_killmail_hash(
        killmail_id=81646519, killmail_hash="8f1450fca8ce97be9b10e106a1257088407ef387"
    ),
    "war": lambda c: c.Wars.get_wars_war_id(war_id=654019),
    "contracts": lambda c: c.Contracts.get_contracts_public_region_id(
        region_id=10000043
    ),
    "corporation history": lambda c: (
        c.Character.get_characters_character_id_corporationhistory(
            character_id=96224792
        )
    ),
}


@pytest.fixture
def bundled(esi_settings):
    """A client on the bundled Swagger spec, as django-esi 7 users had."""
    settings = esi_settings.replace(esi_spec_source="bundled")
    return esi_client_factory(settings=settings, cache=MemoryCache())


def test_dates_are_datetime_objects_by_default(client) -> None:
    # given / when
    orders = client.Market.get_markets_region_id_orders(
        region_id=10000070, order_type="all"
    ).results()
    status = client.Status.get_status().result()

    # then aware datetimes in UTC
    assert all(isinstance(o["issued"], dt.datetime) for o in orders)
    assert orders[0]["issued"].utcoffset() == dt.timedelta(0)
    assert status["start_time"].tzinfo is not None


def test_a_date_field_is_a_date(bundled) -> None:
    # given / when
    history = bundled.Market.get_markets_region_id_history(
        region_id=10000002, type_id=34
    ).result()

    # then
    assert type(history[0]["date"]) is dt.date


def test_dates_stay_text_when_parsing_is_off(esi_settings) -> None:
    # given
    settings = esi_settings.replace(esi_parse_formats=False)
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when
    status = client.Status.get_status().result()

    # then
    assert isinstance(status["start_time"], str)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_answers_decode_as_bravado_decodes_them(bundled, name) -> None:
    # given an answer, and bravado-core's own decoding of the same JSON
    future = CALLS[name](bundled)
    future.request_config.also_return_response = True
    data, response = future.result()
    operation = future.operation
    schema = facts(operation).schema(operation, 200)
    theirs = unmarshal_schema_object(operation.swagger_spec, schema, response.json())

    # then: the same values; bravado also adds None for every missing field
    assert data == _without_added_nones(theirs, data)


def _without_added_nones(theirs, ours):
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return {
            k: _without_added_nones(v, ours.get(k))
            for k, v in theirs.items()
            if k in ours or v is not None
        }
    if isinstance(theirs, list) and isinstance(ours, list):
        return [_without_added_nones(t, o) for t, o in zip(theirs, ours, strict=True)]
    return theirs


def test_cached_answers_keep_their_dates_and_hand_out_copies(client) -> None:
    # given an answer read twice (the second from the kept parse)
    op = client.Market.get_markets_region_id_orders
    first = op(region_id=10000070, order_type="all", page=1).result()
    second = op(region_id=10000070, order_type="all", page=1).result()

    # when one caller changes its copy
    first[0]["issued"] = "changed"
    third = op(region_id=10000070, order_type="all", page=1).result()

    # then the others never see it
    assert isinstance(second[0]["issued"], dt.datetime)
    assert third[0]["issued"] == second[0]["issued"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2026-01-02T03:04:05", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        (
            "2026-01-02T05:04:05+02:00",
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        ),
        (
            "2026-01-02T03:04:05.123456789Z",
            dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        ),
        ("20260102T030405Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    ],
)
def test_date_times_in_any_iso_8601_form_become_aware(text, expected) -> None:
    # given / when
    parsed = to_datetime(text)

    # then
    assert parsed == expected and parsed.tzinfo is not None


def test_values_that_are_not_dates_are_refused_or_left_alone() -> None:
    assert to_datetime(None) is None and to_date(7) == 7
    with pytest.raises(ValueError):
        to_datetime("noon")
    with pytest.raises(ValueError):
        to_date("2026-13-45")


def test_a_list_with_a_missing_null_or_odd_date_converts_item_by_item(bundled) -> None:
    # given the plan of market orders and a page with every odd case
    future = bundled.Market.get_markets_region_id_orders(
        region_id=10000070, order_type="all", page=1
    )
    operation = future.operation
    plan = plan_for(operation.swagger_spec, facts(operation).schema(operation, 200))
    orders = [
        {"issued": "2026-01-02T03:04:05Z"},
        {"issued": None},
        {},
        {"issued": "2026-01-02T03:04:05+01:00"},
    ]

    # when
    converted = plan(copy.deepcopy(orders))

    # then
    assert converted[0]["issued"].hour == 3 and converted[1]["issued"] is None
    assert converted[2] == {}
    assert converted[3]["issued"] == dt.datetime(2026, 1, 2, 2, 4, 5, tzinfo=dt.UTC)


def test_a_date_esi_should_not_send_fails_the_call_naming_it(
    esi_settings, recording_server
) -> None:
    # given a status whose start_time is no date
    recording_server.reply = (
        200,
        "application/json",
        b'{"players": 1, "server_version": "1", "start_time": "noon"}',
    )
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled"
    )
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when / then
    with pytest.raises(ESIError, match="get_status.*noon"):
        client.Status.get_status().result()
