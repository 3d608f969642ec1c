"""Dashboards and alert rules, checked against a real Prometheus scraping a real run.

One workload for the module: ``esi-worker run --emulator`` in a subprocess
on its own database, scraped every second by Debian's ``prometheus``,
which also evaluates the rules. The emulator is switched so that what
the dashboards and alerts watch really happens: cached answers go stale
and are revalidated, 503s are retried, pages disagree, a 429 arrives, SSO
fails a refresh and rejects the application once, a character changes
owner; for a first phase ESI's error budget is small and a rate-limit
bucket tight, with another application of the same character spending
from it, so the limiter holds requests and defers runs. A token without
refresh token is stored so it is about to be lost.

Every alert expression is evaluated over the run: the alerts the
workload drives must have returned data (those without ``for`` must have
fired); for the others, each left-hand side must. The metrics the
workload must move have to show values above zero, not just series.
"""

from __future__ import annotations

import json
import math
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from worker.demo import DEMO_CHARACTERS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "alerts_test.yml"
METRIC_NAME = re.compile(r"\besi_worker_[a-z0-9_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
# What Grafana makes of $__rate_interval at this test's 1 s scrapes, and
# at the datasource's 15 s (4 scrape intervals).
RATE_INTERVAL = "1m"
# Jobs run every few seconds so rates and revalidations show up quickly;
# the assets job often enough to fill its tightened bucket.
JOB_INTERVALS = {
    "refresh_tokens": 2, "market_orders": 4, "character_assets": 2, "type_names": 6,
}
# The whole run: answers stay fresh 10 s (so calls hit the cache, then
# revalidate), Mitani's token (refreshed, used by no job) changes owner,
# 503s on the market (retried, then a failed run), its pages change
# mid-walk, a 429.
EMULATOR_SWITCHES = {
    "cache_ttl_s": 10,
    "esi_faults": [
        {"status": 503, "path_contains": "/markets/", "count": 6},
        {"status": 429, "path_contains": "/universe/", "retry_after": 1, "count": 1},
    ],
    "esi_mutations": [{"path_contains": "/markets/", "bump_after": 2, "bumps": 2}],
}
# Switched once Prometheus has scraped the worker: a refresh failure made
# before the first scrape would show as a counter already at 1, never as
# a rate (seen on a loaded machine, where Prometheus starts late).
OWNER_CHANGE = {"owner_changes": [96224792]}
# Once Mitani's owner change is seen: SSO fails one refresh and rejects
# the application once (which would hold Mitani's refresh back 2 minutes).
SSO_FAULTS = {"sso_faults": [{"status": 503}, {"kind": "invalid_client"}]}
# The first phase: an error budget just above the limiter's threshold in
# a short window, and a small bucket for the assets route. Lifted once
# everything the phase drives has been seen.
LIMITS_PHASE = {
    "error_budget": 26, "error_window_s": 10, "bucket_overrides": {"char-asset": "60/1m"},
}
LIMITS_LIFTED = {"error_budget": 100, "error_window_s": 60, "bucket_overrides": {}}
# Alerts whose whole expression the workload makes true at some point.
DRIVEN_ALERTS = {
    "EsiWorkerTokenRefreshDead", "EsiWorkerTokenRefreshConfigError",
    "EsiWorkerTokenRefreshTransientFailures", "EsiWorkerTokensAboutToBeLost",
    "EsiWorkerTokensAboutToBeLostSoon", "EsiWorkerErrorBudgetNearlySpent",
    "EsiWorkerHeldForErrorLimit", "EsiWorkerLimitedByEsi",
    "EsiWorkerRateLimitBucketFull",
}
# Alerts a healthy run of minutes cannot make true (a job overdue for
# twice its period, a scheduler gone): each left-hand side must have data.
UNDRIVEN_ALERTS = {
    "EsiWorkerJobOverdue": [
        "time() - max by (job) (esi_worker_job_last_success_timestamp_seconds)",
        "time() - max by (job) (esi_worker_job_tracked_since_timestamp_seconds)",
        "max by (job) (esi_worker_job_interval_seconds)",
    ],
    "EsiWorkerSchedulerMissing": [
        "time() - max(esi_worker_scheduler_heartbeat_timestamp_seconds)",
    ],
    "EsiWorkerNoSchedulerLeader": ["sum(esi_worker_scheduler_leader)"],
}
# What the workload must move above zero (waited for, bounded, since a
# rate needs two scrapes of a series), by what it shows.
MUST_MOVE = {
    "three rounds of the paged job": 'sum(esi_worker_job_runs_total{job="market_orders"}) >= 3',
    "successful refreshes": 'sum(esi_worker_token_refreshes_total{outcome="success"}) >= 4',
    "cache entries": 'sum(esi_worker_cache_entries{backend="memory"}) > 0',
    "cache bytes": 'sum(esi_worker_cache_bytes{backend="memory"}) > 0',
    "cache hits": "sum(rate(esi_worker_cache_hits_total[1m])) > 0",
    "304s": "sum(rate(esi_worker_esi_not_modified_total[1m])) > 0",
    "revalidations": "sum(rate(esi_worker_cache_revalidations_total[1m])) > 0",
    "transient retries": 'sum(rate(esi_worker_esi_retries_total{reason="transient"}[5m])) > 0',
    "page re-walks": 'sum(rate(esi_worker_esi_retries_total{reason="pages"}[5m])) > 0',
    "pages per results()": "sum(rate(esi_worker_esi_pages_sum[1m]))"
                           " / sum(rate(esi_worker_esi_pages_count[1m])) > 1",
    "runs deferred by limits":
        'sum(rate(esi_worker_job_runs_deferred_total{reason="limits"}[5m])) > 0',
}
# Panels whose data must not be all zero over the run.
MOVING_PANELS = {
    "esi/Cache hit ratio", "esi/Cache traffic", "esi/Cache entries", "esi/Cache size",
    "esi/Pages per results()", "esi/Retries", "esi/Held by the limiter",
    "jobs/Runs deferred by reason", "esi/420/429 received",
    "tokens/Refresh failures by SSO answer",
}
DRIVE_DEADLINE_S = 180.0
SPEND_EVERY_S = 20.0
# The renderer's palette has 12 colours; Grafana's legend reads well to there.
MAX_SERIES = 12
# A token without refresh token, due to die in 30 minutes.
NO_REFRESH_CHARACTER = 2119999999


@dataclass
class ObservedRun:
    """The running workload, the Prometheus watching it, and what was seen."""

    prometheus_url: str
    metrics_url: str
    emulator_url: str
    started: float
    log_dir: Path
    seen: dict[str, float] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` at the current instant."""
        return self._api("query", {"query": expr})

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` at every second of the run so far."""
        span = {"start": self.started, "end": time.time(), "step": 1}
        return self._api("query_range", {"query": expr, **span})

    def exposition(self) -> str:
        """What the worker serves on /metrics right now."""
        return requests.get(self.metrics_url, timeout=10).text

    def switch(self, switches: dict[str, Any]) -> None:
        """Change the emulator's switches."""
        answer = requests.patch(f"{self.emulator_url}/_emulator/config",
                                json=switches, timeout=10)
        answer.raise_for_status()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def _api(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.prometheus_url}/api/v1/{path}", params=params,
                              timeout=30)
        assert answer.status_code == 200, f"{params['query']!r}: {answer.text}"
        return list(answer.json()["data"]["result"])


