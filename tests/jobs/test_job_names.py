"""Job names in the settings must be registered: a typo stops the processes."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.errors import ConfigurationError
from worker.jobs import JobRegistry
from worker.jobs.registry import check_job_names
from worker.settings import Settings

TYPOS = '{"nosuch": 5, "market_order": 60}'


def test_unknown_names_in_the_intervals_are_refused_naming_the_known_ones() -> None:
    # given: intervals for a job nobody registers and a misspelt one
    settings = Settings.from_env(job_intervals={"nosuch": 5, "market_order": 60})

    # when / then
    with pytest.raises(ConfigurationError) as caught:
        check_job_names(settings, JobRegistry())
    message = str(caught.value)
    assert message.startswith("ESI_WORKER_JOB_INTERVALS names unknown jobs: ")
    assert "'market_order' (did you mean 'market_orders'?), 'nosuch'" in message
    assert "(registered jobs: character_assets, market_orders, prune_tokens" in message


def test_an_unknown_disabled_job_is_refused_and_known_names_pass() -> None:
    # given
    typo = Settings.from_env(disabled_jobs=["type_name"])
    fine = Settings.from_env(
        job_intervals={"market_orders": 600}, disabled_jobs=["type_names"]
    )

    # when / then
    with pytest.raises(ConfigurationError, match="ESI_WORKER_DISABLED_JOBS names"):
        check_job_names(typo, JobRegistry())
    check_job_names(fine, JobRegistry())


@pytest.fixture
def env(settings: Any, clean_db: Any, emulator: Any) -> dict[str, str]:
    """Everything a process needs, and intervals with two unknown job names."""
    return {
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_BROKER_URL": "redis://127.0.0.1:6379/12",
        "ESI_WORKER_DATA_DIR": str(settings.data_dir),
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.client_id,
        "ESI_WORKER_SSO_CLIENT_SECRET": emulator.client_secret,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_METRICS_PORT": "0",
        "ESI_WORKER_JOB_INTERVALS": TYPOS,
    }


@pytest.mark.parametrize(
    "command",
    [["scheduler"], ["worker"], ["worker", "--processes", "2"], ["run"]],
    ids=" ".join,
)
def test_a_process_with_an_unknown_job_name_stops_with_one_clear_line(
    env: dict[str, str], command: list[str]
) -> None:
    # when
    result = CliRunner().invoke(main, command, env=env)

    # then: the usual one-line error, exit 1, no traceback
    assert result.exit_code == 1, result.output
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: ESI_WORKER_JOB_INTERVALS names unknown jobs")
    assert "'nosuch'" in error and "market_orders" in error
    assert "Traceback" not in result.output


def test_jobs_list_warns_of_an_unknown_job_name_and_still_lists(
    env: dict[str, str],
) -> None:
    # when
    result = CliRunner().invoke(main, ["jobs", "list"], env=env)

    # then
    assert result.exit_code == 0, result.output
    assert "market_orders" in result.stdout
    assert result.stderr.startswith("Warning: ESI_WORKER_JOB_INTERVALS names")
    assert "(did you mean 'market_orders'?)" in result.stderr
