"""The example plugin: installed as its own package, found only by entry point,
tested with the pytest plugin esi-worker ships."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.jobs import JobRegistry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "esi-worker-example"
JOBS = {"example_skills", "example_server_status"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example built and installed into a folder of its own (no dependencies)."""
    root = tmp_path_factory.mktemp("example")
    source = root / "source"
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    return {"source": source, "site": site, "env": {**env, "PYTHONPATH": str(site)}}


def test_the_example_is_not_part_of_esi_worker_itself() -> None:
    assert JOBS.isdisjoint(JobRegistry().names())


def test_once_installed_its_jobs_are_listed_with_their_package(
    installed: dict[str, Any],
) -> None:
    # when: the operator lists jobs in an environment where the example is installed
    result = subprocess.run(
        [sys.executable, "-m", "worker", "jobs", "list"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # then: both jobs show, with their package, schedule, fan-out and scopes
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line}
    assert "esi-worker-example 0.1.0" in lines["example_skills"]
    assert "per_character" in lines["example_skills"]
    assert "esi-skills.read_skills.v1" in lines["example_skills"]
    assert "every 300 s" in lines["example_server_status"]


def test_its_own_tests_pass_with_the_shipped_pytest_plugin(
    installed: dict[str, Any],
    pytestconfig: pytest.Config,
) -> None:
    # when: the example's tests run against the installed package
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(installed["source"] / "tests"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            f"--esi-worker-db={pytestconfig.getoption('--esi-worker-db')}",
        ],
        env=installed["env"],
        cwd=installed["site"].parent,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    # then: they pass, using only esi-worker's fixtures
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout
