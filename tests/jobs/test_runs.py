"""Runs: deferred in downtime and when ESI reports a route down, retried by
policy, counted (pages, ESI calls, cache hits), trimmed when old."""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from worker.clock import FrozenClock
from worker.errors import ErrorLimitedError, RateLimitedError
from worker.jobs import JobContext, JobRegistry, job
from worker.runs import RunGuard, execute_job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

DOWNTIME = dt.datetime(2026, 3, 2, 11, 5, 0, tzinfo=dt.UTC)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _rows(runtime: Runtime) -> list[dict[str, Any]]:
    from worker.jobs.records import recent_runs

    with runtime.pool.connection() as conn:
        return recent_runs(conn, 100)


@pytest.fixture
def downtime_runtime(frozen_runtime: Runtime) -> Runtime:
    frozen_runtime.settings = frozen_runtime.settings.replace(
        esi_downtime_utc="11:00-11:15"
    )
    return frozen_runtime


@pytest.mark.parametrize("minute", [0, 7, 14])
def test_a_run_in_esi_downtime_is_deferred_to_after_the_window(
    downtime_runtime: Runtime,
    clock: FrozenClock,
    probe_jobs: dict[str, Any],
    probe: Any,
    minute: int,
) -> None:
    # given: the clock inside ESI's daily downtime
    clock._now = DOWNTIME.replace(minute=minute)
    worker = StartedWorker(
        downtime_runtime, JobRegistry("none", extra=probe_jobs.values())
    )
    before = _sample(
        "esi_worker_job_runs_deferred_total", job="once_probe", reason="downtime"
    )
    try:
        # when: the scheduler plans the once-job
        worker.plan("once_probe")

        # then: the run is recorded as deferred, not failed, and the job did not run
        run = worker.runs("once_probe")[0]
        assert (run["outcome"], run["deferred_reason"]) == ("deferred", "downtime")
        window_end = DOWNTIME.replace(minute=15)
        assert window_end <= run["next_due"] <= window_end + dt.timedelta(minutes=5)
        assert probe.calls == []
        assert (
            _sample(
                "esi_worker_job_runs_deferred_total",
                job="once_probe",
                reason="downtime",
            )
            == before + 1
        )

        # and: once the window is over the plan runs it
        clock._now = run["next_due"] + dt.timedelta(seconds=1)
        assert worker.plan("once_probe") == 1
        assert worker.runs("once_probe")[0]["outcome"] == "success"
        assert len(probe.calls) == 1
    finally:
        worker.stop()


def test_token_upkeep_goes_on_through_the_downtime(
    downtime_runtime: Runtime, clock: FrozenClock
) -> None:
    clock._now = DOWNTIME
    assert (
        RunGuard(downtime_runtime).deferral(
            JobRegistry().get("refresh_tokens"), clock.now()
        )
        is None
    )