def _prometheus_tool(name: str) -> Path:
    """A program of Debian's prometheus package, installed on demand when
    this machine allows it."""
    if not shutil.which(name) and shutil.which("apt-get") and os.geteuid() == 0:
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq",
                                                    "prometheus"]):
            subprocess.run(step, capture_output=True, timeout=600, check=False)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} (Debian's 'prometheus' package) is not installed and "
                    "could not be installed (run as root: apt-get install -y "
                    "prometheus)")
    return Path(found)


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    """Debian's prometheus server."""
    return _prometheus_tool("prometheus")


@pytest.fixture(scope="module")
def promtool() -> Path:
    """Debian's promtool."""
    return _prometheus_tool("promtool")


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
            f"http://127.0.0.1:{metrics_port}/metrics",
            f"http://127.0.0.1:{emulator_port}", time.time(), tmp,
        )
        try:
            # Switched as soon as the emulator answers, before the worker has
            # migrated: an answer served earlier would keep its recorded
            # lifetime (minutes) instead of the switched 10 s.
            _wait_for(lambda: _get_ok(f"{run.emulator_url}/_emulator/config"), 90, run,
                      "the emulator never came up", poll_s=0.05)
            other_app = _other_app_token(run)
            run.switch({**EMULATOR_SWITCHES, **LIMITS_PHASE})
            _wait_for(lambda: _get_ok(f"{run.prometheus_url}/-/ready"), 60, run,
                      "Prometheus did not become ready")
            _wait_for(lambda: _get_ok(run.metrics_url), 90, run, "/metrics never came up")
            _store_token_without_refresh(database_url)
            _drive(run, other_app)
            run.switch(LIMITS_LIFTED)
            yield run
        finally:
            for proc in (worker, prometheus):
                _stop(proc)


