"""The compatibility date setting follows ESI's calendar: 11:00 UTC, 2020-01-01."""

from __future__ import annotations

import datetime as dt

import pytest

from worker.errors import ConfigurationError
from worker.esi import MemoryCache, esi_client_factory
from worker.settings import Settings, esi_today


@pytest.mark.parametrize(
    ("now", "today"),
    [
        (dt.datetime(2026, 3, 2, 10, 59, 59, tzinfo=dt.UTC), dt.date(2026, 3, 1)),
        (dt.datetime(2026, 3, 2, 11, 0, 0, tzinfo=dt.UTC), dt.date(2026, 3, 2)),
        (
            dt.datetime(2026, 3, 2, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.date(2026, 3, 1),
        ),
    ],
)
def test_esi_day_starts_at_11_utc(now, today) -> None:
    assert esi_today(now) == today


def test_the_newest_date_esi_takes_is_accepted_and_the_next_refused() -> None:
    # given ESI's today, whatever the hour this test runs at
    today = esi_today(dt.datetime.now(dt.UTC))

    # when / then
    assert Settings.from_env(esi_compatibility_date=today.isoformat())
    tomorrow = (today + dt.timedelta(days=1)).isoformat()
    with pytest.raises(ConfigurationError, match="11:00 UTC"):
        Settings.from_env(esi_compatibility_date=tomorrow)


@pytest.mark.parametrize("date", ["2019-12-31", "1999-01-01"])
def test_dates_before_esis_oldest_are_refused(date) -> None:
    with pytest.raises(ConfigurationError, match="oldest"):
        Settings.from_env(esi_compatibility_date=date)


def test_the_oldest_date_is_accepted_and_reaches_esi(emulator, esi_settings) -> None:
    # given
    settings = esi_settings.replace(esi_compatibility_date="2020-01-01")
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when
    _data, response = client.Status.get_status(
        _request_options={"also_return_response": True}
    ).result()

    # then
    assert response.headers["X-Compatibility-Date"] == "2020-01-01"


@pytest.mark.parametrize("answer", [400, 422, None])
def test_every_way_esi_may_treat_a_bad_date_leaves_valid_calls_working(
    emulator, esi_settings, answer
) -> None:
    # given: how ESI answers a bad date is unverified; ours is valid anyway
    emulator.configure(bad_compatibility_date=answer)
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # when / then
    assert "players" in client.Status.get_status().result()


def test_the_route_planner_answers_through_todays_spec(emulator, esi_settings) -> None:
    # given a client on the live OpenAPI spec, at a date after 2025-09-30
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # when
    future = client.Routes.post_route_origin_destination(
        origin=30000142,
        destination=30002187,
        body={"preference": "Safer"},
        _request_options={"also_return_response": True},
    )
    found, response = future.result()

    # then the recorded route, with the route's own compatibility date
    assert found["route"][0] == 30000142 and found["route"][-1] == 30002187
    assert len(found["route"]) == 46
    assert response.headers["X-Compatibility-Date"] == "2025-09-30"
