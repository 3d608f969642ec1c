"""``esi-worker jobs``: list with next runs, run one now, show runs, scaffold a plugin."""

from __future__ import annotations

import ast
import re
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


PILOT, MITANI = 2112000001, 96224792


@pytest.fixture
def fan_out_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed plugin with a job of each fan-out (and one that fails to
    import, quoting a password), registered by entry point only."""
    import importlib
    import sys
    import textwrap

    site = tmp_path / "fan_site"
    info = site / "fan_out_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "fan_out_plugin.py").write_text(
        textwrap.dedent(f"""
        from worker.jobs import job

        def _note(ctx):
            ctx.stats.items = ctx.token.id if ctx.token is not None else 0

        @job(scopes="{SKILLS}", fan_out="per_token", every=600)
        def fan_per_token(ctx):
            _note(ctx)

        @job(scopes="{SKILLS}", fan_out="per_character", every=600)
        def fan_per_character(ctx):
            _note(ctx)

        @job(scopes="{SKILLS}", fan_out="per_corporation", every=600)
        def fan_per_corporation(ctx):
            _note(ctx)
    """)
    )
    (site / "fan_out_broken.py").write_text(
        'raise RuntimeError("cannot connect, password=hunter2")\n'
    )
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fan-out-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[esi_worker.jobs]\n"
        + "".join(
            f"{name} = fan_out_plugin:{name}\n"
            for name in ("fan_per_token", "fan_per_character", "fan_per_corporation")
        )
        + "fan_broken = fan_out_broken:job\n"
    )
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("fan_out_plugin", None)
    importlib.invalidate_caches()


def _rows_of(runtime: Any, job: str) -> list[tuple[Any, ...]]:
    with runtime.pool.connection() as conn:
        return conn.execute(
            "SELECT subject, character_id, corporation_id, outcome, items"
            " FROM esi_job_run WHERE job = %s ORDER BY id",
            (job,),
        ).fetchall()


def test_jobs_run_of_a_per_token_job_runs_each_token_of_the_character(
    cli: Any, runtime: Any, make_token: Any, fan_out_plugins: None
) -> None:
    # given: two tokens of one character, one of another
    first = make_token(PILOT, "Test Pilot One", SKILLS)
    second = make_token(PILOT, "Test Pilot One", [SKILLS, "esi-assets.read_assets.v1"])
    other = make_token(MITANI, "Mitani", SKILLS)

    # when
    mine = cli("jobs", "run", "fan_per_token", "--character", str(PILOT))
    everyone = cli("jobs", "run", "fan_per_token")

    # then: a run per token, each with the token it was for
    assert mine.exit_code == 0, mine.output
    assert everyone.exit_code == 0, everyone.output
    rows = _rows_of(runtime, "fan_per_token")
    ids = [first.id, second.id]
    assert rows[:2] == [(t, PILOT, None, "success", t) for t in ids]
    assert sorted(r[0] for r in rows[2:]) == sorted([*ids, other.id])
    assert all(r[4] == r[0] and r[3] == "success" for r in rows)
    assert f"fan_per_token (token {other.id}): success" in everyone.output


def test_jobs_run_of_a_per_character_job_without_a_character_runs_everyone(
    cli: Any, runtime: Any, make_token: Any, fan_out_plugins: None
) -> None:
    make_token(PILOT, "Test Pilot One", SKILLS)
    make_token(MITANI, "Mitani", SKILLS)

    result = cli("jobs", "run", "fan_per_character")

    assert result.exit_code == 0, result.output
    rows = _rows_of(runtime, "fan_per_character")
    assert sorted((r[0], r[1], r[3]) for r in rows) == [
        (MITANI, MITANI, "success"),
        (PILOT, PILOT, "success"),
    ]


def test_jobs_run_of_a_per_corporation_job_for_a_character_runs_its_corporation(
    cli: Any, runtime: Any, make_token: Any, fan_out_plugins: None
) -> None:
    from worker.jobs.subjects import corporation_of

    token = make_token(PILOT, "Test Pilot One", SKILLS)
    corporation = corporation_of(runtime, PILOT)

    result = cli("jobs", "run", "fan_per_corporation", "--character", str(PILOT))

    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "fan_per_corporation: success"
    assert _rows_of(runtime, "fan_per_corporation") == [
        (corporation, PILOT, corporation, "success", token.id)
    ]


def test_jobs_run_of_a_once_job_for_an_unknown_character_fails(cli: Any) -> None:
    result = cli("jobs", "run", "character_assets", "--character", "999")

    assert result.exit_code == 1
    assert "character 999 has no valid token" in result.output


@pytest.mark.parametrize("character", [None, "999"])
def test_jobs_run_with_nobody_to_run_for_says_so_and_fails(
    cli: Any, runtime: Any, make_token: Any, fan_out_plugins: None, character: Any
) -> None:
    # given: no token holds the scope (or not the one of character 999)
    make_token(PILOT, "Test Pilot One", "esi-assets.read_assets.v1")
    args = ["--character", character] if character else []

    # when
    result = cli("jobs", "run", "fan_per_character", *args)

    # then: an error naming who lacks what; nothing was recorded as run
    assert result.exit_code == 1
    expected = "character 999 has no valid token" if character else "no valid token holds"
    assert expected in result.output and SKILLS in result.output
    assert _rows_of(runtime, "fan_per_character") == []


def test_jobs_list_shows_when_a_never_planned_fan_out_job_runs_first(
    cli: Any, make_token: Any, fan_out_plugins: None
) -> None:
    make_token(PILOT, "Test Pilot One", SKILLS)

    result = cli("jobs", "list")

    lines = {line.split()[0]: line for line in result.output.splitlines() if line}
    assert re.search(r" 20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ ", lines["fan_per_character"])
    assert "BROKEN" in lines["fan_broken"]
    assert "hunter2" not in result.output and "password=[redacted]" in result.output


def test_jobs_runs_never_shows_a_secret_even_from_an_old_record(
    cli: Any, runtime: Any
) -> None:
    # given: a record written before errors were scrubbed
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJDSEFSQUNURVIifQ.c2lnbmF0dXJlLXBhcnQ"
    with runtime.pool.connection() as conn:
        conn.execute(
            "INSERT INTO esi_job_run (job, started, finished, outcome, error)"
            " VALUES ('old', now(), now(), 'failure', %s)",
            (f"RuntimeError: refused {jwt} at https://x/y?token=r3fr3shS3cr3t",),
        )

    result = cli("jobs", "runs", "--failures")

    assert "refused [redacted]" in result.output
    assert jwt not in result.output and "r3fr3shS3cr3t" not in result.output


def test_jobs_new_refuses_python_keywords_and_registered_names(
    tmp_path: Path,
) -> None:
    for name, message in (
        ("class", "Python keyword"),
        ("lambda", "Python keyword"),
        ("market_orders", "already registered"),
    ):
        result = CliRunner().invoke(
            main, ["jobs", "new", name, "--directory", str(tmp_path)]
        )
        assert result.exit_code == 1 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_jobs_list_reads_next_runs_from_the_embedded_database(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    # given: no database URL, so the embedded PostgreSQL (in a process of
    # its own: the embedded server stops when its last user exits)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    env["ESI_WORKER_DATA_DIR"] = str(tmp_path / "data")

    # when
    result = subprocess.run(
        [sys.executable, "-m", "worker", "jobs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # then: the once-jobs never run are due now
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line}
    assert "due now" in lines["refresh_tokens"], result.stdout + result.stderr


def test_jobs_run_without_a_contact_address_sends_nothing(
    settings: Any, clean_db: Any, emulator: Any
) -> None:
    # given every setting but the contact address the User-Agent needs
    env = {
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_DATA_DIR": str(settings.data_dir),
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_CONTACT_EMAIL": "",
        "ESI_WORKER_MARKET_REGIONS": "[10000070]",
    }
    before = emulator.stats()["esi_requests"]

    # when a public job is run now
    result = CliRunner().invoke(main, ["jobs", "run", "market_orders"], env=env)

    # then it stops naming the setting, and ESI saw nothing
    assert result.exit_code != 0
    assert "ESI_WORKER_CONTACT_EMAIL" in result.output
    assert emulator.stats()["esi_requests"] == before


def test_jobs_runs_of_an_unknown_job_names_the_registered_ones(cli: Any) -> None:
    result = cli("jobs", "runs", "--job", "market_ordres")

    assert result.exit_code != 0
    assert "no job named 'market_ordres'" in result.output
    assert "market_orders" in result.output


@pytest.fixture
def unmigrated_url(pytestconfig: pytest.Config) -> Any:
    """A database of its own with no schema in it."""
    import secrets

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    admin_url = pytestconfig.getoption("--esi-worker-db")
    name = f"esi_worker_bare_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(**{**conninfo_to_dict(admin_url), "dbname": name})
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _list_jobs(database_url: str, tmp_path: Path) -> Any:
    env = {
        "ESI_WORKER_DATABASE_URL": database_url,
        "ESI_WORKER_DATA_DIR": str(tmp_path / "data"),
    }
    return CliRunner().invoke(main, ["jobs", "list"], env=env)


def test_jobs_list_on_a_missing_database_says_why_and_fails(tmp_path: Path) -> None:
    # given: a database URL, with a password, naming a database nobody created
    url = "postgresql://postgres:n0t-shown-pw@127.0.0.1:5432/esi_worker_no_such_db"

    # when
    result = _list_jobs(url, tmp_path)

    # then: the jobs are listed, then the reason; no migrate hint, no password
    assert result.exit_code == 1
    assert "market_orders" in result.stdout
    assert result.stderr.startswith(
        "Error: next runs unknown: cannot connect to PostgreSQL at "
        "127.0.0.1:5432/esi_worker_no_such_db"
    )
    assert 'database "esi_worker_no_such_db" does not exist' in result.stderr
    assert "migrate" not in result.stderr and "Error" not in result.stdout
    assert "n0t-shown-pw" not in result.output


def test_jobs_list_on_an_unmigrated_database_names_the_migrate_command(
    unmigrated_url: str, tmp_path: Path
) -> None:
    result = _list_jobs(unmigrated_url, tmp_path)

    assert result.exit_code == 1
    assert "market_orders" in result.stdout
    assert "is not created yet (head is " in result.stderr
    assert "run 'esi-worker migrate' first" in result.stderr
    assert "ConfigurationError" not in result.output