def test_promtool_accepts_the_alerting_rules(promtool: Path) -> None:
    # given the rules file, when promtool checks it, then it passes

    checked = subprocess.run([promtool, "check", "rules", str(RULES)],
                             capture_output=True, text=True, timeout=60, check=False)

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_in_promtool_unit_tests_of_its_condition(
    promtool: Path,
) -> None:
    # given synthetic series for each alert's condition (alerts_test.yml)
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


def test_the_workload_moves_every_metric_it_must(observed_run: ObservedRun) -> None:
    # given the conditions the workload was driven to, waited for (bounded)
    # when comparing with what Prometheus saw, then each was seen above zero
    missing = sorted(set(MUST_MOVE) - set(observed_run.seen))
    assert not missing, f"never seen: {missing}\n{observed_run.logs()}"


def test_every_dashboard_panel_query_returns_a_number_from_prometheus(
    observed_run: ObservedRun,
) -> None:
    # given every panel query of every dashboard
    queries = _panel_queries()
    assert len(queries) >= 40

    # when Prometheus evaluates them on the scraped workload
    results = {(name, expr): observed_run.query(expr) for name, expr in queries}

    # then each returns at least one series with a value that is not NaN,
    # and no panel more series than the pictures have colours
    empty = [f"{name}: {expr}" for (name, expr), r in results.items() if not _finite(r)]
    assert not empty, "panels without a number:\n" + "\n".join(empty) + observed_run.logs()
    crowded = [f"{name}: {len(r)} series" for (name, _), r in results.items()
               if len(r) > MAX_SERIES]
    assert not crowded, "panels with too many series:\n" + "\n".join(crowded)


def test_panels_of_what_the_workload_moves_show_values_above_zero(
    observed_run: ObservedRun,
) -> None:
    # given the panels of cache, pages, retries, limits and failures
    panels = {name for name, _ in _panel_queries()}
    assert MOVING_PANELS <= panels, MOVING_PANELS - panels

    # when their queries are evaluated over the whole run
    flat = [
        f"{name}: {expr}"
        for name, expr in _panel_queries()
        if name in MOVING_PANELS and not _above_zero(observed_run.query_range(expr))
    ]

    # then every one of them rose above zero at some point
    assert not flat, "panels stuck at zero:\n" + "\n".join(flat)


