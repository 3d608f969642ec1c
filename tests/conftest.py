"""Shared test set-up; the fixtures live in worker.testing.pytest_plugin."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def scrubbed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's ESI_WORKER_* settings."""
    for name in list(os.environ):
        if name.startswith("ESI_WORKER_"):
            monkeypatch.delenv(name)
