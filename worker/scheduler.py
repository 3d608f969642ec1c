"""The scheduler: turns each job's plan into queued runs and broker messages.

Every tick, the scheduler that holds leadership (a PostgreSQL advisory
lock, see :mod:`worker.leader`) works out which runs are due from the
run records themselves: the newest planned run of each job and subject
says which slot was served last. Due runs are recorded as ``queued`` in
the same transaction that read the plan, under a per-job transaction
lock, and only then sent. So a second scheduler, a restarted one or a
new leader computes the same plan from the same rows and enqueues
nothing twice; a run whose message was lost is sent again and a worker
drops any copy of a run already claimed. A run the broker refused to
take is marked as never sent, and the next tick of whichever scheduler
leads sends it first: a broker outage delays runs by one tick after it
ends, not by the requeue period. A run is closed as abandoned only
once the process running it is gone (its holder lock is free), never
while it may still be inside the job: no second run of a subject starts
beside it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .actors import Actors
from .jobs import FanOut, Job, Schedule
from .jobs.records import (
    DEFERRED,
    FAILURE,
    QUEUED,
    RUNNING,
    PlannedRun,
    RunRecord,
    abandon_running,
    claim_unsent,
    latest_planned,
    mark_unsent,
    queue_run,
    queued_before,
    touch_enqueued,
    trim_runs,
)
from .jobs.redaction import error_text, settings_secrets
from .jobs.subjects import subjects
from .leader import Leadership
from .metrics import jobs as job_metrics
from .runtime import Runtime

log = logging.getLogger(__name__)

# A run recorded without a holder (older versions) still running this
# long past its job's timeout lost its worker.
ABANDON_GRACE_S = 120.0
TRIM_EVERY_S = 3600.0
# On taking over, slots this many ticks back are re-examined: the old
# leader may have died before planning them.
TAKEOVER_TICKS = 3


class JobScheduler:
    """Plans every job on each tick while leader; followers only keep trying.

    :param run_at_start: on its first tick as leader, run every job once
        whatever its schedule, then follow the schedule (the demo, so each
        start shows every job's data).
    """

    def __init__(
        self,
        runtime: Runtime,
        jobs: Mapping[str, Job],
        actors: Actors,
        *,
        leadership: Leadership | None = None,
        blocking: bool = False,
        run_at_start: bool = False,
    ) -> None:
        self._runtime = runtime
        self._jobs = dict(jobs)
        self._actors = actors
        self._leadership = leadership
        self._leading = False
        self._at_start = set(self._jobs) if run_at_start else set()
        self._broker_down = False
        self._planned_until: dt.datetime | None = None
        self._trimmed_at: dt.datetime | None = None
        scheduler_cls = BlockingScheduler if blocking else BackgroundScheduler
        self._aps: BaseScheduler = scheduler_cls(timezone=dt.UTC)

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The jobs this scheduler plans, by name."""
        return dict(self._jobs)

    @property
    def tick_s(self) -> float:
        """Seconds between ticks: the setting, or the shortest interval if shorter."""
        intervals = [
            self.interval_s(job) for job in self._jobs.values() if not job.cron
        ]
        return min([self._runtime.settings.scheduler_tick_s, *intervals])

    def start(self) -> None:
        """Tick now and then every :attr:`tick_s`; blocks if blocking."""
        trigger = IntervalTrigger(seconds=self.tick_s, timezone=dt.UTC)
        self._aps.add_job(
            self.tick_all,
            trigger,
            id="plan",
            name="plan",
            max_instances=1,
            coalesce=True,
            next_run_time=self._runtime.clock.now(),
        )
        log.info(
            "scheduler started with %d jobs, ticking every %.1f s",
            len(self._jobs),
            self.tick_s,
        )
        self._aps.start()

    def shutdown(self) -> None:
        """Stop planning and give up leadership; queued runs stay queued."""
        if self._aps.running:
            self._aps.shutdown(wait=True)
        if self._leadership is not None:
            self._leadership.release()
        job_metrics.SCHEDULER_LEADER.set(0)
        log.info("scheduler stopped")

    def interval_s(self, job: Job) -> float:
        """The job's interval, or the operator's override from the settings."""
        return float(self._runtime.settings.job_intervals.get(job.name, job.interval_s))

    def schedule(self, job: Job) -> Schedule:
        """The job's schedule with the operator's interval override applied."""
        return job.schedule(self._runtime.settings.job_intervals.get(job.name))

    def tick_all(self) -> int:
        """One tick: check leadership, recover, plan every job; returns runs sent."""
        now = self._runtime.clock.now()
        job_metrics.SCHEDULER_HEARTBEAT.set(now.timestamp())
        leading = self._leadership.check() if self._leadership is not None else True
        job_metrics.SCHEDULER_LEADER.set(int(leading))
        if not leading:
            self._leading = False
            return 0

        since = self._since(now)
        self.recover(now, takeover=not self._leading)
        self._leading = True
        sent = sum(self._plan_safely(name, now, since) for name in sorted(self._jobs))
        self._planned_until = now
        self._trim(now)
        return sent

    def tick(self, name: str, now: dt.datetime | None = None) -> int:
        """Enqueue the due runs of job ``name``; returns how many were sent."""
        now = now or self._runtime.clock.now()
        return self.plan(self._jobs[name], now, self._since(now))

    def plan(
        self, job: Job, now: dt.datetime, since: dt.datetime, *, at_once: bool = False
    ) -> int:
        """Queue and send the runs of ``job`` due at ``now``.

        ``since`` is when planning last covered: a subject never run before
        becomes due when its first slot passes after it. With ``at_once``
        every subject without an open run is due now.
        """
        templates = subjects(self._runtime, job)
        schedule = self.schedule(job)
        with self._runtime.pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"esi-worker plan {job.name}",),
            )
            latest = latest_planned(conn, job.name)
            due = [
                run
                for subject, template in templates.items()
                if (
                    run := self._due(
                        job,
                        schedule,
                        template,
                        latest.get(subject),
                        now,
                        since,
                        at_once=at_once,
                    )
                )
                is not None
            ]
            queued = [(queue_run(conn, job.name, run, now), run) for run in due]

        sent = self._send(
            [(job, run_id, run.character_id) for run_id, run in queued if run_id]
        )
        if sent:
            log.info(
                "job %r: %d runs enqueued", job.name, sent, extra={"job": job.name}
            )
        return sent

    def recover(self, now: dt.datetime, *, takeover: bool = False) -> None:
        """Close runs whose worker died; send queued runs the broker refused
        or whose message got lost."""
        with self._runtime.pool.connection() as conn:
            self._close_abandoned(conn, now)
            unsent = claim_unsent(conn, sorted(self._jobs), now)
            lost = self._maybe_lost(conn, now, takeover)
            # Sent again at most once per requeue period, however long the queue.
            touch_enqueued(conn, [record.id for record in lost], now)

        sent = self._send(
            [
                (self._jobs[record.job], record.id, record.character_id)
                for record in (*unsent, *lost)
                if record.job in self._jobs
            ]
        )
        if sent:
            log.info(
                "sent %d queued runs again (%d the broker had refused, %d whose "
                "message may be lost)",
                sent,
                len(unsent),
                len(lost),
            )

    def _close_abandoned(self, conn: Any, now: dt.datetime) -> None:
        for job in self._jobs.values():
            limit = now - dt.timedelta(seconds=job.timeout_s + ABANDON_GRACE_S)
            closed = abandon_running(
                conn,
                job.name,
                limit,
                now,
                max_retries=job.max_retries,
                retry_backoff_s=job.retry_backoff_s,
            )
            if closed:
                log.warning(
                    "job %r: %d runs whose worker stopped closed as failed",
                    job.name,
                    closed,
                    extra={"job": job.name},
                )

    def _maybe_lost(
        self, conn: Any, now: dt.datetime, takeover: bool
    ) -> list[RunRecord]:
        requeue_s = self._runtime.settings.job_requeue_after_s
        lost = queued_before(conn, now - dt.timedelta(seconds=requeue_s))
        if not takeover:
            return lost

        # The old leader may have died between recording and sending.
        recent = now - dt.timedelta(seconds=TAKEOVER_TICKS * self.tick_s)
        queued = queued_before(conn, now)
        old = {r.id for r in lost}
        lost += [
            r for r in queued if r.id not in old and r.enqueued and r.enqueued >= recent
        ]
        if len(queued) > len(lost):
            # Sent long enough ago to be in the broker, unless it lost them.
            log.info(
                "%d queued runs were sent before this scheduler took over; "
                "one whose message was lost is sent again once "
                "job_requeue_after_s (%g s) has passed",
                len(queued) - len(lost),
                requeue_s,
            )
        return lost

    def _due(
        self,
        job: Job,
        schedule: Schedule,
        template: PlannedRun,
        latest: RunRecord | None,
        now: dt.datetime,
        since: dt.datetime,
        *,
        at_once: bool = False,
    ) -> PlannedRun | None:
        subject = template.subject
        if latest is None:
            if at_once or (job.fan_out is FanOut.ONCE and not job.cron):
                return replace(template, due=now)  # a new job runs at once
            slot = schedule.latest_at_or_before(job.name, subject, now, since)
            return replace(template, due=slot) if slot else None
        if latest.state in (QUEUED, RUNNING):
            return None  # no pile-ups: the subject's run is not done yet
        if at_once:
            return replace(template, due=now)

        if _next_due(job, schedule, latest) > now:
            return None
        slot = schedule.latest_at_or_before(job.name, subject, now, latest.due or now)
        due = max(d for d in (latest.next_due, slot) if d is not None)
        return replace(
            template,
            due=due,
            attempt=_attempt(latest),
            deferrals=latest.deferrals + 1 if latest.outcome == DEFERRED else 0,
        )

    def _send(self, runs: list[tuple[Job, int, int | None]]) -> int:
        """Send ``(job, run id, character id)`` in order; returns how many went.

        From the first the broker refuses on, the runs are marked as never
        sent: the broker is most likely down, and the next tick tries again.
        """
        for index, (job, run_id, character_id) in enumerate(runs):
            try:
                self._actors.enqueue(job, character_id, run_id=run_id)
            except Exception as exc:  # noqa: BLE001 (any broker error: not sent)
                self._keep_unsent(runs[index:], exc)
                return index
        if runs and self._broker_down:
            self._broker_down = False
            log.info("the broker takes messages again")
        return len(runs)

    def _keep_unsent(
        self, runs: list[tuple[Job, int, int | None]], exc: Exception
    ) -> None:
        run_ids = [run_id for _, run_id, _ in runs]
        names = sorted({job.name for job, _, _ in runs})
        # Said once per outage; while it lasts, every tick fails the same way.
        level = logging.DEBUG if self._broker_down else logging.WARNING
        self._broker_down = True
        log.log(
            level,
            "%d runs of job %s not sent to the broker, from run %r on: %s; "
            "the next tick sends them again",
            len(runs),
            ", ".join(repr(name) for name in names),
            run_ids[0],
            error_text(exc, settings_secrets(self._runtime.settings)),
            extra={"job": names[0], "run_id": run_ids[0]},
        )
        try:
            with self._runtime.pool.connection() as conn:
                mark_unsent(conn, run_ids)
        except Exception:  # the database too: the requeue period catches them
            log.exception("runs %r could not be marked as not sent", run_ids)

    def _plan_safely(self, name: str, now: dt.datetime, since: dt.datetime) -> int:
        try:
            sent = self.plan(
                self._jobs[name], now, since, at_once=name in self._at_start
            )
        except Exception:  # one broken job must not stop the others' plans
            log.exception("planning job %r failed", name, extra={"job": name})
            return 0
        self._at_start.discard(name)
        return sent

    def _since(self, now: dt.datetime) -> dt.datetime:
        if self._leading and self._planned_until is not None:
            return self._planned_until
        return now - dt.timedelta(seconds=TAKEOVER_TICKS * self.tick_s)

    def _trim(self, now: dt.datetime) -> None:
        if self._trimmed_at and (now - self._trimmed_at).total_seconds() < TRIM_EVERY_S:
            return
        self._trimmed_at = now
        keep = dt.timedelta(days=self._runtime.settings.job_run_retention_days)
        with self._runtime.pool.connection() as conn:
            removed = trim_runs(conn, now - keep)
        if removed:
            log.info("trimmed %d run records older than %s", removed, keep)


