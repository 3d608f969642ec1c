"""Switches for what ESI.md leaves unverified: each plausible answer on demand."""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Iterator

import pytest
import requests

from worker.clock import FrozenClock
from worker.emulator import Emulator, EmulatorConfig
from worker.errors import ConfigurationError

WAR = "/wars/999999999/"  # the killmail group; no such war, so a 404
TYPE = "/latest/universe/types/35/"  # no bucket: the error-limit route
MARKET = "/markets/10000070/orders"


def get(emulator: Emulator, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{emulator.base_url}{path}", timeout=10, **kwargs)


@pytest.fixture
def frozen() -> FrozenClock:
    """11:30 UTC on a fixed day: windows and ESI's day move only when told."""
    return FrozenClock(dt.datetime(2026, 3, 2, 11, 30, 0, 250_000, tzinfo=dt.UTC))


@pytest.fixture
def clocked(frozen: FrozenClock) -> Iterator[Emulator]:
    """An emulator of its own on the frozen clock."""
    with Emulator(EmulatorConfig(), clock=frozen) as emulator:
        yield emulator


# -- the error budget -----------------------------------------------------------


@pytest.mark.parametrize("counts", [True, False])
def test_bucket_route_errors_count_against_the_budget_as_switched(
    emulator: Emulator, counts: bool
) -> None:
    # given
    emulator.configure(bucket_errors_count=counts, error_budget=10)

    # when a bucket-limited route answers 404 twice
    misses = [get(emulator, WAR) for _ in range(2)]
    after = get(emulator, TYPE)

    # then the misses carry only bucket headers; the budget shows them or not
    assert [m.status_code for m in misses] == [404, 404]
    assert all("X-Esi-Error-Limit-Remain" not in m.headers for m in misses)
    assert after.headers["X-Esi-Error-Limit-Remain"] == ("8" if counts else "10")


@pytest.mark.parametrize("counts", [True, False])
def test_429s_count_as_errors_as_switched(emulator: Emulator, counts: bool) -> None:
    # given
    emulator.configure(
        errors_count_429=counts,
        esi_faults=[{"status": 429, "path_contains": "/types/35/", "count": 3}],
    )

    # when
    limited = [get(emulator, TYPE) for _ in range(3)]

    # then
    assert [r.status_code for r in limited] == [429] * 3
    assert limited[-1].headers["X-Esi-Error-Limit-Remain"] == (
        "97" if counts else "100"
    )


def test_an_exhausted_budget_answers_420_on_bucket_routes_too(emulator) -> None:
    # given
    emulator.configure(error_budget=2, error_window_s=600)
    get(emulator, TYPE.replace("35", "999999999"))
    get(emulator, TYPE.replace("35", "999999999"))

    # when
    answer = get(emulator, "/status")

    # then: the 420 carries the budget headers, not the bucket's
    assert answer.status_code == 420
    assert answer.headers["X-Esi-Error-Limit-Remain"] == "0"
    assert "X-Ratelimit-Group" not in answer.headers


@pytest.mark.parametrize(("rounding", "expected"), [("up", "50"), ("down", "49")])
def test_error_reset_rounds_as_switched(
    clocked: Emulator, frozen: FrozenClock, rounding: str, expected: str
) -> None:
    # given a window 49.5 s from its end
    clocked.configure(reset_rounding=rounding)
    get(clocked, TYPE)
    frozen.advance(10.5)

    # when
    answer = get(clocked, TYPE)

    # then
    assert answer.headers["X-Esi-Error-Limit-Reset"] == expected


# -- buckets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counted", "remaining"), [("after", "598"), ("before", "600")]
)
def test_ratelimit_remaining_counts_the_cost_as_switched(
    emulator: Emulator, counted: str, remaining: str
) -> None:
    # given
    emulator.configure(ratelimit_remaining=counted)

    # when
    answer = get(emulator, "/status")

    # then
    assert answer.headers["X-Ratelimit-Used"] == "2"
    assert answer.headers["X-Ratelimit-Remaining"] == remaining


def test_bucket_costs_5_for_a_4xx_and_nothing_for_a_5xx(emulator: Emulator) -> None:
    # given
    emulator.configure(
        esi_faults=[{"status": 503, "path_contains": "/wars/", "count": 1}]
    )

    # when
    unavailable = get(emulator, WAR)
    missing = get(emulator, WAR)

    # then
    assert (unavailable.status_code, missing.status_code) == (503, 404)
    assert unavailable.headers["X-Ratelimit-Used"] == "0"
    assert missing.headers["X-Ratelimit-Used"] == "5"
    assert missing.headers["X-Ratelimit-Remaining"] == "3595"


def test_bucket_tokens_come_back_one_window_after_they_were_spent(
    clocked: Emulator, frozen: FrozenClock
) -> None:
    # given a 10-token bucket on a 60 s floating window, spent 4 then 4
    clocked.configure(bucket_overrides={"status": "10/1m"})
    get(clocked, "/status")
    get(clocked, "/status")
    frozen.advance(30)
    get(clocked, "/status")
    full = get(clocked, "/status")

    # when the first two costs have come back, and not yet the last two
    frozen.advance(31)
    later = get(clocked, "/status")

    # then
    assert full.headers["X-Ratelimit-Remaining"] == "2"
    assert later.status_code == 200
    assert later.headers["X-Ratelimit-Remaining"] == "4"


