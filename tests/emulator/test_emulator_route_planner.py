"""POST /route/{origin}/{destination}, replayed from its 2026 recordings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from worker.emulator import Emulator

ROUTE = "/route/30000142/30002187"
TODAY = {"X-Compatibility-Date": "2025-12-16"}
RECORDED = (
    Path(__file__).parents[2]
    / "worker/emulator/data/recorded/routes/unmatched_post__route_30000142_30002187"
)


def recordings() -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(RECORDED.glob("*.json"))]


def plan(emulator: Emulator, body, headers=TODAY, path: str = ROUTE):
    return requests.post(
        f"{emulator.base_url}{path}", json=body, headers=headers, timeout=10
    )


@pytest.mark.parametrize("exchange", recordings(), ids=lambda e: e["source"]["path"])
def test_each_recorded_request_gets_its_recorded_route(emulator, exchange) -> None:
    # when
    answer = plan(emulator, exchange["request"]["body"])

    # then: the same systems, the route's own date and its rate-limit group
    assert answer.status_code == 200
    assert answer.json() == exchange["response"]["body"]
    assert answer.headers["X-Compatibility-Date"] == "2025-09-30"
    assert answer.headers["X-Ratelimit-Group"] == "routes"
    assert answer.headers["X-Ratelimit-Limit"] == "3600/15m"
    assert "ETag" not in answer.headers and "Expires" not in answer.headers


def test_fields_left_out_take_esis_defaults(emulator) -> None:
    # given: the recordings with every field spelled out
    full = plan(
        emulator,
        {
            "preference": "Shorter",
            "security_penalty": 50,
            "avoid_systems": [],
            "connections": [],
        },
    )

    # when
    empty = plan(emulator, {})

    # then
    assert empty.status_code == 200 and empty.json() == full.json()


def test_the_route_is_absent_before_its_compatibility_date(emulator) -> None:
    # when
    old = plan(emulator, {}, headers={"X-Compatibility-Date": "2025-08-26"})
    unversioned = plan(emulator, {}, headers={})

    # then
    assert old.status_code == 404
    assert unversioned.status_code == 404


def test_unrecorded_or_malformed_requests_are_refused(emulator) -> None:
    # when
    elsewhere = plan(emulator, {}, path="/route/30000142/30000144")
    unknown_field = plan(emulator, {"via": [1]})
    not_json = requests.post(
        f"{emulator.base_url}{ROUTE}", data=b"{", headers=TODAY, timeout=10
    )

    # then
    assert elsewhere.status_code == 404
    assert unknown_field.status_code == 400
    assert not_json.status_code == 400
