"""The HTTP endpoint Prometheus scrapes."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def start_metrics_server(host: str, port: int) -> int:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread.

    :returns: the port bound (useful when ``port`` is 0).
    """
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics served on http://%s:%d/metrics", host, bound)
    return int(bound)
