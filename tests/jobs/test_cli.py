"""``esi-worker jobs``: list with next runs, run one now, show runs, scaffold a plugin."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from worker.cli import main

SKILLS = "esi-skills.read_skills.v1"


@pytest.fixture
def cli(settings: Any, clean_db: Any, emulator: Any) -> Any:
    env = {
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_DATA_DIR": str(settings.data_dir),
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.client_id,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_SSO_CLIENT_SECRET": emulator.client_secret,
        "ESI_WORKER_MARKET_REGIONS": "[10000070]",
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",
    }

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_jobs_list_shows_source_schedule_fan_out_scopes_and_next_run(cli: Any) -> None:
    # given: market_orders has run once, so its next slot is known
    assert cli("jobs", "run", "market_orders").exit_code == 0

    # when
    result = cli("jobs", "list")

    # then
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["JOB"].split() == [
        "JOB",
        "SOURCE",
        "SCHEDULE",
        "FAN-OUT",
        "NEXT",
        "RUN",
        "SCOPES",
    ]
    assert "esi-worker 0.1.0" in lines["character_assets"]
    assert "every 3600 s" in lines["character_assets"]
    assert "esi-assets.read_assets.v1" in lines["character_assets"]
    assert "once" in lines["refresh_tokens"] and "due now" in lines["refresh_tokens"]


def test_jobs_run_runs_one_now_for_a_character_and_records_it(
    cli: Any, runtime: Any, make_token: Any
) -> None:
    # given: a character whose token holds the assets scope
    make_token(2112000001, "Test Pilot One", "esi-assets.read_assets.v1")

    # when
    result = cli("jobs", "run", "character_assets", "--character", "2112000001")

    # then
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "character_assets: success"
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT job, character_id, outcome, items, pages, esi_calls FROM esi_job_run"
        ).fetchone()
    assert row[:4] == ("character_assets", 2112000001, "success", 1189)
    assert row[4] == row[5] == 2


def test_jobs_run_of_an_unknown_job_names_the_known_ones(cli: Any) -> None:
    result = cli("jobs", "run", "wallets")

    assert result.exit_code == 1
    assert (
        "no job named 'wallets'" in result.output and "market_orders" in result.output
    )


def test_jobs_runs_shows_recent_runs_and_failures_with_their_error(
    cli: Any, runtime: Any
) -> None:
    # given: one run that succeeded and one that failed
    cli("jobs", "run", "market_orders")
    with runtime.pool.connection() as conn:
        conn.execute(
            "INSERT INTO esi_job_run (job, character_id, started, finished, outcome,"
            " error) VALUES ('wallet', 96224792, now(), now(), 'failure',"
            " 'HTTPError: ESI answered 500')"
        )

    # when
    everything = cli("jobs", "runs")
    failures = cli("jobs", "runs", "--failures")

    # then
    assert "market_orders" in everything.output and "wallet" in everything.output
    assert "market_orders" not in failures.output
    assert (
        "96224792" in failures.output
        and "HTTPError: ESI answered 500" in failures.output
    )


def test_jobs_new_scaffolds_a_plugin_package_with_entry_point_job_and_test(
    tmp_path: Path,
) -> None:
    # when
    result = CliRunner().invoke(
        main, ["jobs", "new", "wallet_watch", "--directory", str(tmp_path)]
    )

    # then: a package registering the job through the entry-point group
    assert result.exit_code == 0, result.output
    root = tmp_path / "esi-worker-wallet-watch"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["esi_worker.jobs"] == {
        "wallet_watch": "esi_worker_wallet_watch.jobs:wallet_watch"
    }
    assert "esi-worker" in project["project"]["dependencies"]
    for path in (
        root / "esi_worker_wallet_watch" / "jobs.py",
        root / "tests" / "test_wallet_watch.py",
    ):
        ast.parse(path.read_text())
    test_source = (root / "tests" / "test_wallet_watch.py").read_text()
    assert "started_worker" in test_source and "make_token" in test_source

    # and: a second time it refuses to overwrite, and bad names are refused
    again = CliRunner().invoke(
        main, ["jobs", "new", "wallet_watch", "--directory", str(tmp_path)]
    )
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(main, ["jobs", "new", "Wallet-Watch"])
    assert bad.exit_code == 1 and "lower-case identifier" in bad.output


def test_the_scaffolded_job_runs_against_the_emulator(
    tmp_path: Path,
    runtime: Any,
    make_token: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    from worker.jobs import JobRegistry
    from worker.runs import execute_job

    # given: a scaffolded plugin, its module importable
    CliRunner().invoke(
        main, ["jobs", "new", "skill_count", "--directory", str(tmp_path)]
    )
    monkeypatch.syspath_prepend(str(tmp_path / "esi-worker-skill-count"))
    importlib.invalidate_caches()
    module = importlib.import_module("esi_worker_skill_count.jobs")
    make_token(2112000001, "Test Pilot One", module.SCOPE)

    # when
    registry = JobRegistry("none", extra=[module.skill_count])
    outcome = execute_job(runtime, registry, "skill_count", 2112000001)

    # then
    assert outcome == "success"