def test_every_driven_alert_expression_returned_data_during_the_run(
    observed_run: ObservedRun,
) -> None:
    # given every alert rule, each either driven by the workload or not
    rules = _alert_rules()
    assert set(rules) == DRIVEN_ALERTS | set(UNDRIVEN_ALERTS), (
        "classify every alert as driven or not in this module")

    # when the driven ones are evaluated at every second of the run
    silent = [name for name in sorted(DRIVEN_ALERTS)
              if not observed_run.query_range(rules[name]["expr"])]

    # then each returned data; those without `for` went firing in Prometheus
    assert not silent, f"driven alerts never true: {silent}\n{observed_run.logs()}"
    immediate = sorted(n for n in DRIVEN_ALERTS if "for" not in rules[n])
    fired = {
        series["metric"]["alertname"]
        for series in observed_run.query_range('ALERTS{alertstate="firing"}')
    }
    assert set(immediate) <= fired, f"never fired: {set(immediate) - fired}"


def test_every_undriven_alert_has_data_on_each_side_it_compares(
    observed_run: ObservedRun,
) -> None:
    # given the alerts a short healthy run cannot make true, and the parts
    # of their expressions that compare (taken from the expressions)
    rules = _alert_rules()
    missing = []
    for name, parts in UNDRIVEN_ALERTS.items():
        expr = _squeezed(rules[name]["expr"])
        for part in parts:
            assert _squeezed(part) in expr, f"{name} no longer compares {part!r}"

            # when each part is evaluated now
            if not _finite(observed_run.query(part)):
                missing.append(f"{name}: {part}")

    # then each has a number: the alert could fire on real data
    assert not missing, "alert parts without data:\n" + "\n".join(missing)


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


@pytest.mark.timeout(900)
def test_dashboards_render_to_png_from_the_run(
    observed_run: ObservedRun, tmp_path: Path
) -> None:
    # given the run's data in Prometheus (for the README's pictures,
    # RENDER_DASHBOARD_IMAGES=docs/images lets the workload run 9 minutes,
    # so the limits phase, its end and steady rates all show)
    out = Path(os.environ.get("RENDER_DASHBOARD_IMAGES", tmp_path))
    if "RENDER_DASHBOARD_IMAGES" in os.environ:
        time.sleep(max(0.0, observed_run.started + 540 - time.time()))
    minutes = max((time.time() - observed_run.started) / 60, 1.0)

    # when the headless renderer draws every dashboard
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "render_dashboards.py"), "--prometheus",
         observed_run.prometheus_url, "--minutes", f"{minutes:.2f}", "--out", str(out),
         "--rate-interval", RATE_INTERVAL],
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


def test_no_dashboard_panel_mixes_units() -> None:
    # given every panel: one unit on its axis, so no query of it may
    # measure a count beside seconds or bytes
    mixed = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            kinds = {_quantity(t["expr"]) for t in panel["targets"]}
            if len(kinds) > 1:
                mixed.append(f"{path.stem}/{panel['title']}: {sorted(kinds)}")

    # then each panel's queries measure one kind of quantity
    assert not mixed, "panels mixing units:\n" + "\n".join(mixed)


# -- helpers --


def _panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{path.stem}/{panel['title']}",
         target["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


def _alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for g in groups for rule in g["rules"]}


def _alert_exprs() -> list[tuple[str, str]]:
    return [(name, rule["expr"]) for name, rule in _alert_rules().items()]


def _alert_names() -> list[str]:
    return list(_alert_rules())


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _squeezed(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


def _quantity(expr: str) -> str:
    # What a query measures, read from the metric names it uses.
    names = set(METRIC_NAME.findall(expr))
    if any(n.endswith(("_seconds", "_seconds_total", "_seconds_bucket")) for n in names):
        return "seconds"
    if any(n.endswith("_bytes") for n in names):
        return "bytes"
    return "count"


def _values(result: list[dict[str, Any]]) -> Iterator[float]:
    for series in result:
        points = series.get("values") or [series["value"]]
        for _at, value in points:
            yield float(value)


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(v) for v in _values(result))


def _above_zero(result: list[dict[str, Any]]) -> bool:
    return any(v > 0 for v in _values(result) if not math.isnan(v))


