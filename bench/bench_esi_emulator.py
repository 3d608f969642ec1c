"""Helper of the bench_esi_* scripts: the emulator in a child process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import requests


@contextlib.contextmanager
def emulator_process(**switches: object) -> Iterator[str]:
    """An emulator in its own process; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-m", "worker.emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{base}/_emulator/stats", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        if switches:
            requests.patch(f"{base}/_emulator/config", json=switches, timeout=5)
        yield base
    finally:
        child.terminate()
        child.wait(timeout=10)
