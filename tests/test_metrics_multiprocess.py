"""``esi-worker worker --processes N``: N workers, one metrics endpoint adding them up."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

REDIS_URL = "redis://127.0.0.1:6379/13"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def deployment(
    settings: Any, runtime: Any, emulator: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """Given a scheduler and a two-process worker sharing Redis and the database."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    grant = emulator.create_grant(character_id=2112000001, character_name="Test Pilot One",
                                  scopes=["esi-assets.read_assets.v1"])
    runtime.tokens.import_grant(grant)
    ports = {"worker": _free_port(), "scheduler": _free_port()}
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_BROKER_URL": REDIS_URL,
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.client_id,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_SSO_CLIENT_SECRET": emulator.client_secret,
        "ESI_WORKER_MARKET_REGIONS": "[10000070]",
        "ESI_WORKER_DISABLED_JOBS": '["type_names", "prune_tokens"]',
        "ESI_WORKER_JOB_INTERVALS": '{"market_orders": 3, "refresh_tokens": 2}',
        "ESI_WORKER_DATA_DIR": str(tmp_path / uuid.uuid4().hex),
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",  # the emulator never goes down
    }
    commands = {"worker": ["worker", "--processes", "2"], "scheduler": ["scheduler"]}
    procs = {}
    for role, args in commands.items():
        env = {**base, "ESI_WORKER_METRICS_PORT": str(ports[role])}
        with open(tmp_path / f"{role}.log", "wb") as log:
            procs[role] = subprocess.Popen([sys.executable, "-m", "worker", *args],
                                           env=env, stdout=log, stderr=subprocess.STDOUT)
    yield {"ports": ports, "procs": procs, "logs": tmp_path}
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


def _families(port: int) -> dict[str, Any]:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return {}
    return {f.name: f for f in text_string_to_metric_families(text)}


def _runs_counted(families: dict[str, Any]) -> float:
    family = families.get("esi_worker_job_runs")
    return sum(s.value for s in family.samples if s.name.endswith("_total")) if family else 0


