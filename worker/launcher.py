"""``esi-worker worker --processes N``: N worker processes, one metrics endpoint.

prometheus-client picks its storage when it is first imported, so every
worker is a freshly spawned interpreter that finds
``PROMETHEUS_MULTIPROC_DIR`` already set; this launcher sets it, then
serves the sum of the processes' files. It never reads the variable at
import: only :func:`launch_workers` touches the environment.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from .jobs import JobRegistry
from .jobs.registry import check_job_names
from .metrics.server import multiprocess_registry, start_metrics_server
from .settings import Settings
from .signals import stop_on_signals

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TEMP_PREFIX = "esi-worker-metrics-"
STOP_TIMEOUT_S = 30.0
POLL_S = 1.0


def launch_workers(
    settings: Settings, processes: int, stop: threading.Event | None = None
) -> None:
    """Run ``processes`` worker processes until SIGINT/SIGTERM or ``stop``.

    A worker that dies is started again; its counters stay counted.

    :raises ConfigurationError: the settings name a job no plugin registers
        (checked here, or each worker would die of it and be started again).
    """
    check_job_names(settings, JobRegistry())
    stop = stop or stop_on_signals()
    metrics_dir, owned = _metrics_dir(settings)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    try:
        if settings.metrics_port:
            registry = multiprocess_registry(metrics_dir)
            start_metrics_server(settings.metrics_host, settings.metrics_port, registry)
        _supervise(settings, processes, stop)
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, processes: int, stop: threading.Event) -> None:
    context = multiprocessing.get_context("spawn")
    children = [_spawn(context, settings, i) for i in range(processes)]
    log.info("started %d worker processes", processes)

    while not stop.wait(POLL_S):
        for index, child in enumerate(children):
            if not child.is_alive():
                log.warning("worker process %d exited (%s); starting it again",
                            index, child.exitcode, extra={"pid": child.pid})
                _mark_dead(child.pid)
                children[index] = _spawn(context, settings, index)

    log.info("stopping %d worker processes", len(children))
    for child in children:
        if child.is_alive() and child.pid:
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join(STOP_TIMEOUT_S)
        if child.is_alive():
            child.kill()
        _mark_dead(child.pid)


def _spawn(context: Any, settings: Settings, index: int) -> Any:
    child = context.Process(
        target=_worker_process, args=(settings,), name=f"esi-worker-{index}"
    )
    child.start()
    log.debug("worker process %d has pid %d", index, child.pid)
    return child


def _worker_process(settings: Settings) -> None:
    # Runs in the spawned child: logging is set up like the CLI would.
    # Nothing scrapes a child, so its cache and limit gauges are written
    # to its metric files on a timer instead of at scrape time.
    from .logs import configure_logging
    from .metrics.refresh import start_refreshing
    from .runner import run_worker

    configure_logging(settings.log_level)
    start_refreshing()
    run_worker(settings, processes=1, serve=False)


def _metrics_dir(settings: Settings) -> tuple[Path, bool]:
    # Files of an earlier launch would be added to this one's counters.
    if settings.metrics_multiproc_dir is None:
        _remove_orphaned_dirs(Path(tempfile.gettempdir()))
        prefix = f"{TEMP_PREFIX}{os.getpid()}-"
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    path = settings.metrics_multiproc_dir
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path, False


def _remove_orphaned_dirs(root: Path) -> None:
    # A launcher killed with SIGKILL never reaches its cleanup; its folder
    # names its pid, so the next launch can tell it is gone.
    for path in root.glob(f"{TEMP_PREFIX}*-*"):
        pid = path.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            log.info("removing the metrics folder %s of a launcher that is gone", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _mark_dead(pid: int | None) -> None:
    from prometheus_client import multiprocess

    if pid:
        multiprocess.mark_process_dead(pid, os.environ[MULTIPROC_ENV])
