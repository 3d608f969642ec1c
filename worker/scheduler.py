"""The scheduler: turns each job's schedule into messages on the broker."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .actors import REFRESH_JOB, Actors
from .jobs import FanOut, Job
from .runtime import Runtime

log = logging.getLogger(__name__)

# Token refresh goes first at start-up, so authed jobs find fresh tokens.
STARTUP_DELAY_S = 0.5
STARTUP_STAGGER_S = 2.0


class JobScheduler:
    """Enqueues every job on its interval (with jitter), fanned out as declared."""

    def __init__(
        self,
        runtime: Runtime,
        jobs: Mapping[str, Job],
        actors: Actors,
        *,
        blocking: bool = False,
    ) -> None:
        self._runtime = runtime
        self._jobs = dict(jobs)
        self._actors = actors
        scheduler_cls = BlockingScheduler if blocking else BackgroundScheduler
        self._aps: BaseScheduler = scheduler_cls(timezone=dt.UTC)

    def start(self) -> None:
        """Plan every job, first runs right after start-up; blocks if blocking."""
        now = self._runtime.clock.now()
        names = sorted(self._jobs, key=lambda n: (n != REFRESH_JOB, n))
        for position, name in enumerate(names):
            first_run = now + dt.timedelta(
                seconds=STARTUP_DELAY_S + min(position, 1) * STARTUP_STAGGER_S
            )
            self._plan(self._jobs[name], first_run)
        log.info("scheduler started with %d jobs", len(names))
        self._aps.start()

    def shutdown(self) -> None:
        """Stop planning; runs already enqueued are left to the workers."""
        if self._aps.running:
            self._aps.shutdown(wait=False)
        log.info("scheduler stopped")

    def interval_s(self, job: Job) -> float:
        """The job's interval, or the operator's override from the settings."""
        return float(self._runtime.settings.job_intervals.get(job.name, job.interval_s))

    def tick(self, name: str) -> int:
        """Enqueue the runs of job ``name`` due now; returns how many."""
        job = self._jobs[name]
        if job.fan_out is FanOut.ONCE:
            self._actors.enqueue(job)
            return 1

        characters = self._characters_for(job)
        for character_id in characters:
            self._actors.enqueue(job, character_id)
        log.debug("job %r fanned out to %d characters", name, len(characters))
        return len(characters)

    def _plan(self, job: Job, first_run: dt.datetime) -> None:
        interval = self.interval_s(job)
        trigger = IntervalTrigger(
            seconds=interval, jitter=min(job.jitter_s, interval) or None, timezone=dt.UTC
        )
        self._aps.add_job(
            self.tick,
            trigger,
            args=[job.name],
            id=job.name,
            name=job.name,
            next_run_time=first_run,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        log.info("job %r planned every %.0f s", job.name, interval, extra={"job": job.name})

    def _characters_for(self, job: Job) -> list[int]:
        query = self._runtime.tokens.query().require_scopes(job.scopes)
        return sorted({token.character_id for token in query})
