"""Shared test set-up; the fixtures live in worker.testing.pytest_plugin."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Set for the whole session, before any fixture of any scope runs, so a
    # command a module-scoped fixture starts never sees ~/.local/share.
    home = Path(tempfile.mkdtemp(prefix="esi-worker-xdg-data-"))
    config.stash[_DATA_HOME] = (home, os.environ.get("XDG_DATA_HOME"))
    os.environ["XDG_DATA_HOME"] = str(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    home, before = config.stash.get(_DATA_HOME, (None, None))
    if home is None:
        return
    if before is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = before
    # An embedded server a test left running may still hold files there.
    shutil.rmtree(home, ignore_errors=True)


_DATA_HOME = pytest.StashKey[tuple]()


@pytest.fixture(scope="session")
def session_data_home(pytestconfig: pytest.Config) -> Path:
    """A data home for the session, standing in for ~/.local/share."""
    return pytestconfig.stash[_DATA_HOME][0]  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def scrubbed_environment(
    monkeypatch: pytest.MonkeyPatch, session_data_home: Path
) -> None:
    """No test sees the developer's ESI_WORKER_* settings or data folder.

    XDG_DATA_HOME points at a folder of the session, so a command run with
    the default data folder (and its embedded PostgreSQL) never touches the
    developer's own, in this process or in a child.
    """
    for name in list(os.environ):
        if name.startswith("ESI_WORKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(session_data_home))
