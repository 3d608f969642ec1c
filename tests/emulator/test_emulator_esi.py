"""The emulator's ESI replay, over real HTTP."""

from __future__ import annotations

import email.utils

import pytest
import requests

from worker.emulator import Emulator

MARKET = "/latest/markets/10000070/orders/"
ASSETS_SCOPE = "esi-assets.read_assets.v1"


def _token(
    emulator: Emulator, scopes: list[str], character_id: int = 2112000001
) -> str:
    grant = emulator.create_grant(character_id, "Test Pilot One", scopes)
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    return answer.json()["access_token"]


def _seconds(text: str) -> float:
    return email.utils.parsedate_to_datetime(text).timestamp()


@pytest.mark.parametrize(
    "path", ["/latest/status/", "/v2/status/", "/status", "/status/", "/dev/status"]
)
def test_status_answers_on_versioned_and_unversioned_paths(
    emulator: Emulator, path: str
) -> None:
    # when
    answer = requests.get(emulator.base_url + path, timeout=5)

    # then
    assert answer.status_code == 200
    assert {"players", "server_version", "start_time"} <= set(answer.json())


def test_market_orders_serve_three_pages_of_one_snapshot(emulator: Emulator) -> None:
    # when
    pages = [
        requests.get(
            emulator.base_url + MARKET,
            params={"order_type": "all", "page": page},
            timeout=5,
        )
        for page in (1, 2, 3)
    ]
    again = requests.get(emulator.base_url + MARKET, params={"page": 1}, timeout=5)

    # then
    assert [len(p.json()) for p in pages] == [1000, 1000, 338]
    assert {p.headers["X-Pages"] for p in pages} == {"3"}
    assert len({p.headers["Last-Modified"] for p in pages}) == 1
    assert again.headers["ETag"] == pages[0].headers["ETag"]


def test_past_the_last_page_is_not_found(emulator: Emulator) -> None:
    # when
    answer = requests.get(emulator.base_url + MARKET, params={"page": 4}, timeout=5)

    # then
    assert answer.status_code == 404
    assert "error" in answer.json()


def test_matching_if_none_match_gets_304_with_cache_headers(emulator: Emulator) -> None:
    # given
    first = requests.get(emulator.base_url + MARKET, params={"page": 2}, timeout=5)

    # when
    answer = requests.get(
        emulator.base_url + MARKET,
        params={"page": 2},
        headers={"If-None-Match": first.headers["ETag"]},
        timeout=5,
    )

    # then
    assert answer.status_code == 304
    assert answer.content == b""
    for name in ("ETag", "Expires", "Last-Modified", "Cache-Control", "X-Pages"):
        assert answer.headers[name] == first.headers[name] or name == "Cache-Control"


def test_types_are_served_in_the_language_asked_for(emulator: Emulator) -> None:
    # when
    english = requests.get(
        f"{emulator.base_url}/latest/universe/types/645/",
        params={"language": "en-us"},
        timeout=5,
    )
    french = requests.get(
        f"{emulator.base_url}/latest/universe/types/645/",
        headers={"Accept-Language": "fr"},
        timeout=5,
    )

    # then
    assert english.headers["Content-Language"] == "en-us"
    assert french.headers["Content-Language"] == "fr"
    assert english.json()["description"] != french.json()["description"]


def test_unrecorded_language_falls_back_to_english_and_says_so(
    emulator: Emulator,
) -> None:
    # given
    english = requests.get(
        f"{emulator.base_url}/latest/universe/types/645/",
        params={"language": "en"},
        timeout=5,
    )

    # when
    german = requests.get(
        f"{emulator.base_url}/latest/universe/types/645/",
        params={"language": "de"},
        timeout=5,
    )

    # then
    assert german.status_code == 200
    assert german.headers["Content-Language"] == "en"
    assert german.json() == english.json()


def test_unknown_language_is_a_bad_request(emulator: Emulator) -> None:
    # when
    answer = requests.get(
        f"{emulator.base_url}/latest/universe/types/645/",
        params={"language": "xx"},
        timeout=5,
    )

    # then
    assert answer.status_code == 400


