"""Actors and scheduler on a real broker: messages carry ids, runs are recorded."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from worker.actors import declare_actors
from worker.jobs import JobRegistry, job
from worker.runs import execute_job
from worker.scheduler import JobScheduler

REDIS_URL = "redis://127.0.0.1:6379/13"
SCOPE = "esi-skills.read_skills.v1"
seen: list[tuple[int | None, str | None]] = []


@job("per_character_probe", scopes=SCOPE, fan_out="per_character", every=60)
def per_character_probe(ctx: Any) -> None:
    seen.append((ctx.character_id, ctx.token.character_name if ctx.token else None))
    ctx.stats.items = 1


@job("failing_probe", every=60)
def failing_probe(ctx: Any) -> None:
    raise RuntimeError("ESI said no")


@pytest.fixture
def registry() -> JobRegistry:
    seen.clear()
    return JobRegistry(extra=[per_character_probe, failing_probe])


@pytest.fixture
def tokens(runtime: Any, emulator: Any) -> list[Any]:
    stored = []
    for character_id, name in ((2112000001, "Test Pilot One"), (96224792, "Mitani")):
        grant = emulator.create_grant(
            character_id=character_id, character_name=name, scopes=[SCOPE]
        )
        stored.append(runtime.tokens.import_grant(grant))
    other = emulator.create_grant(
        character_id=2113024536, character_name="Bokobo Shahni",
        scopes=["esi-assets.read_assets.v1"],
    )
    stored.append(runtime.tokens.import_grant(other))
    return stored


def test_scheduler_fans_out_to_each_character_holding_the_scopes(
    runtime: Any, tokens: list[Any], registry: JobRegistry
) -> None:
    # given: a real Redis broker and the scheduler's tick for a per-character job
    broker = RedisBroker(url=REDIS_URL, namespace="esi-worker-test")
    redis.Redis.from_url(REDIS_URL).flushdb()
    actors = declare_actors(broker, registry)
    scheduler = JobScheduler(runtime, {"per_character_probe": per_character_probe}, actors)

    # when: planning covers a whole period, so every character's slot passed
    now = runtime.clock.now()
    enqueued = scheduler.plan(per_character_probe, now, now - dt.timedelta(seconds=60))

    # then: one message per character with the scope, holding ids only
    assert enqueued == 2
    raw = redis.Redis.from_url(REDIS_URL).hgetall("esi-worker-test:esi_worker.msgs")
    messages = [json.loads(body) for body in raw.values()]
    assert sorted(m["args"][1] for m in messages) == [96224792, 2112000001]
    with runtime.pool.connection() as conn:
        queued = conn.execute(
            "SELECT id FROM esi_job_run WHERE state = 'queued' ORDER BY id"
        ).fetchall()
    assert sorted(m["args"][3] for m in messages) == [row[0] for row in queued]
    secrets = [t.refresh_token for t in tokens] + [t.access_token for t in tokens]
    for body in raw.values():
        assert not any(secret and secret.encode() in body for secret in secrets)
    broker.close()


def test_in_process_worker_runs_the_job_with_the_token_resolved_from_the_database(
    runtime: Any, tokens: list[Any], registry: JobRegistry
) -> None:
    broker = StubBroker()
    actors = declare_actors(broker, registry)
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        actors.enqueue(per_character_probe, 2112000001)
        broker.join("esi_worker")
        worker.join()
    finally:
        worker.stop()

    assert seen == [(2112000001, "Test Pilot One")]
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "SELECT job, character_id, outcome, items FROM esi_job_run"
        ).fetchone()
    assert row == ("per_character_probe", 2112000001, "success", 1)


def test_a_failing_run_is_recorded_with_its_error(runtime: Any, registry: JobRegistry) -> None:
    outcome = execute_job(runtime, registry, "failing_probe")

    assert outcome == "failure"
    with runtime.pool.connection() as conn:
        row = conn.execute("SELECT outcome, error, finished FROM esi_job_run").fetchone()
    assert row[0] == "failure" and row[1] == "RuntimeError: ESI said no" and row[2]


def test_a_character_without_a_usable_token_is_skipped(
    runtime: Any, tokens: list[Any], registry: JobRegistry
) -> None:
    outcome = execute_job(runtime, registry, "per_character_probe", 123456789)

    assert outcome == "skipped"
    assert seen == []