@pytest.fixture
def status_server() -> Iterator[dict[str, Any]]:
    """A real HTTP server answering ``/meta/status`` with a settable document."""
    state: dict[str, Any] = {"routes": [], "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["requests"] += 1
            if self.path != "/meta/status":
                self.send_error(404)
                return
            body = json.dumps({"routes": state["routes"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("reported", ["Down", "down"])
def test_a_run_is_deferred_while_esi_reports_its_route_down(
    frozen_runtime: Runtime,
    status_server: dict[str, Any],
    probe: Any,
    reported: str,
) -> None:
    # given: ESI's status lists the job's route as down (other routes OK)
    status_server["routes"] = [
        {
            "method": "GET",
            "path": "/characters/{character_id}/skills",
            "status": reported,
        },
        {"method": "GET", "path": "/status", "status": "OK"},
    ]
    settings = frozen_runtime.settings.replace(esi_base_url=status_server["url"])
    frozen_runtime.settings = settings

    @job("skills_probe", every=600, routes=["/v4/characters/{character_id}/skills/"])
    def skills_probe(ctx: JobContext) -> None:
        probe.record(ctx)

    @job("status_probe", every=600, routes=["GET /status/"])
    def status_probe(ctx: JobContext) -> None:
        probe.record(ctx)

    registry = JobRegistry("none", extra=[skills_probe, status_probe])
    guard = RunGuard(frozen_runtime)

    # when
    outcomes = [
        execute_job(frozen_runtime, registry, name, guard=guard)
        for name in ("skills_probe", "status_probe")
    ]

    # then: the job on the route that is down is deferred, the other runs;
    # the status document was read once for both
    assert outcomes == ["deferred", "success"]
    assert [name for name, _, _ in probe.calls] == ["status_probe"]
    deferred = next(r for r in _rows(frozen_runtime) if r["job"] == "skills_probe")
    assert deferred["deferred_reason"] == "route_down"
    assert "/v4/characters/{character_id}/skills/" in deferred["error"]
    assert status_server["requests"] == 1


def test_an_unreadable_status_document_blocks_nothing(
    frozen_runtime: Runtime, probe: Any
) -> None:
    # given: the emulator, which serves no status document at all
    @job("guarded", every=600, routes=["/characters/{character_id}/skills/"])
    def guarded(ctx: JobContext) -> None:
        probe.record(ctx)

    # when / then
    assert (
        execute_job(frozen_runtime, JobRegistry("none", extra=[guarded]), "guarded")
        == "success"
    )


@pytest.mark.parametrize(
    "error",
    [
        ErrorLimitedError("420", reset_s=42),
        RateLimitedError("429", retry_after_s=42, group="char-skill"),
    ],
)
def test_esi_limits_defer_the_run_until_they_reset(
    redis_worker: StartedWorker,
    frozen_runtime: Runtime,
    clock: FrozenClock,
    error: Exception,
) -> None:
    @job("limited", every=600)
    def limited(ctx: JobContext) -> None:
        raise error

    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[limited]))
    try:
        worker.plan("limited")
        run = worker.runs("limited")[0]
    finally:
        worker.stop()

    assert (run["outcome"], run["deferred_reason"]) == ("deferred", "limits")
    assert run["next_due"] == clock.now() + dt.timedelta(seconds=42)


def test_a_failed_run_is_retried_by_the_jobs_policy_then_waits_for_its_slot(
    frozen_runtime: Runtime,
    clock: FrozenClock,
) -> None:
    # given: a job that always fails, with two retries 30 s apart (doubling)
    attempts: list[int] = []

    @job("flaky", every=3600, retries=2, retry_backoff=30)
    def flaky(ctx: JobContext) -> None:
        attempts.append(1)
        raise RuntimeError("ESI said no")

    worker = StartedWorker(frozen_runtime, JobRegistry("none", extra=[flaky]))
    try:
        # when: the plan runs it, then ticks every 10 s for five minutes
        worker.plan("flaky")
        for _ in range(30):
            clock.advance(10)
            worker.plan("flaky")
        runs = list(reversed(worker.runs("flaky")))
    finally:
        worker.stop()

    # then: the first run and two retries, 30 s then 60 s later; then nothing
    assert [r["attempt"] for r in runs] == [0, 1, 2]
    assert all(
        r["outcome"] == "failure" and r["error"] == "RuntimeError: ESI said no"
        for r in runs
    )
    gaps = [
        (b["due"] - a["finished"]).total_seconds() for a, b in itertools.pairwise(runs)
    ]
    assert gaps == [30, 60]
    assert runs[-1]["next_due"] is None


def test_a_run_counts_its_pages_esi_calls_and_cache_hits(
    runtime: Runtime,
    emulator: Any,
) -> None:
    # given: the market job on one region (two pages in the recording)
    runtime.settings = runtime.settings.replace(market_regions=[10000070])
    registry = JobRegistry()

    # when: it runs twice; the second run finds both pages cached
    outcomes = [execute_job(runtime, registry, "market_orders") for _ in range(2)]

    # then
    assert outcomes == ["success", "success"]
    second, first = _rows(runtime)[:2]
    assert first["esi_calls"] == first["pages"] >= 2
    assert first["cache_hits"] <= first["esi_calls"]
    assert second["esi_calls"] == first["esi_calls"] == second["cache_hits"]
    assert first["items"] == second["items"] == 2338


def test_runs_older_than_the_retention_are_trimmed_but_the_plan_is_kept(
    redis_worker: StartedWorker,
    frozen_runtime: Runtime,
    clock: FrozenClock,
    pilots: list[int],
) -> None:
    # given: runs of every job and character, then 40 days without any
    frozen_runtime.settings = frozen_runtime.settings.replace(job_run_retention_days=30)
    scheduler = redis_worker.scheduler()
    for _ in range(3):
        scheduler.tick_all()
        redis_worker.join()
        clock.advance(600)
    kept = {(r["job"], r["subject"]): r["id"] for r in reversed(redis_worker.runs())}
    clock.advance(40 * 86400)

    # when: the scheduler (a new one) trims
    redis_worker.scheduler()._trim(clock.now())

    # then: only the newest planned run of each job and subject is left
    assert {r["id"] for r in redis_worker.runs()} == set(kept.values())


SKILLS = "esi-skills.read_skills.v1"
PILOT = 2112000001


def _error_of(runtime: Runtime, name: str) -> str:
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT error FROM esi_job_run WHERE job = %s ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone()
    assert row is not None and row[0]
    return str(row[0])


def test_a_run_error_never_holds_the_secrets_of_its_tokens(
    runtime: Runtime, make_token: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import requests

    from worker.jobs import token_required

    # given: jobs failing with messages that quote their token's secrets
    make_token(PILOT, "Test Pilot One", SKILLS)

    @job("quotes", scopes=SKILLS, fan_out="per_character", every=600)
    def quotes(ctx: JobContext) -> None:
        token = ctx.token
        assert token is not None
        access = token.valid_access_token()
        raise RuntimeError(f"ESI refused {access} (refresh {token.refresh_token})")

    @job("in_url", scopes=SKILLS, fan_out="per_character", every=600)
    def in_url(ctx: JobContext) -> None:
        assert ctx.token is not None
        requests.get(f"http://127.0.0.1:1/x?token={ctx.token.refresh_token}", timeout=1)

    @job("decorated_quotes", every=600)
    @token_required(scopes=SKILLS)
    def decorated_quotes(ctx: JobContext, token: Any) -> None:
        raise ValueError(f"bad grant {token.refresh_token}")

    @job("looked_up", scopes=SKILLS, fan_out="per_character", every=600)
    def looked_up(ctx: JobContext) -> None:
        token = ctx.runtime.tokens.query().filter(character_id=ctx.character_id).first()
        raise KeyError(f"no wallet for {token.refresh_token}")

    names = ("quotes", "in_url", "decorated_quotes", "looked_up")
    registry = JobRegistry("none", extra=[quotes, in_url, decorated_quotes, looked_up])

    # when
    outcomes = [execute_job(runtime, registry, name, PILOT) for name in names]

    # then: the runs failed, their errors name what happened but no secret
    assert outcomes == ["failure"] * 4
    token = runtime.tokens.query().filter(character_id=PILOT).first()
    assert token is not None and token.refresh_token
    secrets = [token.access_token, token.refresh_token]
    errors = [_error_of(runtime, n) for n in names]
    assert errors[0].startswith("RuntimeError: ESI refused [redacted]")
    assert "token=[redacted]" in errors[1]
    for text in (*errors, caplog.text):
        assert not any(secret in text for secret in secrets)


def test_esi_calls_are_counted_when_they_fail_and_when_retried(
    runtime: Runtime, emulator: Any
) -> None:
    from worker.errors import HTTPError

    # given: ESI fails the status route once with 500 (not retried), then
    # twice with 502 (retried)
    runtime.settings = runtime.settings.replace(esi_retry_backoff_s=0)

    @job("status_twice", every=600)
    def status_twice(ctx: JobContext) -> None:
        with pytest.raises(HTTPError):
            ctx.esi.Status.get_status().result()
        ctx.esi.Status.get_status().result()

    emulator.configure(
        esi_faults=[
            {"status": 500, "count": 1, "path_contains": "/status/"},
            {"status": 502, "count": 2, "path_contains": "/status/"},
        ]
    )
    before = emulator.stats()["esi_requests"]

    # when: the first call fails, the second succeeds on its third try
    outcome = execute_job(
        runtime, JobRegistry("none", extra=[status_twice]), "status_twice"
    )

    # then: every request ESI saw is in the run's count, one page was read
    assert outcome == "success"
    sent = emulator.stats()["esi_requests"] - before
    run = _rows(runtime)[0]
    assert sent == 4
    assert (run["esi_calls"], run["pages"]) == (sent, 1)


def test_esi_calls_through_a_tokens_own_client_and_page_threads_are_counted(
    runtime: Runtime, emulator: Any, make_token: Any
) -> None:
    # given: a django-esi style job using token.get_esi_client(), and one
    # reading two pages (the second fetched by a page thread)
    make_token(PILOT, "Test Pilot One", [SKILLS, "esi-assets.read_assets.v1"])

    @job("direct", scopes=SKILLS, fan_out="per_character", every=600)
    def direct(ctx: JobContext) -> None:
        assert ctx.token is not None
        client = ctx.token.get_esi_client()
        client.Skills.get_characters_character_id_skills(
            character_id=ctx.character_id
        ).result()

    @job("paged", scopes="esi-assets.read_assets.v1", fan_out="per_character")
    def paged(ctx: JobContext) -> None:
        ctx.esi.Assets.get_characters_character_id_assets(
            character_id=ctx.character_id
        ).results()

    registry = JobRegistry("none", extra=[direct, paged])
    before = emulator.stats()["esi_requests"]

    # when
    outcomes = [execute_job(runtime, registry, name, PILOT) for name in ("direct", "paged")]

    # then
    assert outcomes == ["success", "success"]
    counts = {r["job"]: (r["esi_calls"], r["pages"]) for r in _rows(runtime)}
    assert counts["direct"][0] == 1
    assert counts["paged"] == (2, 2)
    assert emulator.stats()["esi_requests"] - before == 3