def _looks_unbounded(value: str) -> bool:
    # Character, corporation and region ids have 7 digits or more; tokens
    # are long runs of base64 or JWT segments.
    if re.search(r"\d{7,}", value) or value.startswith("eyJ"):
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9+/=_.-]{20,}", value)) and bool(
        re.search(r"\d", value) and re.search(r"[A-Z]", value)
    )


def _drive(run: ObservedRun, other_app: str) -> None:
    # Polls until every condition has been seen once, within the deadline;
    # what was never seen fails the tests that need it, with the logs.
    rules = _alert_rules()
    wanted = {**MUST_MOVE, **{name: rules[name]["expr"] for name in DRIVEN_ALERTS}}
    spent_at, faults_on, owner_switched = -math.inf, False, False
    deadline = time.monotonic() + DRIVE_DEADLINE_S
    while time.monotonic() < deadline and set(wanted) - set(run.seen):
        for name in sorted(set(wanted) - set(run.seen)):
            if run.query(wanted[name]):
                run.seen[name] = time.time()
        if not owner_switched and run.query(
            'sum(esi_worker_token_refreshes_total{outcome="owner_changed"}) == 0'
        ):
            run.switch(OWNER_CHANGE)
            owner_switched = True
        if "EsiWorkerTokenRefreshDead" in run.seen and not faults_on:
            run.switch(SSO_FAULTS)
            faults_on = True
        if "EsiWorkerRateLimitBucketFull" not in run.seen and (
            time.monotonic() - spent_at > SPEND_EVERY_S
        ):
            _spend_like_another_app(run, other_app)
            spent_at = time.monotonic()
        time.sleep(1.0)


def _other_app_token(run: ObservedRun) -> str:
    # Asked before the SSO faults are switched on, which it would take.
    from worker.emulator import EmulatorConfig

    character_id, name, scopes = DEMO_CHARACTERS[0]
    app = EmulatorConfig()
    grant = requests.post(
        f"{run.emulator_url}/_emulator/grants", timeout=10,
        json={"character_id": character_id, "character_name": name,
              "scopes": list(scopes)},
    ).json()
    answer = requests.post(
        f"{run.emulator_url}/v2/oauth/token", auth=(app.client_id, app.client_secret),
        data={"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def _spend_like_another_app(run: ObservedRun, access_token: str) -> None:
    # Another application of the same character spends from the assets
    # bucket: the worker can learn of that only from X-Ratelimit-Remaining
    # (its own spending never fills a bucket past its margin).
    character_id = DEMO_CHARACTERS[0][0]
    for _ in range(60):
        answer = requests.get(
            f"{run.emulator_url}/latest/characters/{character_id}/assets/",
            params={"page": 1}, headers={"Authorization": f"Bearer {access_token}"},
            timeout=10,
        )
        if int(answer.headers.get("X-Ratelimit-Remaining", "0")) <= 4:
            return


def _store_token_without_refresh(database_url: str) -> None:
    # Valid for 30 more minutes and then gone: "about to be lost". No
    # scopes, so no job picks it; no refresh token, so none renews it.
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO esi_token (access_token, refresh_token, access_expires,"
            " character_id, character_name, character_owner_hash)"
            " VALUES ('unused', NULL, now() + interval '30 minutes', %s,"
            " 'No Refresh Pilot', 'owner')",
            (NO_REFRESH_CHARACTER,),
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
        # A hold longer than this defers the run ("limits").
        "ESI_WORKER_ESI_LIMIT_MAX_WAIT_S": "5",
        # Few threads, so runs wait in the queue while others are held.
        "ESI_WORKER_WORKER_THREADS": "3",
    }
    with open(tmp / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--emulator", "--emulator-port",
             str(emulator_port), "--use-configured-services", "--duration", "900"],
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


def _wait_for(
    condition: Any, deadline_s: float, run: ObservedRun, message: str,
    poll_s: float = 0.5,
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    pytest.fail(f"{message}\n{run.logs()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