def _runs_in_db(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM esi_job_run WHERE finished IS NOT NULL"
                           " AND outcome IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _logs(path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2500:] for p in path.glob("*.log"))


def test_worker_endpoint_adds_up_the_runs_of_all_its_processes(
    deployment: dict[str, Any], settings: Any
) -> None:
    # when the deployment has done several runs
    worker_port = deployment["ports"]["worker"]
    deadline = time.monotonic() + 60
    counted, in_db = 0.0, 0
    while time.monotonic() < deadline:
        in_db = _runs_in_db(settings.database_url)
        counted = _runs_counted(_families(worker_port))
        if in_db >= 6 and counted == in_db:
            break
        time.sleep(0.5)

    # then the one worker endpoint counts every finished run, whichever
    # process ran it, and shows no per-process (pid) label
    assert in_db >= 6 and counted == in_db, (counted, in_db, _logs(deployment["logs"]))
    families = _families(worker_port)
    assert not [s for f in families.values() for s in f.samples if "pid" in s.labels]
    children = subprocess.run(["pgrep", "-P", str(deployment["procs"]["worker"].pid)],
                              capture_output=True, text=True, check=False).stdout.split()
    assert len(children) >= 2


def test_database_gauges_come_from_the_scheduler_and_not_from_workers(
    deployment: dict[str, Any],
) -> None:
    # when both endpoints are up
    ports = deployment["ports"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        scheduler, worker = _families(ports["scheduler"]), _families(ports["worker"])
        if scheduler and worker:
            break
        time.sleep(0.5)

    # then token and queue gauges are on the scheduler's endpoint only
    for name in ("esi_worker_tokens", "esi_worker_tokens_expiring",
                 "esi_worker_job_queue_depth"):
        assert name in scheduler, (name, _logs(deployment["logs"]))
        assert name not in worker, name
    valid = [s for s in scheduler["esi_worker_tokens"].samples
             if s.labels == {"state": "valid"}]
    assert valid and valid[0].value == 1


def test_scheduler_gauges_come_from_the_scheduler_and_limits_from_workers(
    deployment: dict[str, Any],
) -> None:
    # when both endpoints are up and the workers have called ESI
    ports = deployment["ports"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        scheduler, worker = _families(ports["scheduler"]), _families(ports["worker"])
        if "esi_worker_error_limit_remaining" in worker and _has_samples(
                worker["esi_worker_error_limit_remaining"]):
            break
        time.sleep(0.5)

    # then the heartbeat is the scheduler's alone (workers report none, not
    # 0), and only the processes that called ESI report its error budget
    for name in ("esi_worker_scheduler_heartbeat_timestamp_seconds",
                 "esi_worker_scheduler_leader"):
        assert _has_samples(scheduler.get(name)), (name, _logs(deployment["logs"]))
        assert not _has_samples(worker.get(name)), name
    assert _has_samples(worker.get("esi_worker_error_limit_remaining")), _logs(
        deployment["logs"])
    assert not _has_samples(scheduler.get("esi_worker_error_limit_remaining"))


def test_a_worker_process_that_dies_leaves_its_counts_and_takes_its_gauges(
    deployment: dict[str, Any],
) -> None:
    # given worker processes, one of which has published gauges (cache,
    # limits: only a process that called ESI has them)
    launcher = deployment["procs"]["worker"]
    metrics_dir = _launcher_metrics_dir(launcher.pid)
    deadline = time.monotonic() + 60
    published: list[int] = []
    while time.monotonic() < deadline and not published:
        published = [c for c in _children(launcher.pid) if _live_files(metrics_dir, c)]
        time.sleep(0.5)
    assert published, (sorted(p.name for p in metrics_dir.iterdir()),
                       _logs(deployment["logs"]))
    counted = _runs_counted(_families(deployment["ports"]["worker"]))

    # when that one is killed outright
    victim = published[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and victim in _children(launcher.pid):
        time.sleep(0.2)
    while time.monotonic() < deadline and len(_children(launcher.pid)) < 2:
        time.sleep(0.2)

    # then it is replaced; its live gauge files are gone, so its cache and
    # limit values no longer count, while its counters still do
    assert victim not in _children(launcher.pid) and len(_children(launcher.pid)) >= 2
    assert not _live_files(metrics_dir, victim), sorted(p.name for p in metrics_dir.iterdir())
    assert (metrics_dir / f"counter_{victim}.db").exists()
    assert _runs_counted(_families(deployment["ports"]["worker"])) >= counted


def test_a_killed_launcher_s_metrics_folder_is_removed_by_the_next(
    settings: Any,
) -> None:
    # given the folder of a launcher that is gone, and one of a running one
    from worker.launcher import TEMP_PREFIX, _metrics_dir

    gone = subprocess.Popen(["true"])
    gone.wait()
    root = Path(tempfile.gettempdir())
    orphan = root / f"{TEMP_PREFIX}{gone.pid}-test{uuid.uuid4().hex[:6]}"
    alive = root / f"{TEMP_PREFIX}{os.getpid()}-test{uuid.uuid4().hex[:6]}"
    orphan.mkdir()
    alive.mkdir()
    (orphan / "counter_1.db").write_bytes(b"")

    # when a launcher picks its own folder
    mine, owned = _metrics_dir(settings.replace(metrics_multiproc_dir=None))
    try:
        # then the orphan is gone, the running launcher's folder stays, and
        # the new folder names this launcher's pid
        assert owned and mine.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")
        assert not orphan.exists()
        assert alive.exists()
    finally:
        for path in (mine, alive, orphan):
            shutil.rmtree(path, ignore_errors=True)


def _has_samples(family: Any) -> bool:
    return bool(family is not None and family.samples)


def _children(pid: int) -> list[int]:
    # The worker processes, not multiprocessing's resource tracker.
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"],
                           capture_output=True, text=True, check=False).stdout.split()
    return [int(p) for p in found]


def _launcher_metrics_dir(pid: int) -> Path:
    from worker.launcher import TEMP_PREFIX

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = list(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{pid}-*"))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no metrics folder of launcher {pid}")


def _live_files(path: Path, pid: int) -> list[Path]:
    return list(path.glob(f"gauge_live*_{pid}.db"))
