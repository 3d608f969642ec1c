"""Executing one run of a job and recording it in ``esi_job_run``.

A planned run arrives with its run id: the worker claims the queued row
(a second message for the same run finds it claimed and is dropped) as
this process's holder (see :mod:`worker.jobs.holders`), lets it stand
for the newest slot if its message waited past one, checks the reasons
to defer (ESI's downtime, a route reported down), resolves the token from
the database, runs the job under the watchdog (its timeout) with its ESI
calls counted, and records the outcome, free of secrets, and when the
subject is due next.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import ErrorLimitedError, JobSkipped, RateLimitedError
from .jobs import FanOut, JobContext, JobRegistry, record_esi_call
from .jobs.guards import (
    DOWNTIME,
    LIMITS,
    ROUTE_DOWN,
    Downtime,
    RouteStatus,
    resume_at,
)
from .jobs.holders import holder_for
from .jobs.records import (
    DEFERRED,
    DUPLICATE,
    FAILURE,
    SKIPPED,
    SUCCESS,
    PlannedRun,
    RunRecord,
    claim_run,
    finish_run,
    mark_timed_out,
    move_due,
    start_adhoc,
)
from .jobs.redaction import error_text, scrub, settings_secrets, traceback_text
from .jobs.stats import counting
from .jobs.subjects import adhoc_runs, token_for
from .jobs.watchdog import TimeLimitExceeded, watchdog
from .metrics import jobs as job_metrics

if TYPE_CHECKING:
    from .jobs import Job, Schedule
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

# A once-job deferred by the downtime resumes within this many seconds
# after it (one subject: nothing to spread it against).
DOWNTIME_SPREAD_S = 300.0
# Runs of a fan-out job deferred by the downtime resume spread over their
# period, up to this long: a thousand characters do not return in a minute.
MAX_RESUME_SPREAD_S = 3600.0
LIMITS_DEFAULT_WAIT_S = 60.0
MIN_STATUS_WAIT_S = 30.0
# The worst outcome of several runs made by hand stands for all of them.
_SEVERITY = (SUCCESS, SKIPPED, DEFERRED, FAILURE)


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
    subject: PlannedRun | None = None,
) -> str:
    """Run job ``name`` once and record the run.

    With ``run_id`` the queued run is claimed first. Without, the run is
    made by hand and recorded as such: for ``subject`` if given, else for
    the subjects of ``character_id`` (its run, its tokens' runs, its
    corporation's run), else for every current subject of a fan-out job.
    Nobody to run for is recorded as one skipped run, with the reason.

    :returns: the outcome: ``success``, ``failure``, ``skipped``,
        ``deferred``, or ``duplicate`` for a run already claimed; of
        several runs made by hand, the worst.
    :raises UnknownJobError: when no such job is registered.
    """
    job = registry.get(name)
    guard = guard or RunGuard(runtime)
    if run_id is not None:
        return _planned(runtime, job, run_id, guard)

    try:
        runs = [subject] if subject else adhoc_runs(runtime, job, character_id)
    except JobSkipped as exc:
        return _nobody(runtime, job, character_id, enqueued_at, str(exc))
    outcomes = [_adhoc(runtime, job, run, enqueued_at, guard) for run in runs]
    return max(outcomes, key=_SEVERITY.index)


def _planned(runtime: Runtime, job: Job, run_id: int, guard: RunGuard) -> str:
    holder = holder_for(runtime.pool).number()
    started = runtime.clock.now()
    record = claim_run(runtime.pool, run_id, started, holder)
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
    return _go(runtime, job, _catch_up(runtime, job, record, started), guard)


def _adhoc(
    runtime: Runtime,
    job: Job,
    run: PlannedRun,
    enqueued_at: dt.datetime | None,
    guard: RunGuard,
) -> str:
    holder = holder_for(runtime.pool).number()
    started = runtime.clock.now()
    record = start_adhoc(runtime.pool, job.name, run, enqueued_at, started, holder)
    return _go(runtime, job, record, guard)


def _go(runtime: Runtime, job: Job, record: RunRecord, guard: RunGuard) -> str:
    started = runtime.clock.now()
    deferral = guard.deferral(job, started)
    if deferral is not None:
        return _defer(runtime, job, record, started, *deferral)
    return _run(runtime, job, record, started)


def _nobody(
    runtime: Runtime,
    job: Job,
    character_id: int | None,
    enqueued_at: dt.datetime | None,
    reason: str,
) -> str:
    now = runtime.clock.now()
    run = PlannedRun(subject=character_id or 0, due=now, character_id=character_id)
    record = start_adhoc(runtime.pool, job.name, run, enqueued_at, now)
    log.info("job %r skipped: %s", job.name, reason, extra={"job": job.name})
    _finish(runtime, job, record, runtime.clock.now(), SKIPPED, error=reason)
    return SKIPPED


def _catch_up(
    runtime: Runtime, job: Job, record: RunRecord, now: dt.datetime
) -> RunRecord:
    """The run as the newest slot's, when its message waited past newer slots.

    Otherwise the next slot, counted from the stale one, would be due at
    once: two catch-up runs after the workers were away.
    """
    if record.due is None:
        return record
    slot = _schedule(runtime, job).latest_at_or_before(
        job.name, record.subject, now, record.due
    )
    if slot is None or slot <= record.due:
        return record
    move_due(runtime.pool, record.id, slot)
    log.debug(
        "run %r of job %r stands for the slot of %s",
        record.id,
        job.name,
        slot.isoformat(),
        extra={"job": job.name, "run_id": record.id},
    )
    return replace(record, due=slot)


def _run(runtime: Runtime, job: Job, record: RunRecord, started: dt.datetime) -> str:
    ctx = JobContext(
        job=job,
        runtime=runtime,
        character_id=record.character_id,
        corporation_id=record.corporation_id,
        due=record.due,
        run_id=record.id,
    )
    timed_out = f"timed out after {job.timeout_s:g} s"
    watch = watchdog.watch(
        runtime.clock, job.timeout_s, lambda: _timed_out(runtime, job, record)
    )
    outcome, error, reason, next_due = SUCCESS, None, None, None
    try:
        with counting(ctx.stats), watch:
            ctx.token = token_for(
                runtime, job, record.subject, record.character_id, record.corporation_id
            )
            ctx.remember(ctx.token)
            job(ctx)
    except TimeLimitExceeded:
        outcome, error = FAILURE, timed_out
    except JobSkipped as exc:
        outcome, error = SKIPPED, scrub(str(exc), _secrets(runtime, ctx))
        ctx.log.info("job %r skipped: %s", job.name, error)
    except (ErrorLimitedError, RateLimitedError) as exc:
        return _defer(
            runtime,
            job,
            record,
            started,
            LIMITS,
            error_text(exc, _secrets(runtime, ctx)),
            wait_s=_limit_wait_s(exc),
            ctx=ctx,
        )
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure, even sys.exit()
        secrets = _secrets(runtime, ctx)
        outcome, error = FAILURE, error_text(exc, secrets)
        ctx.log.error("job %r failed\n%s", job.name, traceback_text(exc, secrets))

    if watch.fired:  # the job swallowed the interruption, or just missed it
        outcome, error = FAILURE, timed_out
    if outcome == FAILURE:
        next_due = _retry_at(runtime, job, record)
    elif outcome == SUCCESS and job.follow_expiry:
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


def _timed_out(runtime: Runtime, job: Job, record: RunRecord) -> None:
    """The watchdog's part: the record says so even if the thread never returns."""
    error = f"timed out after {job.timeout_s:g} s"
    if mark_timed_out(runtime.pool, record.id, runtime.clock.now(), error):
        log.warning(
            "run %r of job %r %s; interrupting it",
            record.id,
            job.name,
            error,
            extra={"job": job.name, "run_id": record.id},
        )


def _defer(
    runtime: Runtime,
    job: Job,
    record: RunRecord,
    now: dt.datetime,
    reason: str,
    detail: str,
    *,
    wait_s: float | None = None,
    ctx: JobContext | None = None,
) -> str:
    next_due = _resume_at(runtime, job, record, now, reason, wait_s)
    log.info(
        "job %r deferred until %s: %s",
        job.name,
        next_due.isoformat(),
        detail,
        extra={"job": job.name, "reason": reason, "run_id": record.id},
    )
    _finish(
        runtime,
        job,
        record,
        now,
        DEFERRED,
        error=detail,
        stats=ctx,
        next_due=next_due,
        reason=reason,
    )
    return DEFERRED


def _resume_at(
    runtime: Runtime,
    job: Job,
    record: RunRecord,
    now: dt.datetime,
    reason: str,
    wait_s: float | None,
) -> dt.datetime:
    """When a deferred run is due again: after the cause, spread (see guards)."""
    schedule = _schedule(runtime, job)
    if reason == DOWNTIME:
        earliest = Downtime(runtime.settings.esi_downtime_utc).end_after(now)
    elif reason == LIMITS:
        earliest = now + dt.timedelta(seconds=wait_s or LIMITS_DEFAULT_WAIT_S)
    else:
        wait = max(runtime.settings.esi_status_max_age_s, MIN_STATUS_WAIT_S)
        earliest = now + dt.timedelta(seconds=wait)
    return resume_at(
        schedule,
        job.name,
        record.subject,
        earliest,
        spread_s=_spread_s(job, schedule, reason, record.deferrals),
    )


def _spread_s(
    job: Job, schedule: Schedule, reason: str, deferrals: int
) -> float | None:
    """How a deferred run comes back: spread over so long, or at its next slot.

    After the downtime the runs of a fan-out job come back spread over
    their period (at most an hour); deferred while a route is down or ESI
    limits us, each waits for its next slot, as spread as the slots are.
    A once-job has no one to collide with: it comes back soon, then waits
    for its slot if deferred again.
    """
    if reason == DOWNTIME and deferrals == 0:
        if job.fan_out is FanOut.ONCE:
            return DOWNTIME_SPREAD_S
        return min(schedule.period_s, MAX_RESUME_SPREAD_S)
    if job.fan_out is FanOut.ONCE and deferrals == 0:
        return 0.0
    return None


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
    recorded = finish_run(
        runtime.pool,
        record.id,
        finished,
        outcome,
        error=error,
        stats=stats.stats if stats else None,
        next_due=next_due,
        deferred_reason=reason,
    )
    if not recorded:
        log.warning(
            "run %r of job %r ended (%s) after it was closed as abandoned; "
            "the late result is dropped",
            record.id,
            job.name,
            outcome,
            extra={"job": job.name, "run_id": record.id},
        )
        return
    job_metrics.JOB_RUNS.labels(job=job.name, outcome=outcome).inc()
    # A run deferred before it started (no stats) did no work: its ~0 s
    # would only drag the job's durations down.
    if stats is not None:
        job_metrics.JOB_RUN_SECONDS.labels(job=job.name).observe(
            (finished - started).total_seconds()
        )
    if reason is not None:
        job_metrics.JOB_RUNS_DEFERRED.labels(job=job.name, reason=reason).inc()


def _secrets(runtime: Runtime, ctx: JobContext) -> list[str]:
    """What an error of this run must not show: its tokens' secrets (those it
    was handed, and every token of its character), the worker's own."""
    found = [*ctx.secrets(), *settings_secrets(runtime.settings)]
    if ctx.character_id is not None:
        try:
            query = runtime.tokens.query().including_dead()
            for token in query.filter(character_id=ctx.character_id):
                found += [s for s in (token.access_token, token.refresh_token) if s]
        except Exception:  # noqa: BLE001 - the patterns still apply
            log.debug("tokens of character %r not read for scrubbing", ctx.character_id)
    return found


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
    slot = _schedule(runtime, job).next_after(job.name, record.subject, record.due)
    return expires if expires > slot else None


def _schedule(runtime: Runtime, job: Job) -> Schedule:
    return job.schedule(runtime.settings.job_intervals.get(job.name))


def _limit_wait_s(exc: ErrorLimitedError | RateLimitedError) -> float:
    wait = getattr(exc, "reset_s", None) or getattr(exc, "retry_after_s", None)
    return float(wait) if wait else LIMITS_DEFAULT_WAIT_S
