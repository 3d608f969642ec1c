"""The emulator's error limit, rate-limit buckets and injected ESI faults."""

from __future__ import annotations

import requests

from worker.emulator import Emulator

MARKET = "/latest/markets/10000070/orders/"


def test_errors_count_down_the_budget_then_every_route_is_420(
    emulator: Emulator,
) -> None:
    # given
    emulator.configure(error_budget=3, error_window_s=600)
    session = requests.Session()

    # when
    misses = [
        session.get(f"{emulator.base_url}/latest/no/such/", timeout=5) for _ in range(3)
    ]
    limited = session.get(emulator.base_url + MARKET, timeout=5)

    # then
    assert [m.headers["X-Esi-Error-Limit-Remain"] for m in misses] == ["2", "1", "0"]
    assert 0 < int(misses[0].headers["X-Esi-Error-Limit-Reset"]) <= 600
    assert limited.status_code == 420 and "error" in limited.json()
    assert limited.headers["X-Esi-Error-Limit-Remain"] == "0"


def test_successes_leave_the_budget_alone(emulator: Emulator) -> None:
    # when
    answers = [requests.get(emulator.base_url + MARKET, timeout=5) for _ in range(2)]

    # then
    assert [a.headers["X-Esi-Error-Limit-Remain"] for a in answers] == ["100", "100"]


def test_bucket_route_runs_out_with_429_and_retry_after(emulator: Emulator) -> None:
    # given: /status is in the recorded "status" group
    emulator.configure(bucket_overrides={"status": "4/15m"})
    session = requests.Session()

    # when
    answers = [session.get(f"{emulator.base_url}/status", timeout=5) for _ in range(3)]

    # then
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["X-Ratelimit-Remaining"] for a in answers] == ["2", "0", "0"]
    assert [a.headers["X-Ratelimit-Used"] for a in answers] == ["2", "2", "0"]
    assert answers[0].headers["X-Ratelimit-Limit"] == "4/15m"
    assert 0 < int(answers[2].headers["Retry-After"]) <= 900
    assert all("X-Esi-Error-Limit-Remain" not in a.headers for a in answers)


def test_bucket_charges_one_token_for_a_304(emulator: Emulator) -> None:
    # given
    first = requests.get(f"{emulator.base_url}/status", timeout=5)

    # when
    again = requests.get(
        f"{emulator.base_url}/status",
        headers={"If-None-Match": first.headers["ETag"]},
        timeout=5,
    )

    # then
    assert again.status_code == 304
    assert again.headers["X-Ratelimit-Used"] == "1"
    assert again.headers["X-Ratelimit-Remaining"] == "597"


def test_esi_faults_hit_matching_paths_count_times(emulator: Emulator) -> None:
    # given
    emulator.configure(
        esi_faults=[{"path_contains": "/markets/", "status": 503, "count": 2}]
    )

    # when
    statuses = [
        requests.get(emulator.base_url + MARKET, timeout=5).status_code
        for _ in range(3)
    ]
    other = requests.get(f"{emulator.base_url}/status", timeout=5)

    # then
    assert statuses == [503, 503, 200]
    assert other.status_code == 200
    assert emulator.stats()["esi_requests_by_status"] == {503: 2, 200: 2}
