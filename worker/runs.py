"""Executing one run of a job and recording it in ``esi_job_run``."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from . import metrics
from .errors import JobSkipped
from .jobs import JobContext, JobRegistry

if TYPE_CHECKING:
    from .jobs import Job
    from .runtime import Runtime
    from .tokens import Token

log = logging.getLogger(__name__)

SUCCESS, FAILURE, SKIPPED = "success", "failure", "skipped"


def execute_job(
    runtime: Runtime,
    registry: JobRegistry,
    name: str,
    character_id: int | None = None,
    *,
    enqueued_at: dt.datetime | None = None,
) -> str:
    """Run job ``name`` once (for ``character_id`` if given) and record the run.

    :returns: the outcome: ``success``, ``failure`` or ``skipped``.
    :raises UnknownJobError: when no such job is registered.
    """
    job = registry.get(name)
    started = runtime.clock.now()
    run_id = _record_start(runtime, job, character_id, started, enqueued_at)
    ctx = JobContext(job=job, runtime=runtime, character_id=character_id)

    outcome, error = SUCCESS, None
    try:
        ctx.token = _resolve_token(runtime, job, character_id)
        job(ctx)
    except JobSkipped as exc:
        outcome, error = SKIPPED, str(exc)
        ctx.log.info("job %r skipped: %s", job.name, exc)
    except Exception as exc:  # a job may fail in any way; the run records it
        outcome, error = FAILURE, f"{type(exc).__name__}: {exc}"
        ctx.log.exception("job %r failed", job.name)

    finished = runtime.clock.now()
    _record_finish(runtime, run_id, finished, outcome, error, ctx)
    metrics.JOB_RUNS.labels(job=job.name, outcome=outcome).inc()
    metrics.JOB_RUN_SECONDS.labels(job=job.name).observe(
        (finished - started).total_seconds()
    )
    return outcome


def _resolve_token(runtime: Runtime, job: Job, character_id: int | None) -> Token | None:
    # The token is looked up at run time, never carried in the message.
    if character_id is None or not job.scopes:
        return None
    query = runtime.tokens.query().filter(character_id=character_id)
    token = query.require_scopes(job.scopes).require_valid().first()
    if token is None:
        raise JobSkipped(f"no valid token of character {character_id} holds {job.scopes}")
    return token


def _record_start(
    runtime: Runtime,
    job: Job,
    character_id: int | None,
    started: dt.datetime,
    enqueued_at: dt.datetime | None,
) -> int:
    with runtime.pool.connection() as conn:
        row = conn.execute(
            "INSERT INTO esi_job_run (job, character_id, enqueued, started)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (job.name, character_id, enqueued_at, started),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _record_finish(
    runtime: Runtime,
    run_id: int,
    finished: dt.datetime,
    outcome: str,
    error: str | None,
    ctx: JobContext,
) -> None:
    stats = ctx.stats
    with runtime.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_job_run SET finished = %s, outcome = %s, error = %s,"
            " pages = %s, items = %s, esi_calls = %s, cache_hits = %s WHERE id = %s",
            (finished, outcome, error, stats.pages, stats.items, stats.esi_calls,
             stats.cache_hits, run_id),
        )
