"""Dashboards and alert rules, checked against a real Prometheus scraping a real run.

One workload for the module: ``esi-worker run --emulator`` in a subprocess
on its own database, with the emulator switched to short cache lifetimes,
short-lived access tokens and a few injected faults, so retries,
revalidations, 429s and failed refreshes really happen. Debian's
``prometheus`` scrapes it every second and evaluates the rules.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "alerts_test.yml"
METRIC_NAME = re.compile(r"\besi_worker_[a-z0-9_]+")
SELECTOR = re.compile(r"\besi_worker_[a-z0-9_]+(?:\{[^}]*\})?")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
# Jobs run every few seconds so rates and revalidations show up quickly.
JOB_INTERVALS = {
    "refresh_tokens": 2, "market_orders": 4, "character_assets": 4, "type_names": 6,
}
# Faults that exercise retries, a 429 and a transient refresh failure; short
# cache lifetimes so cached answers get revalidated.
EMULATOR_SWITCHES = {
    "cache_ttl_s": 3,
    "sso_faults": [{"status": 503}],
    "esi_faults": [
        {"status": 503, "path_contains": "/markets/", "count": 2},
        {"status": 429, "path_contains": "/universe/", "retry_after": 1, "count": 1},
    ],
}


@dataclass
class ObservedRun:
    """The running workload and the Prometheus watching it."""

    prometheus_url: str
    metrics_url: str
    started: float
    log_dir: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` at the current instant."""
        answer = requests.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
        )
        assert answer.status_code == 200, f"{expr!r}: {answer.text}"
        return list(answer.json()["data"]["result"])

    def exposition(self) -> str:
        """What the worker serves on /metrics right now."""
        return requests.get(self.metrics_url, timeout=10).text

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    """Debian's prometheus, installed on demand when this machine allows it."""
    if not shutil.which("prometheus") and shutil.which("apt-get") and os.geteuid() == 0:
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq",
                                                    "prometheus"]):
            subprocess.run(step, capture_output=True, timeout=600, check=False)
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's 'prometheus' package is not installed and could not be "
                    "installed (run as root: apt-get install -y prometheus)")
    return Path(binary)


@pytest.fixture(scope="module")
def observed_run(
    prometheus_binary: Path, pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ObservedRun]:
    """Given the emulator workload running, scraped by Prometheus every second."""
    tmp = tmp_path_factory.mktemp("observability")
    metrics_port, emulator_port, prometheus_port = _free_port(), _free_port(), _free_port()
    with _database(pytestconfig.getoption("--esi-worker-db")) as database_url:
        prometheus = _start_prometheus(prometheus_binary, tmp, prometheus_port, metrics_port)
        worker = _start_workload(tmp, database_url, metrics_port, emulator_port)
        run = ObservedRun(
            f"http://127.0.0.1:{prometheus_port}",
            f"http://127.0.0.1:{metrics_port}/metrics", time.time(), tmp,
        )
        try:
            _wait_for(lambda: _get_ok(f"{run.prometheus_url}/-/ready"), 60, run,
                      "Prometheus did not become ready")
            _wait_for(lambda: _get_ok(run.metrics_url), 90, run, "/metrics never came up")
            requests.patch(f"http://127.0.0.1:{emulator_port}/_emulator/config",
                           json=EMULATOR_SWITCHES, timeout=10).raise_for_status()
            _wait_for(lambda: _workload_seen(run), 90, run,
                      "the workload did not show up in Prometheus")
            yield run
        finally:
            for proc in (worker, prometheus):
                _stop(proc)


def test_promtool_accepts_the_alerting_rules() -> None:
    # given the rules file, when promtool checks it, then it passes
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package 'prometheus') is not installed")

    checked = subprocess.run([promtool, "check", "rules", str(RULES)],
                             capture_output=True, text=True, timeout=60, check=False)

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_in_promtool_unit_tests_of_its_condition() -> None:
    # given synthetic series for each alert's condition (alerts_test.yml)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package 'prometheus') is not installed")
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }

    # when promtool runs the unit tests
    result = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)],
                            capture_output=True, text=True, timeout=60, cwd=RULES.parent,
                            check=False)

    # then they pass, and every alert of the rules file fired in one of them
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_alert_names()) <= tested, f"untested alerts: {set(_alert_names()) - tested}"


def test_every_dashboard_panel_query_returns_data_from_prometheus(
    observed_run: ObservedRun,
) -> None:
    # given every panel query of every dashboard
    queries = [(name, expr) for name, expr in _panel_queries()]
    assert len(queries) >= 30

    # when Prometheus evaluates them on the scraped workload
    empty = [f"{name}: {expr}" for name, expr in queries if not observed_run.query(expr)]

    # then each returns at least one series
    assert not empty, "panels without data:\n" + "\n".join(empty) + observed_run.logs()


def test_every_alert_expression_or_its_selectors_returns_data(
    observed_run: ObservedRun,
) -> None:
    # given every alert rule; a healthy run legitimately leaves most alert
    # expressions empty (nothing fires), so for those the metric selectors
    # the expression is built on must return data instead
    missing = []
    for name, expr in _alert_exprs():
        if observed_run.query(expr):
            continue
        for selector in SELECTOR.findall(expr):
            if not observed_run.query(selector):
                missing.append(f"{name}: {selector}")

    # then nothing an alert depends on is missing
    assert not missing, "alerts built on missing series:\n" + "\n".join(missing)


