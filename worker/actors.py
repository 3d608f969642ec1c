"""The dramatiq actors: refresh due tokens, prune dead ones, run a plugin job.

Messages carry job names, character ids and run ids only, never a token:
the token is looked up in the database when the run starts.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import dramatiq

from .jobs import Job, JobRegistry
from .runs import RunGuard, execute_job
from .runtime import current

log = logging.getLogger(__name__)

QUEUE = "esi_worker"
# Timeouts are enforced by the run's own watchdog (worker.jobs.watchdog);
# dramatiq's time limit, should its CLI ever boot these actors, only
# backs it up, this long after the job's timeout.
TIME_LIMIT_GRACE_S = 60.0
REFRESH_JOB = "refresh_tokens"
PRUNE_JOB = "prune_tokens"


@dataclass(frozen=True)
class Actors:
    """The actors declared on one broker."""

    run_job: dramatiq.Actor[Any, Any]
    refresh_due_tokens: dramatiq.Actor[Any, Any]
    prune_dead_tokens: dramatiq.Actor[Any, Any]

    def enqueue(
        self, job: Job, character_id: int | None = None, *, run_id: int | None = None
    ) -> None:
        """Send one run of ``job`` (its timeout is enforced where it runs)."""
        enqueued = dt.datetime.now(dt.UTC).isoformat()
        self.run_job.send_with_options(
            args=(job.name, character_id, enqueued, run_id),
            time_limit=int((job.timeout_s + TIME_LIMIT_GRACE_S) * 1000),
        )
        log.debug(
            "run %r of job %r sent",
            run_id,
            job.name,
            extra={"job": job.name, "run_id": run_id},
        )


def declare_actors(broker: dramatiq.Broker, registry: JobRegistry) -> Actors:
    """Declare the actors on ``broker``; runs use the process's current runtime."""
    guards: dict[int, RunGuard] = {}

    def guard() -> RunGuard:
        # One guard per runtime, so the status document is read once per max age.
        runtime = current()
        if id(runtime) not in guards:
            guards.clear()
            guards[id(runtime)] = RunGuard(runtime)
        return guards[id(runtime)]

    def run_job(
        job_name: str,
        character_id: int | None = None,
        enqueued_at: str | None = None,
        run_id: int | None = None,
    ) -> None:
        # The outcome is in the run record; a returned value would be dropped.
        enqueued = dt.datetime.fromisoformat(enqueued_at) if enqueued_at else None
        execute_job(
            current(),
            registry,
            job_name,
            character_id,
            enqueued_at=enqueued,
            run_id=run_id,
            guard=guard(),
        )

    def refresh_due_tokens() -> None:
        execute_job(current(), registry, REFRESH_JOB, guard=guard())

    def prune_dead_tokens() -> None:
        execute_job(current(), registry, PRUNE_JOB, guard=guard())

    def declare(fn: Any) -> dramatiq.Actor[Any, Any]:
        # Retries are decided per job by the scheduler, not by the broker.
        decorator = dramatiq.actor(
            broker=broker, actor_name=fn.__name__, queue_name=QUEUE, max_retries=0
        )
        return decorator(fn)

    return Actors(
        run_job=declare(run_job),
        refresh_due_tokens=declare(refresh_due_tokens),
        prune_dead_tokens=declare(prune_dead_tokens),
    )