def next_run(runtime: Runtime, job: Job, now: dt.datetime) -> dt.datetime | None:
    """The earliest next due time of ``job``: from its run records, and for
    subjects never planned, their first slot.

    ``None`` when there is nobody to run it for (a fan-out job whose scopes
    no token holds).
    """
    schedule = job.schedule(runtime.settings.job_intervals.get(job.name))
    with runtime.pool.connection() as conn:
        latest = latest_planned(conn, job.name)
    due = [_next_due(job, schedule, record) for record in latest.values()]
    if job.fan_out is FanOut.ONCE:
        if not latest:
            due.append(now if not job.cron else schedule.next_after(job.name, 0, now))
    else:
        fresh = set(subjects(runtime, job)) - set(latest)
        due += [schedule.next_after(job.name, subject, now) for subject in fresh]
    return min(due, default=None)


def _next_due(job: Job, schedule: Schedule, latest: RunRecord) -> dt.datetime:
    if latest.next_due is not None:
        return latest.next_due
    assert latest.due is not None
    return schedule.next_after(job.name, latest.subject, latest.due)


def _attempt(latest: RunRecord) -> int:
    if latest.outcome == FAILURE and latest.next_due is not None:
        return latest.attempt + 1
    return latest.attempt if latest.outcome == DEFERRED else 0