def test_every_metric_named_in_dashboards_and_rules_is_exported_by_the_worker(
    observed_run: ObservedRun,
) -> None:
    # given the metric families on the worker's /metrics
    from prometheus_client.parser import text_string_to_metric_families

    exported = {f.name for f in text_string_to_metric_families(observed_run.exposition())}

    # when collecting every esi_worker_* name used by a panel or a rule
    used = {n for _, expr in [*_panel_queries(), *_alert_exprs()]
            for n in METRIC_NAME.findall(expr)}

    # then each is exported (counters and histograms by their family name)
    unknown = sorted(n for n in used if _family(n) not in exported and n not in exported)
    assert not unknown, f"named but not exported: {unknown}"


def test_no_label_value_on_metrics_looks_like_an_id_or_a_secret(
    observed_run: ObservedRun,
) -> None:
    # given the exposition after a workload that used characters and tokens
    from prometheus_client.parser import text_string_to_metric_families

    text = observed_run.exposition()
    labels = {
        (sample.name, key, value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for key, value in sample.labels.items()
        if key not in {"le", "quantile"}
    }

    # when scanning every label value
    suspicious = [item for item in labels if _looks_unbounded(item[2])]

    # then none is a character id, an access or refresh token or a secret
    assert labels, "the exposition has no labelled series at all"
    assert not suspicious, f"unbounded label values: {sorted(suspicious)[:20]}"
    assert "emulator-secret" not in text and "Bearer" not in text


def test_dashboards_render_to_png_from_the_run(
    observed_run: ObservedRun, tmp_path: Path
) -> None:
    # given the run's data in Prometheus (for the README's pictures,
    # RENDER_DASHBOARD_IMAGES=docs/images lets the workload run 4 minutes)
    out = Path(os.environ.get("RENDER_DASHBOARD_IMAGES", tmp_path))
    if "RENDER_DASHBOARD_IMAGES" in os.environ:
        time.sleep(max(0.0, observed_run.started + 240 - time.time()))
    minutes = max((time.time() - observed_run.started) / 60, 1.0)

    # when the headless renderer draws every dashboard
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "render_dashboards.py"), "--prometheus",
         observed_run.prometheus_url, "--minutes", f"{minutes:.2f}", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )

    # then one non-trivial PNG per dashboard comes out
    assert rendered.returncode == 0, rendered.stderr
    for dashboard in DASHBOARDS:
        png = out / f"dashboard-{dashboard.stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000


def test_dashboards_cover_each_area_and_every_panel_has_a_prometheus_query() -> None:
    # given the dashboard files, then overview + one per area, each panel queried
    assert {d.stem for d in DASHBOARDS} >= {"overview", "tokens", "esi", "jobs"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"].startswith("esi-worker-")
        for panel in dashboard["panels"]:
            assert panel["type"] in {"timeseries", "stat"}, (path.name, panel["title"])
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    provisioning = {p.name for p in (ROOT / "dashboards" / "provisioning").iterdir()}
    assert {"dashboards.yaml", "datasources.yaml"} <= provisioning


# -- helpers --


def _panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{path.stem}/{panel['title']}", target["expr"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


def _alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for g in groups for rule in g["rules"]]


def _alert_names() -> list[str]:
    return [name for name, _ in _alert_exprs()]


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _looks_unbounded(value: str) -> bool:
    # Character, corporation and region ids have 7 digits or more; tokens
    # are long runs of base64 or JWT segments.
    if re.search(r"\d{7,}", value) or value.startswith("eyJ"):
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9+/=_.-]{20,}", value)) and bool(
        re.search(r"\d", value) and re.search(r"[A-Z]", value)
    )


def _workload_seen(run: ObservedRun) -> bool:
    # Two finished rounds of the paged job and several refreshes, scraped.
    rounds = run.query('sum(esi_worker_job_runs_total{job="market_orders"})')
    refreshes = run.query('sum(esi_worker_token_refreshes_total{outcome="success"})')
    # Revalidations need a cache lifetime to pass first, and a rate needs
    # two scrapes of a series: wait until the 304 counters have a rate.
    revalidated = all(
        run.query(f"sum(rate({name}[5m]))")
        for name in ("esi_worker_esi_not_modified_total",
                     "esi_worker_cache_revalidations_total")
    )
    return (
        bool(rounds and refreshes and revalidated)
        and float(rounds[0]["value"][1]) >= 3
        and float(refreshes[0]["value"][1]) >= 4
    )


def _start_workload(
    tmp: Path, database_url: str, metrics_port: int, emulator_port: int
) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "ESI_WORKER_DATABASE_URL": database_url,
        "ESI_WORKER_METRICS_PORT": str(metrics_port),
        "ESI_WORKER_DATA_DIR": str(tmp / "data"),
        "ESI_WORKER_JOB_INTERVALS": json.dumps(JOB_INTERVALS),
        # Every token counts as due, so each refresh run calls SSO.
        "ESI_WORKER_REFRESH_AHEAD_S": "1190",
    }
    with open(tmp / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--emulator", "--emulator-port",
             str(emulator_port), "--duration", "600"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def _start_prometheus(
    binary: Path, tmp: Path, port: int, metrics_port: int
) -> subprocess.Popen[bytes]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{
            "job_name": "esi-worker",
            # The worker's own `job` label (the esi-worker job) must win.
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp / "prometheus.log", "wb") as log:
        return subprocess.Popen(
            [str(binary), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )


class _database:
    """A fresh, empty database of its own for the workload (it migrates it)."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._name = f"esi_worker_obs_{os.getpid()}_{secrets.token_hex(3)}"

    def __enter__(self) -> str:
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self._name}"')
        return make_conninfo(**{**conninfo_to_dict(self._admin_url), "dbname": self._name})

    def __exit__(self, *exc_info: object) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_for(condition: Any, deadline_s: float, run: ObservedRun, message: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{message}\n{run.logs()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
