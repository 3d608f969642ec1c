"""The HTTP endpoint Prometheus scrapes, for one process or for a process group."""

from __future__ import annotations

import glob
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import ConfigurationError
from .refresh import refresh_process_gauges

log = logging.getLogger(__name__)


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> int:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    :returns: the port bound (useful when ``port`` is 0).
    :raises ConfigurationError: the address cannot be bound (port taken).
    """
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
            "give each process its own ESI_WORKER_METRICS_PORT (0 turns the "
            "endpoint off)"
        ) from exc
    bound = int(server.server_address[1])
    log.info("metrics served on http://%s:%d/metrics", host, bound)
    return bound


def process_registry(
    refreshers: Iterable[Callable[[], None]] = (),
) -> CollectorRegistry:
    """A fresh registry showing this process's metrics, ready for extra collectors.

    Each server gets its own, so registering the database gauges twice
    (two runs in one interpreter, as in tests) never clashes.

    :param refreshers: called on every scrape before the metrics are read,
        after this process's cache and limit gauges are brought up to date.
    """
    registry = CollectorRegistry()
    registry.register(_ProcessMetrics([refresh_process_gauges, *refreshers]))
    return registry


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry adding up the metric files every process wrote under ``path``."""
    registry = CollectorRegistry()
    _StartedFilesCollector(registry, path=str(path))
    return registry


class _StartedFilesCollector(MultiProcessCollector):
    """prometheus-client's multiprocess collector, minus files being created.

    A process that is just starting creates its metric file empty and only
    then sizes it; a scrape in between fails on the whole file set with a
    ``struct.error``. Such a file holds no sample yet, so it is skipped.
    """

    def collect(self) -> Iterable[Metric]:
        for attempt in range(3):
            files = [
                name for name in glob.glob(os.path.join(self._path, "*.db"))
                if _holds_header(name)
            ]
            try:
                return self.merge(files, accumulate=True)
            except (OSError, struct.error):
                # A process ended (its file removed) or began mid-read: the
                # next listing no longer holds that file in that state.
                if attempt == 2:
                    raise
        return []


def _holds_header(name: str) -> bool:
    try:
        return os.path.getsize(name) >= 8  # the used-bytes word and padding
    except OSError:  # removed since the listing: a process that ended
        return False


class _ProcessMetrics(Collector):
    """Everything in the process-wide default registry, its gauges refreshed."""

    def __init__(self, refreshers: list[Callable[[], None]]) -> None:
        self._refreshers = refreshers

    def collect(self) -> Iterator[Metric]:
        for refresh in self._refreshers:
            try:
                refresh()
            except Exception as exc:  # noqa: BLE001 (a scrape shows what it can)
                log.warning("gauges not refreshed: %s", type(exc).__name__)
        yield from REGISTRY.collect()
