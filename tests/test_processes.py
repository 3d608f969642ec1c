"""The Procfile deployment: separate worker and scheduler processes on a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

REDIS_URL = "redis://127.0.0.1:6379/14"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _purge(broker_url: str) -> None:
    # Leftovers of an interrupted earlier run must not leak into this one.
    if broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(broker_url).flushdb()
        return
    import pika

    with pika.BlockingConnection(pika.URLParameters(broker_url)) as conn:
        for queue in ("esi_worker", "esi_worker.DQ", "esi_worker.XQ"):
            channel = conn.channel()
            try:
                channel.queue_purge(queue)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet: nothing to purge


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    url = REDIS_URL if request.param == "redis" else AMQP_URL
    try:
        _purge(url)
    except Exception as exc:  # noqa: BLE001 - the broker must be running
        pytest.fail(f"{request.param} broker at {url} is not reachable: {exc}")
    return url


@pytest.fixture
def processes(
    broker_url: str, settings: Any, runtime: Any, emulator: Any, tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    grant = emulator.create_grant(
        character_id=2112000001, character_name="Test Pilot One",
        scopes=["esi-assets.read_assets.v1"],
    )
    runtime.tokens.import_grant(grant)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_BROKER_URL": broker_url,
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.client_id,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_SSO_CLIENT_SECRET": emulator.client_secret,
        "ESI_WORKER_METRICS_PORT": "0",
        "ESI_WORKER_MARKET_REGIONS": "[10000070]",
        "ESI_WORKER_DISABLED_JOBS": '["type_names", "prune_tokens"]',
        # The test's data dir: its token key decrypts the token stored above.
        "ESI_WORKER_DATA_DIR": str(settings.data_dir),
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",  # the emulator never goes down
    }
    procs = []
    for role in ("worker", "scheduler"):
        with open(tmp_path / f"{role}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "worker", role], env=env, stdout=log,
                stderr=subprocess.STDOUT,
            ))
    yield procs
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_worker_and_scheduler_processes_do_the_work_through_the_broker(
    processes: list[subprocess.Popen[bytes]], settings: Any, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 60
    done: dict[str, int] = {}
    while time.monotonic() < deadline:
        with psycopg.connect(settings.database_url) as conn:
            done = dict(conn.execute(
                "SELECT job, count(*) FROM esi_job_run WHERE outcome = 'success' GROUP BY job"
            ).fetchall())
        if {"refresh_tokens", "market_orders", "character_assets"} <= set(done):
            break
        assert all(p.poll() is None for p in processes), _logs(tmp_path)
        time.sleep(0.5)
    else:
        pytest.fail(f"jobs did not run through the broker: {done}\n{_logs(tmp_path)}")

    with psycopg.connect(settings.database_url) as conn:
        orders = conn.execute("SELECT count(*) FROM esi_market_order").fetchone()[0]
        assets = conn.execute("SELECT count(*) FROM esi_character_asset").fetchone()[0]
    assert (orders, assets) == (2338, 1189)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))
