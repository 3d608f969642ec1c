"""Driving the emulator over its admin endpoints and its Python API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from worker.emulator import Emulator, EmulatorConfig
from worker.errors import ConfigurationError


def test_grants_are_created_over_http(emulator: Emulator) -> None:
    # when
    answer = requests.post(
        f"{emulator.base_url}/_emulator/grants",
        json={
            "character_id": 2112000003,
            "character_name": "Pilot Three",
            "scopes": ["esi-skills.read_skills.v1"],
        },
        timeout=5,
    )

    # then
    body = answer.json()
    assert answer.status_code == 201
    assert body["character_id"] == 2112000003
    assert body["scopes"] == ["esi-skills.read_skills.v1"]
    assert len(body["refresh_token"]) == 24 and body["access_token"]


def test_a_grant_without_a_character_is_refused_by_name(emulator: Emulator) -> None:
    # when
    answer = requests.post(
        f"{emulator.base_url}/_emulator/grants",
        json={"character_name": "Nobody"},
        timeout=5,
    )

    # then
    assert answer.status_code == 400
    assert "character_id" in answer.json()["error"]


def test_config_is_patched_read_back_and_reset(emulator: Emulator) -> None:
    # given
    url = f"{emulator.base_url}/_emulator/config"

    # when
    patched = requests.patch(
        url, json={"rotation": "off", "owner_changes": [7]}, timeout=5
    )
    read = requests.get(url, timeout=5).json()
    requests.post(f"{emulator.base_url}/_emulator/reset", timeout=5)

    # then
    assert patched.status_code == 200
    assert read["rotation"] == "off" and read["owner_changes"] == [7]
    assert "client_secret" not in read
    assert emulator.config.rotation == "rotate"


def test_unknown_or_bad_switches_are_named(emulator: Emulator) -> None:
    # when
    answer = requests.patch(
        f"{emulator.base_url}/_emulator/config",
        json={"rotation": "sometimes"},
        timeout=5,
    )

    # then
    assert answer.status_code == 400 and "rotation" in answer.json()["error"]
    with pytest.raises(ConfigurationError, match="no_such_switch"):
        emulator.configure(no_such_switch=1)


def test_burst_limit_answers_503_beyond_n_in_flight(emulator: Emulator) -> None:
    # given: slow answers so eight requests overlap
    emulator.configure(sso_burst_limit=2, sso_latency_s=0.3)
    grant = emulator.create_grant(
        2112000001, "Test Pilot One", ["esi-assets.read_assets.v1"]
    )

    def refresh(_: int) -> int:
        return requests.post(
            f"{emulator.base_url}/v2/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
            auth=(emulator.client_id, emulator.client_secret),
            timeout=10,
        ).status_code

    # when
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(refresh, range(8)))

    # then
    assert 503 in statuses and 200 in statuses
    stats = requests.get(f"{emulator.base_url}/_emulator/stats", timeout=5).json()
    assert stats["sso_token_requests"] == 8
    assert stats["sso_max_in_flight"] > 2


def test_a_second_emulator_runs_beside_the_first_and_stops_cleanly(
    emulator: Emulator,
) -> None:
    # given
    other = Emulator(EmulatorConfig(client_id="other-app"))

    # when
    with other:
        status = requests.get(f"{other.base_url}/status", timeout=5).status_code

    # then
    assert status == 200
    assert other.base_url != emulator.base_url
    assert other.client_id == "other-app"
    with pytest.raises(ConfigurationError):
        other.stats()
