"""Where metrics are served: one port per process, and a scrape config that fits."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from worker.errors import ConfigurationError
from worker.metrics.server import start_metrics_server

ROOT = Path(__file__).resolve().parent.parent


def test_a_port_already_in_use_is_refused_naming_the_setting() -> None:
    # given a port another process serves on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when a metrics server is started on it, then the error says what to set
        with pytest.raises(ConfigurationError) as caught:
            start_metrics_server("127.0.0.1", port, CollectorRegistry())
    assert "ESI_WORKER_METRICS_PORT" in str(caught.value)
    assert str(port) in str(caught.value)


def test_the_procfile_gives_worker_and_scheduler_the_ports_prometheus_scrapes() -> None:
    # given the Procfile's processes and the example scrape configuration
    ports = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        role, _, command = line.partition(":")
        found = re.search(r"ESI_WORKER_METRICS_PORT=(\d+)", command)
        if role in {"worker", "scheduler"}:
            assert found, f"{role} serves on the default port: {line!r}"
            ports[role] = int(found.group(1))
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.example.yml").read_text())
    targets = {
        group["labels"]["role"]: int(target.rsplit(":", 1)[1])
        for scrape in config["scrape_configs"]
        for group in scrape["static_configs"]
        for target in group["targets"]
    }

    # then the two never share a port, and each is where Prometheus looks
    assert ports["worker"] != ports["scheduler"]
    assert targets == ports


def test_the_example_scrape_config_keeps_the_job_label_of_the_metrics() -> None:
    # given the example configuration, then every scrape honours the
    # metrics' own `job` label (the dashboards group by it)
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.example.yml").read_text())
    assert all(scrape.get("honor_labels") is True for scrape in config["scrape_configs"])


def test_a_metric_file_still_being_created_does_not_break_a_scrape(
    tmp_path: Path,
) -> None:
    # given a process group's folder where a starting process has just
    # created its file, still empty
    from prometheus_client import generate_latest

    from worker.metrics.server import multiprocess_registry

    (tmp_path / "counter_4242.db").write_bytes(b"")

    # when the group's registry is scraped, then it answers (with nothing)
    assert generate_latest(multiprocess_registry(tmp_path)) == b""
