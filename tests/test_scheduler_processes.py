"""Scheduler processes: two at once plan each run once; a killed leader is replaced."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/11"
SKILLS = "esi-skills.read_skills.v1"
INTERVAL_S = 2
BUILT_IN = [
    "refresh_tokens",
    "prune_tokens",
    "market_orders",
    "type_names",
    "character_assets",
]


@pytest.fixture
def probe_site(tmp_path: Path) -> Path:
    """A plugin distribution with two quick jobs and a broken one, registered by
    entry point only."""
    site = tmp_path / "site"
    (site / "probe_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "probe_plugin.py").write_text(
        textwrap.dedent(f"""
        from worker.jobs import job

        @job(every={INTERVAL_S})
        def probe_once(ctx):
            ctx.stats.items = 1

        @job(scopes="{SKILLS}", fan_out="per_character", every={INTERVAL_S})
        def probe_characters(ctx):
            ctx.stats.items = 1
    """)
    )
    (site / "probe_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: probe-plugin\nVersion: 1.0\n"
    )
    (site / "probe_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[esi_worker.jobs]\nprobe_once = probe_plugin:probe_once\n"
        "probe_characters = probe_plugin:probe_characters\n"
        "probe_broken = probe_plugin_gone:probe\n"
    )
    return site


@pytest.fixture
def environment(
    settings: Any, runtime: Any, emulator: Any, probe_site: Path, tmp_path: Path
) -> dict[str, str]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    for character_id, name in ((2112000001, "Test Pilot One"), (96224792, "Mitani")):
        grant = emulator.create_grant(
            character_id=character_id, character_name=name, scopes=[SKILLS]
        )
        runtime.tokens.import_grant(grant)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "PYTHONPATH": str(probe_site),
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_BROKER_URL": REDIS_URL,
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.client_id,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_SSO_CLIENT_SECRET": emulator.client_secret,
        "ESI_WORKER_METRICS_PORT": "0",
        "ESI_WORKER_DISABLED_JOBS": str(BUILT_IN).replace("'", '"'),
        "ESI_WORKER_SCHEDULER_TICK_S": "0.25",
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",
        # Same data dir as the test's runtime: its token key reads the tokens.
        "ESI_WORKER_DATA_DIR": str(settings.data_dir),
    }


@pytest.fixture
def spawn(environment: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(role: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{role}-{len(procs)}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker", role],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_scheduler_processes_plan_each_run_once_and_a_killed_leader_is_replaced(
    spawn: Any, environment: dict[str, str], settings: Any, tmp_path: Path
) -> None:
    # given: two scheduler processes and a worker process on Redis
    schedulers = [spawn("scheduler"), spawn("scheduler")]
    spawn("worker")
    leader_pid = _wait_for(lambda: _leader_pid(settings), 30, "a leader", tmp_path)
    _wait_for(
        lambda: _runs(settings, "probe_characters") >= 4, 30, "first runs", tmp_path
    )

    # when: the leader is killed with SIGKILL in the middle of a period
    _wait_for(lambda: _mid_period(settings), 10, "mid-period", tmp_path)
    killed_at = dt.datetime.now(dt.UTC)
    os.kill(leader_pid, signal.SIGKILL)
    follower = next(p for p in schedulers if p.pid != leader_pid)
    _wait_for(
        lambda: _leader_pid(settings) == follower.pid, 30, "a new leader", tmp_path
    )
    _wait_for(lambda: _runs_after(settings, killed_at) >= 6, 40, "runs after", tmp_path)

    # then: the broken plugin was reported by name, and the others ran
    assert "job 'probe_broken' is not scheduled" in _logs(tmp_path)
    listing = subprocess.run(
        [sys.executable, "-m", "worker", "jobs", "list"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "probe_broken" in listing.stdout and "BROKEN" in listing.stdout

    # and: per job and character, the slots run follow each other one period
    # apart: none skipped (lost), none twice (doubled)
    dues = _dues(settings)
    assert set(dues) == {
        ("probe_once", 0),
        ("probe_characters", 2112000001),
        ("probe_characters", 96224792),
    }
    for key, times in dues.items():
        if key[0] == "probe_once":
            times = times[1:]  # the first run of a new job is at start-up, off-slot
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
        assert gaps == {INTERVAL_S}, (key, times, _logs(tmp_path))
        assert times[0] < killed_at < times[-1]


def _leader_pid(settings: Any) -> int | None:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            " AND a.application_name LIKE 'esi-worker scheduler%%'"
            # Only this test's database: parallel suites run their own leaders.
            " AND l.database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        ).fetchone()
    match = re.search(r"pid=(\d+)", row[0]) if row else None
    return int(match.group(1)) if match else None


def _runs(settings: Any, job: str) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM esi_job_run WHERE job = %s AND outcome = 'success'",
                (job,),
            ).fetchone()[0]
        )


def _runs_after(settings: Any, instant: dt.datetime) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM esi_job_run WHERE outcome = 'success' AND due > %s",
                (instant + dt.timedelta(seconds=INTERVAL_S),),
            ).fetchone()[0]
        )


def _mid_period(settings: Any) -> bool:
    # Kill when the newest slot is between a quarter and three quarters back.
    with psycopg.connect(settings.database_url) as conn:
        newest = conn.execute("SELECT max(due) FROM esi_job_run").fetchone()[0]
    age = (dt.datetime.now(dt.UTC) - newest).total_seconds()
    return INTERVAL_S * 0.25 < age % INTERVAL_S < INTERVAL_S * 0.75


def _dues(settings: Any) -> dict[tuple[str, int], list[dt.datetime]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT job, subject, due FROM esi_job_run WHERE due IS NOT NULL"
            " ORDER BY job, subject, due"
        ).fetchall()
    dues: dict[tuple[str, int], list[dt.datetime]] = collections.defaultdict(list)
    for job, subject, due in rows:
        dues[(job, subject)].append(due)
    return dict(dues)


def _wait_for(check: Any, timeout_s: float, what: str, tmp_path: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{_logs(tmp_path)}")


def _logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
        for p in sorted(tmp_path.glob("*.log"))
    )


@pytest.fixture
def hang_environment(
    environment: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    """Two plugin jobs that outlive their 2 s timeout: one busy in Python,
    one blocked in a sleep no interruption reaches."""
    site = tmp_path / "hang_site"
    (site / "hang_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "hang_plugin.py").write_text(
        textwrap.dedent(f"""
        import time
        from worker.jobs import job

        @job(every={INTERVAL_S}, timeout=2)
        def probe_busy(ctx):
            end = time.monotonic() + 60
            while time.monotonic() < end:
                sum(range(1000))

        @job(every={INTERVAL_S}, timeout=2)
        def probe_sleep(ctx):
            time.sleep(4)
    """)
    )
    (site / "hang_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hang-plugin\nVersion: 1.0\n"
    )
    (site / "hang_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[esi_worker.jobs]\nprobe_busy = hang_plugin:probe_busy\n"
        "probe_sleep = hang_plugin:probe_sleep\n"
    )
    return {
        **environment,
        "PYTHONPATH": str(site),
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
    }


@pytest.mark.parametrize("deployment", ["procfile", "run"])
def test_job_timeouts_are_enforced_by_worker_processes_and_by_run(
    hang_environment: dict[str, str],
    settings: Any,
    tmp_path: Path,
    deployment: str,
) -> None:
    # given: the Procfile's worker and scheduler on Redis, or 'run' alone
    procs = []
    if deployment == "procfile":
        roles = (["worker"], ["scheduler"])
        env = hang_environment
    else:
        roles = (["run"],)
        env = {k: v for k, v in hang_environment.items() if k != "ESI_WORKER_BROKER_URL"}
    for role in roles:
        with open(tmp_path / f"{role[0]}-hang.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker", *role],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        # when: both jobs ran past their timeout
        busy = _wait_for(
            lambda: _finished_runs(settings, "probe_busy"), 60, "busy run", tmp_path
        )
        sleepy = _wait_for(
            lambda: len(_finished_runs(settings, "probe_sleep")) >= 2 and
            _finished_runs(settings, "probe_sleep"),
            60,
            "two sleeping runs",
            tmp_path,
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # then: the busy run was stopped at its timeout and recorded so
    started, finished, outcome, error = busy[0]
    assert (outcome, error) == ("failure", "timed out after 2 s")
    assert (finished - started).total_seconds() < 30
    # and: the blocked runs were recorded as timed out, one after another
    assert {(o, e) for _, _, o, e in sleepy} == {("failure", "timed out after 2 s")}
    for (_, end, _, _), (start, _, _, _) in itertools.pairwise(sleepy):
        assert start >= end


def _finished_runs(settings: Any, job: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT started, finished, outcome, error FROM esi_job_run"
            " WHERE job = %s AND state = 'finished' ORDER BY started",
            (job,),
        ).fetchall()
