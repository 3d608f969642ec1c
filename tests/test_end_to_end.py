"""The main job end to end: `esi-worker run --emulator` on PostgreSQL, checked in the database."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from worker.demo import DEMO_CHARACTERS, DEMO_REGION

RECORDED = Path(__import__("worker.emulator", fromlist=["x"]).__file__).parent / "data" / "recorded"
MINERALS = [34, 35, 36, 37, 38, 39, 40]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def recorded_bodies(operation: str, predicate: Callable[[dict], bool]) -> list[dict]:
    index = json.loads((RECORDED / "index.json").read_text())
    entries = [e for e in index if e["operationId"] == operation and predicate(e)]
    return [
        {**e, "body": json.loads((RECORDED / e["file"]).read_text())["response"]["body"]}
        for e in entries
    ]


@pytest.fixture
def demo_process(database_url: str, clean_db: Any, tmp_path: Path) -> Iterator[dict]:
    """`esi-worker run --emulator` on the test database, with short intervals."""
    ports = {"metrics": free_port(), "emulator": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "ESI_WORKER_DATABASE_URL": database_url,
        "ESI_WORKER_DATA_DIR": str(tmp_path / "data"),
        "ESI_WORKER_METRICS_PORT": str(ports["metrics"]),
        "ESI_WORKER_REFRESH_AHEAD_S": "1200",  # every run refreshes every token
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",  # the emulator never goes down
        "ESI_WORKER_JOB_INTERVALS": json.dumps(
            {"refresh_tokens": 3, "market_orders": 3, "character_assets": 4}
        ),
    }
    command = [sys.executable, "-m", "worker", "run", "--emulator",
               "--emulator-port", str(ports["emulator"]), "--use-configured-services",
               "--duration", "240"]
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield {**ports, "proc": proc, "log": log_path}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_run_emulator_keeps_tokens_alive_and_stores_recorded_data(
    demo_process: dict, database_url: str
) -> None:
    # given: the demo running with tokens refreshed every 3 s under strict rotation
    emulator = f"http://127.0.0.1:{demo_process['emulator']}"
    characters = {c[0] for c in DEMO_CHARACTERS}

    def refreshed_twice() -> bool:
        try:
            stats = requests.get(f"{emulator}/_emulator/stats", timeout=5).json()
        except requests.ConnectionError:
            return False
        counts = {int(k): v for k, v in stats["sso_refreshes_by_character"].items()}
        return all(counts.get(c, 0) >= 2 for c in characters)

    # when: the schedule has fired a few times
    wait_until(refreshed_twice, 90, "two refreshes of every token")
    wait_until(lambda: _count(database_url, "esi_character_asset") > 0, 60, "assets")
    wait_until(lambda: _count(database_url, "esi_type_name") >= 14, 60, "type names")
    wait_until(lambda: _job_runs(database_url, "market_orders") >= 2, 60, "2 market runs")

    # then: every token is still valid: each rotated refresh token was stored,
    # since the emulator rejects a refresh token once it has been rotated
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT character_id, state, access_expires > now() FROM esi_token"
        ).fetchall()
    assert {r[0] for r in rows} == characters
    assert all(state == "valid" and fresh for _, state, fresh in rows)

    _assert_market_orders_match_recording(database_url)
    _assert_type_names_match_recording(database_url)
    _assert_assets_match_recording(database_url)
    _assert_metrics_counted_the_work(demo_process["metrics"])


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _job_runs(url: str, job: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM esi_job_run WHERE job = %s AND outcome = 'success'", (job,)
        ).fetchone()
    return int(row[0])


def _assert_market_orders_match_recording(url: str) -> None:
    pages = recorded_bodies(
        "get_markets_region_id_orders",
        lambda e: e["path_params"]["region_id"] == str(DEMO_REGION) and e["status"] == 200,
    )
    expected = {o["order_id"]: o for p in pages for o in p["body"]}
    assert len(expected) == 2338
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT order_id, type_id, price, volume_remain, is_buy_order, location_id"
            " FROM esi_market_order WHERE region_id = %s", (DEMO_REGION,)
        ).fetchall()
    assert len(stored) == len(expected)
    for order_id, type_id, price, volume, is_buy, location in stored:
        want = expected[order_id]
        assert (type_id, price, volume, is_buy, location) == (
            want["type_id"], want["price"], want["volume_remain"],
            want["is_buy_order"], want["location_id"],
        )


def _assert_type_names_match_recording(url: str) -> None:
    # Recorded as "en-us" (Swagger era); stored under today's tag "en".
    recorded = {
        (int(e["path_params"]["type_id"]), "en" if e["language"] == "en-us" else e["language"]): e["body"]
        for e in recorded_bodies(
            "get_universe_types_type_id",
            lambda e: int(e["path_params"]["type_id"]) in MINERALS and e["status"] == 200
            and e["language"] in ("en-us", "fr"),
        )
    }
    with psycopg.connect(url) as conn:
        stored = {
            (t, lang): (name, description)
            for t, lang, name, description in conn.execute(
                "SELECT type_id, language, name, description FROM esi_type_name"
            )
        }
    assert set(stored) == set(recorded), "one row per recorded type and language, no others"
    for key, body in recorded.items():
        assert stored[key] == (body["name"], body["description"])


def _assert_assets_match_recording(url: str) -> None:
    pages = recorded_bodies(
        "get_characters_character_id_assets",
        lambda e: e["status"] == 200 and str(e["x_pages"]) == "2",
    )
    # The emulator serves the newest recorded day that holds every page.
    by_day: dict[dt.date, dict[str, dict]] = {}
    for page in pages:
        day = parsedate_to_datetime(page["recorded_at"]).date()
        by_day.setdefault(day, {})[page["query"].get("page", "1")] = page
    newest = max(day for day, found in by_day.items() if set(found) == {"1", "2"})
    expected = {a["item_id"]: a for p in by_day[newest].values() for a in p["body"]}
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT item_id, type_id, quantity, location_id, location_flag"
            " FROM esi_character_asset WHERE character_id = 2112000001"
        ).fetchall()
    assert len(stored) == len(expected) == 1189
    for item_id, type_id, quantity, location_id, flag in stored:
        want = expected[item_id]
        assert (type_id, quantity, location_id, flag) == (
            want["type_id"], want["quantity"], want["location_id"], want["location_flag"]
        )


def _assert_metrics_counted_the_work(port: int) -> None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = _parse_samples(text)

    def total(name: str, **labels: str) -> float:
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        return sum(
            value for key, value in samples.items()
            if key.split("{")[0] == name and wanted <= set(_labels_of(key))
        )

    assert total("esi_worker_token_refreshes_total", outcome="success") >= 6
    orders = "get_markets_region_id_orders"
    assert total("esi_worker_esi_requests_total", operation=orders, status="200") >= 3
    assert total("esi_worker_cache_hits_total", operation=orders) >= 3
    assert total("esi_worker_job_runs_total", job="market_orders", outcome="success") >= 2
    assert total("esi_worker_job_runs_total", job="refresh_tokens", outcome="success") >= 2


def _labels_of(key: str) -> list[str]:
    inside = key.partition("{")[2].rstrip("}")
    return [part for part in inside.split(",") if part]


def _parse_samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_run_without_credentials_says_what_to_configure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    env["ESI_WORKER_DATA_DIR"] = str(tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )

    assert result.returncode != 0
    assert "ESI_WORKER_SSO_CLIENT_ID" in result.stderr
    assert "--emulator" in result.stderr
    assert not (tmp_path / "postgres").exists(), "nothing is started before the check"


def test_run_emulator_on_the_embedded_defaults(tmp_path: Path) -> None:
    # given: no database URL and no broker URL, as on a newcomer's machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    env.update(
        ESI_WORKER_DATA_DIR=str(tmp_path / "data"),
        ESI_WORKER_METRICS_PORT="0",
        ESI_WORKER_DISABLED_JOBS='["type_names"]',
    )

    # when it runs until both jobs have stored their data, then is stopped
    log_path = tmp_path / "run.log"
    wanted = ("stored 2338 market orders of region 10000070",
              "stored 1189 assets of character 2112000001")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--emulator"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: all(w in log_path.read_text(errors="replace") for w in wanted)
                or proc.poll() is not None,
                150, "both jobs to store their data",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=60)
    output = log_path.read_text(errors="replace")

    # then: an embedded PostgreSQL held the data and the jobs did their work
    assert returncode == 0, output[-3000:]
    assert (tmp_path / "data" / "demo" / "postgres" / "PG_VERSION").exists()
    for line in wanted:
        assert line in output, output[-3000:]


def test_run_without_a_contact_address_says_what_to_configure(tmp_path: Path) -> None:
    # given SSO credentials but no contact address for the User-Agent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    env.update(
        ESI_WORKER_DATA_DIR=str(tmp_path),
        ESI_WORKER_SSO_CLIENT_ID="abc",
        ESI_WORKER_SSO_CLIENT_SECRET="not-shown-anywhere",
    )

    # when
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )

    # then it stops before starting anything and names the setting
    assert result.returncode != 0
    assert "ESI_WORKER_CONTACT_EMAIL" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-shown-anywhere" not in result.stderr
    assert not (tmp_path / "postgres").exists()


def test_run_emulator_keeps_demo_tokens_out_of_the_configured_database(
    database_url: str, clean_db: Any, tmp_path: Path
) -> None:
    # given an operator's database URL in the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    env.update(
        ESI_WORKER_DATABASE_URL=database_url,
        ESI_WORKER_DATA_DIR=str(tmp_path / "data"),
        ESI_WORKER_METRICS_PORT="0",
    )

    # when the demo runs without --use-configured-services
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--emulator", "--duration", "3"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )

    # then it says it ignores the URL, and its tokens went to its own database
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the demo ignores ESI_WORKER_DATABASE_URL" in result.stderr
    assert "demo tokens: 3 seeded" in result.stderr
    assert (tmp_path / "data" / "demo" / "postgres" / "PG_VERSION").exists()
    assert _count(database_url, "esi_token") == 0