def test_authed_route_serves_the_token_owner(emulator: Emulator) -> None:
    # given
    token = _token(emulator, [ASSETS_SCOPE])

    # when
    pages = [
        requests.get(
            f"{emulator.base_url}/characters/2112000001/assets",
            params={"page": page},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        for page in (1, 2)
    ]

    # then
    assert [p.status_code for p in pages] == [200, 200]
    assert [p.headers["X-Pages"] for p in pages] == ["2", "2"]
    assert pages[0].headers["Cache-Control"].startswith("private")


def test_missing_or_expired_token_is_401(emulator: Emulator) -> None:
    # given
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS_SCOPE])
    url = f"{emulator.base_url}/latest/characters/2112000001/assets/"

    # when
    missing = requests.get(url, timeout=5)
    expired = requests.get(
        url, headers={"Authorization": f"Bearer {grant.access_token}"}, timeout=5
    )

    # then
    assert missing.status_code == 401 and "error" in missing.json()
    assert expired.status_code == 401 and "expired" in expired.json()["error"]


def test_wrong_scope_or_other_character_is_403(emulator: Emulator) -> None:
    # given
    wallet_only = _token(emulator, ["esi-wallet.read_character_wallet.v1"])
    other = _token(emulator, [ASSETS_SCOPE], character_id=2112000002)
    url = f"{emulator.base_url}/latest/characters/2112000001/assets/"

    # when
    no_scope = requests.get(
        url, headers={"Authorization": f"Bearer {wallet_only}"}, timeout=5
    )
    not_yours = requests.get(
        url, headers={"Authorization": f"Bearer {other}"}, timeout=5
    )

    # then
    assert no_scope.status_code == 403 and ASSETS_SCOPE in no_scope.json()["error"]
    assert not_yours.status_code == 403


def test_unknown_paths_are_404_in_each_style(emulator: Emulator) -> None:
    # when
    bare = requests.get(f"{emulator.base_url}/no/such/route", timeout=5)
    versioned = requests.get(f"{emulator.base_url}/latest/no/such/route/", timeout=5)

    # then
    assert bare.status_code == 404 and bare.text == "404 page not found"
    assert bare.headers["Content-Type"].startswith("text/plain")
    assert versioned.status_code == 404 and "error" in versioned.json()


def test_lifetime_is_rebased_to_now(emulator: Emulator) -> None:
    # when: the first request of a generation
    answer = requests.get(
        f"{emulator.base_url}/latest/markets/10000070/orders/",
        params={"page": 3},
        timeout=5,
    )

    # then: the recording's Last-Modified..Expires span, starting now
    lifetime = _seconds(answer.headers["Expires"]) - _seconds(answer.headers["Date"])
    assert lifetime == 300
    assert answer.headers["Last-Modified"] == answer.headers["Date"]


def test_cache_ttl_switch_overrides_every_lifetime(emulator: Emulator) -> None:
    # given
    emulator.configure(cache_ttl_s=7)

    # when
    answer = requests.get(f"{emulator.base_url}/status", timeout=5)

    # then
    assert _seconds(answer.headers["Expires"]) - _seconds(answer.headers["Date"]) == 7


def test_swagger_is_served_pointing_at_the_emulator(emulator: Emulator) -> None:
    # when
    spec = requests.get(f"{emulator.base_url}/latest/swagger.json", timeout=10).json()
    openapi = requests.get(f"{emulator.base_url}/meta/openapi.json", timeout=5).json()

    # then
    assert spec["host"] == emulator.base_url.removeprefix("http://")
    assert spec["schemes"] == ["http"] and spec["basePath"] == "/latest"
    assert len(spec["paths"]) == 191
    assert openapi["servers"] == [{"url": emulator.base_url}]


def test_compatibility_date_is_clamped_down_and_future_dates_refused(
    emulator: Emulator,
) -> None:
    # when
    clamped = requests.get(
        f"{emulator.base_url}/status",
        headers={"X-Compatibility-Date": "2025-10-01"},
        timeout=5,
    )
    future = requests.get(
        f"{emulator.base_url}/status",
        headers={"X-Compatibility-Date": "2999-01-01"},
        timeout=5,
    )
    dates = requests.get(f"{emulator.base_url}/meta/compatibility-dates", timeout=5)

    # then
    assert clamped.headers["X-Compatibility-Date"] == "2025-08-26"
    assert future.status_code == 400
    assert "2025-08-26" in dates.json()["compatibility_dates"]