@pytest.mark.parametrize("rounding", ["up", "down"])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_written_as_switched(
    clocked: Emulator, frozen: FrozenClock, rounding: str, form: str
) -> None:
    # given a bucket whose first cost comes back 30.25 s from the refusal
    clocked.configure(
        bucket_overrides={"status": "2/1m"},
        reset_rounding=rounding,
        retry_after_format=form,
    )
    get(clocked, "/status")
    frozen.advance(29.75)

    # when
    refused = get(clocked, "/status")

    # then
    value = refused.headers["Retry-After"]
    assert refused.status_code == 429
    wait = 31 if rounding == "up" else 30
    if form == "seconds":
        assert value == str(wait)
    else:
        until = email.utils.parsedate_to_datetime(value).timestamp()
        assert until == pytest.approx(frozen.time() + 30.25, abs=1.0)


def test_a_game_side_429_comes_without_limit_headers(emulator: Emulator) -> None:
    # given
    emulator.configure(
        esi_faults=[
            {"status": 429, "path_contains": "/status/", "limit_headers": False},
            {"status": 429, "path_contains": "/types/35/", "limit_headers": False},
        ]
    )

    # when
    bucket_route = get(emulator, "/status")
    plain_route = get(emulator, TYPE)

    # then
    for answer in (bucket_route, plain_route):
        assert answer.status_code == 429
        assert not [
            h
            for h in answer.headers
            if h.lower().startswith(("x-ratelimit", "x-esi-error"))
        ]
        assert "Retry-After" not in answer.headers


# -- pages -------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["404", "empty"])
def test_past_the_last_page_answers_as_switched(
    emulator: Emulator, answer: str
) -> None:
    # given
    emulator.configure(past_last_page=answer)

    # when
    past = get(emulator, f"{MARKET}?order_type=all&page=99")

    # then
    if answer == "404":
        assert past.status_code == 404
    else:
        assert past.status_code == 200 and past.json() == []
        assert past.headers["X-Pages"] == "3"


def test_a_mutation_can_shrink_the_pages_of_the_next_snapshot(emulator) -> None:
    # given three pages in the first snapshot, two in the next
    emulator.configure(
        esi_mutations=[{"path_contains": MARKET, "pages": [3, 2], "bump_after": 1}]
    )

    # when
    first = get(emulator, f"{MARKET}?order_type=all&page=1")
    second = get(emulator, f"{MARKET}?order_type=all&page=1")
    gone = get(emulator, f"{MARKET}?order_type=all&page=3")

    # then
    assert (first.headers["X-Pages"], second.headers["X-Pages"]) == ("3", "2")
    assert first.headers["Last-Modified"] != second.headers["Last-Modified"]
    assert gone.status_code == 404


# -- languages, dates, warnings, broken bodies ---------------------------------


@pytest.mark.parametrize("answer", ["400", "en"])
def test_an_unknown_language_answers_as_switched(emulator, answer: str) -> None:
    # given
    emulator.configure(unknown_language=answer)

    # when
    reply = get(emulator, "/universe/types/35", headers={"Accept-Language": "xx"})

    # then
    if answer == "400":
        assert reply.status_code == 400
    else:
        assert reply.status_code == 200
        assert reply.headers["Content-Language"] == "en"


@pytest.mark.parametrize("status", [400, 422, None])
def test_a_future_or_too_old_date_answers_as_switched(emulator, status) -> None:
    # given
    emulator.configure(bad_compatibility_date=status)

    # when
    future = get(emulator, "/status", headers={"X-Compatibility-Date": "2999-01-01"})
    old = get(emulator, "/status", headers={"X-Compatibility-Date": "2001-01-01"})
    garbage = get(emulator, "/status", headers={"X-Compatibility-Date": "yesterday"})

    # then: refused with the status, or clamped to a published date
    if status is None:
        assert (future.status_code, old.status_code) == (200, 200)
        assert future.headers["X-Compatibility-Date"] == "2025-12-16"
        assert old.headers["X-Compatibility-Date"] == "2020-01-01"
    else:
        assert (future.status_code, old.status_code) == (status, status)
    assert garbage.status_code == (status or 400)


def test_esi_day_flips_at_11_utc_not_midnight(frozen: FrozenClock) -> None:
    # given a date published today, asked at 10:59 and at 11:00 UTC
    frozen.advance(-(30 * 60 + 1.25))  # 10:59:59
    with Emulator(
        EmulatorConfig(compatibility_dates=("2026-03-02", "2020-01-01")), clock=frozen
    ) as emulator:
        headers = {"X-Compatibility-Date": "2026-03-02"}

        # when
        early = get(emulator, "/status", headers=headers)
        frozen.advance(1)
        on_time = get(emulator, "/status", headers=headers)

    # then
    assert early.status_code == 400
    assert on_time.status_code == 200
    assert on_time.headers["X-Compatibility-Date"] == "2026-03-02"


def test_warning_headers_mark_old_route_versions_when_switched_on(emulator) -> None:
    # given
    emulator.configure(warning_headers=True)

    # when
    legacy = get(emulator, "/legacy/status/")
    numbered = get(emulator, "/v1/status/")
    latest = get(emulator, "/latest/status/")

    # then
    assert legacy.headers["Warning"].startswith("299")
    assert numbered.headers["Warning"].startswith("199")
    assert "Warning" not in latest.headers


def test_a_body_can_be_cut_off_mid_way(emulator: Emulator) -> None:
    # given
    emulator.configure(
        esi_faults=[{"status": 200, "path_contains": "/status/", "cut_body": True}]
    )

    # when / then
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(emulator, "/status")
    assert get(emulator, "/status").status_code == 200


def test_switch_values_are_checked(emulator: Emulator) -> None:
    for bad in (
        {"past_last_page": "maybe"},
        {"reset_rounding": "sideways"},
        {"bad_compatibility_date": 200},
        {"esi_mutations": [{"path_contains": "/x/", "pages": [0]}]},
        {"esi_faults": [{"status": 429, "limit_headers": "no"}]},
    ):
        with pytest.raises(ConfigurationError):
            emulator.configure(**bad)
