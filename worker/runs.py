"""Executing one run of a job and recording it in ``esi_job_run``.

A planned run arrives with its run id: the worker claims the queued row
(a second message for the same run finds it claimed and is dropped),
checks the reasons to defer (ESI's downtime, a route reported down),
resolves the token from the database, runs the job with its ESI calls
counted, and records the outcome and when the subject is due next.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dramatiq.middleware.time_limit import TimeLimitExceeded

from .errors import ErrorLimitedError, JobSkipped, RateLimitedError
from .jobs import JobContext, JobRegistry, record_esi_call
from .jobs.guards import DOWNTIME, LIMITS, ROUTE_DOWN, Downtime, RouteStatus
from .jobs.records import (
    DEFERRED,
    DUPLICATE,
    FAILURE,
    SKIPPED,
    SUCCESS,
    RunRecord,
    claim_run,
    finish_run,
    start_adhoc,
)
from .jobs.schedule import stable_fraction
from .jobs.stats import counting
from .jobs.subjects import token_for
from .metrics import jobs as job_metrics

if TYPE_CHECKING:
    from .jobs import Job
    from .runtime import Runtime

log = logging.getLogger(__name__)

__all__ = [
    "DEFERRED",
    "DUPLICATE",
    "FAILURE",
    "SKIPPED",
    "SUCCESS",
    "RunGuard",
    "execute_job",
    "record_esi_call",
]

# Deferred runs resume spread over this many seconds after the downtime,
# so the whole plan does not hit ESI the minute it comes back.
DOWNTIME_SPREAD_S = 300.0
LIMITS_DEFAULT_WAIT_S = 60.0


@dataclass
class RunGuard:
    """The reasons a worker defers runs; one per worker process (it caches)."""

    runtime: Runtime
    downtime: Downtime = field(init=False)
    status: RouteStatus = field(init=False)

    def __post_init__(self) -> None:
        settings = self.runtime.settings
        self.downtime = Downtime(settings.esi_downtime_utc)
        self.status = RouteStatus(settings, self.runtime.clock)

    def deferral(self, job: Job, now: dt.datetime) -> tuple[str, str] | None:
        """``(reason, detail)`` when the run must wait, else ``None``."""
        if self.downtime.contains(now) and job.name not in _LOCAL_JOBS:
            return (
                DOWNTIME,
                f"ESI downtime {self.runtime.settings.esi_downtime_utc} UTC",
            )
        down = self.status.down(job.routes)
        if down:
            return ROUTE_DOWN, f"ESI reports down: {', '.join(down)}"
        return None


# Token upkeep talks to SSO, not ESI, and must go on through ESI's downtime.
_LOCAL_JOBS = frozenset({"refresh_tokens", "prune_tokens"})


def execute_job(
    runtime: Runtime,
    registry: JobRegistry,
    name: str,
    character_id: int | None = None,
    *,
    enqueued_at: dt.datetime | None = None,
    run_id: int | None = None,
    guard: RunGuard | None = None,
) -> str:
    """Run job ``name`` once and record the run.

    With ``run_id`` the queued run is claimed first; without, an ad-hoc run
    is recorded (for ``character_id`` if given).

    :returns: the outcome: ``success``, ``failure``, ``skipped``,
        ``deferred``, or ``duplicate`` for a run already claimed.
    :raises UnknownJobError: when no such job is registered.
    """
    job = registry.get(name)
    started = runtime.clock.now()
    record = _start(runtime, job, run_id, character_id, enqueued_at, started)
    if record is None:
        log.info(
            "run %r of job %r was already claimed; message dropped",
            run_id,
            job.name,
            extra={"job": job.name, "run_id": run_id},
        )
        return DUPLICATE
    if record.due is not None:
        job_metrics.JOB_LAG_SECONDS.labels(job=job.name).observe(
            max(0.0, (started - record.due).total_seconds())
        )

    deferral = (guard or RunGuard(runtime)).deferral(job, started)
    if deferral is not None:
        return _defer(runtime, job, record, started, *deferral)
    return _run(runtime, job, record, started)


def _start(
    runtime: Runtime,
    job: Job,
    run_id: int | None,
    character_id: int | None,
    enqueued_at: dt.datetime | None,
    now: dt.datetime,
) -> RunRecord | None:
    if run_id is not None:
        return claim_run(runtime.pool, run_id, now)
    return start_adhoc(runtime.pool, job.name, character_id, enqueued_at, now)


def _run(runtime: Runtime, job: Job, record: RunRecord, started: dt.datetime) -> str:
    ctx = JobContext(
        job=job,
        runtime=runtime,
        character_id=record.character_id,
        corporation_id=record.corporation_id,
        due=record.due,
    )
    outcome, error, reason, next_due = SUCCESS, None, None, None
    try:
        with counting(ctx.stats):
            ctx.token = token_for(
                runtime, job, record.subject, record.character_id, record.corporation_id
            )
            job(ctx)
    except JobSkipped as exc:
        outcome, error = SKIPPED, str(exc)
        ctx.log.info("job %r skipped: %s", job.name, exc)
    except (ErrorLimitedError, RateLimitedError) as exc:
        outcome, error, reason = DEFERRED, f"{type(exc).__name__}: {exc}", LIMITS
        next_due = runtime.clock.now() + dt.timedelta(seconds=_limit_wait_s(exc))
        ctx.log.warning("job %r deferred by ESI limits: %s", job.name, exc)
    except Exception as exc:  # a job may fail in any way; the run records it
        outcome, error = FAILURE, f"{type(exc).__name__}: {exc}"
        next_due = _retry_at(runtime, job, record)
        ctx.log.exception("job %r failed", job.name)
    except TimeLimitExceeded:
        # The broker interrupts a run past its timeout; record it, then let go.
        _finish(
            runtime,
            job,
            record,
            started,
            FAILURE,
            error=f"timed out after {job.timeout_s:g} s",
            stats=ctx,
        )
        raise

    if outcome == SUCCESS and job.follow_expiry:
        next_due = _after_expiry(runtime, job, record, ctx)
    _finish(
        runtime,
        job,
        record,
        started,
        outcome,
        error=error,
        stats=ctx,
        next_due=next_due,
        reason=reason,
    )
    return outcome


def _defer(
    runtime: Runtime,
    job: Job,
    record: RunRecord,
    now: dt.datetime,
    reason: str,
    detail: str,
) -> str:
    if reason == DOWNTIME:
        spread = stable_fraction(job.name, record.subject) * DOWNTIME_SPREAD_S
        window_end = Downtime(runtime.settings.esi_downtime_utc).end_after(now)
        next_due = window_end + dt.timedelta(seconds=spread)
    else:
        wait = max(runtime.settings.esi_status_max_age_s, 30.0)
        next_due = now + dt.timedelta(seconds=wait)
    log.info(
        "job %r deferred until %s: %s",
        job.name,
        next_due.isoformat(),
        detail,
        extra={"job": job.name, "reason": reason},
    )
    _finish(
        runtime,
        job,
        record,
        now,
        DEFERRED,
        error=detail,
        next_due=next_due,
        reason=reason,
    )
    return DEFERRED


def _finish(
    runtime: Runtime,
    job: Job,
    record: RunRecord,
    started: dt.datetime,
    outcome: str,
    *,
    error: str | None = None,
    stats: JobContext | None = None,
    next_due: dt.datetime | None = None,
    reason: str | None = None,
) -> None:
    finished = runtime.clock.now()
    finish_run(
        runtime.pool,
        record.id,
        finished,
        outcome,
        error=error,
        stats=stats.stats if stats else None,
        next_due=next_due,
        deferred_reason=reason,
    )
    job_metrics.JOB_RUNS.labels(job=job.name, outcome=outcome).inc()
    job_metrics.JOB_RUN_SECONDS.labels(job=job.name).observe(
        (finished - started).total_seconds()
    )
    if reason is not None:
        job_metrics.JOB_RUNS_DEFERRED.labels(job=job.name, reason=reason).inc()
    if outcome == SUCCESS:
        job_metrics.JOB_LAST_SUCCESS.labels(job=job.name).set(finished.timestamp())


def _retry_at(runtime: Runtime, job: Job, record: RunRecord) -> dt.datetime | None:
    # Retries follow the job's own policy; the broker never retries.
    if record.due is None or record.attempt >= job.max_retries:
        return None
    backoff = job.retry_backoff_s * 2**record.attempt
    return runtime.clock.now() + dt.timedelta(seconds=backoff)


def _after_expiry(
    runtime: Runtime, job: Job, record: RunRecord, ctx: JobContext
) -> dt.datetime | None:
    expires = ctx.stats.expires
    if expires is None or record.due is None:
        return None
    interval = runtime.settings.job_intervals.get(job.name)
    slot = job.schedule(interval).next_after(job.name, record.subject, record.due)
    return expires if expires > slot else None


def _limit_wait_s(exc: ErrorLimitedError | RateLimitedError) -> float:
    wait = getattr(exc, "reset_s", None) or getattr(exc, "retry_after_s", None)
    return float(wait) if wait else LIMITS_DEFAULT_WAIT_S
