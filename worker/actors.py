"""The dramatiq actors: refresh due tokens, prune dead ones, run a plugin job.

Messages carry job names and character ids only, never a token: the token
is looked up in the database when the run starts.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import dramatiq

from .jobs import Job, JobRegistry
from .runs import execute_job
from .runtime import current

log = logging.getLogger(__name__)

QUEUE = "esi_worker"
REFRESH_JOB = "refresh_tokens"
PRUNE_JOB = "prune_tokens"


@dataclass(frozen=True)
class Actors:
    """The actors declared on one broker."""

    run_job: dramatiq.Actor[Any, Any]
    refresh_due_tokens: dramatiq.Actor[Any, Any]
    prune_dead_tokens: dramatiq.Actor[Any, Any]

    def enqueue(self, job: Job, character_id: int | None = None) -> None:
        """Send one run of ``job``; the time limit follows the job's timeout."""
        self.run_job.send_with_options(
            args=(job.name, character_id, dt.datetime.now(dt.UTC).isoformat()),
            time_limit=int(job.timeout_s * 1000),
        )


def declare_actors(broker: dramatiq.Broker, registry: JobRegistry) -> Actors:
    """Declare the actors on ``broker``; runs use the process's current runtime."""

    def run_job(
        job_name: str, character_id: int | None = None, enqueued_at: str | None = None
    ) -> str:
        enqueued = dt.datetime.fromisoformat(enqueued_at) if enqueued_at else None
        return execute_job(
            current(), registry, job_name, character_id, enqueued_at=enqueued
        )

    def refresh_due_tokens() -> str:
        return execute_job(current(), registry, REFRESH_JOB)

    def prune_dead_tokens() -> str:
        return execute_job(current(), registry, PRUNE_JOB)

    def declare(fn: Any) -> dramatiq.Actor[Any, Any]:
        # Retries are decided per job by the scheduler, not by the broker.
        return dramatiq.actor(
            fn, broker=broker, actor_name=fn.__name__, queue_name=QUEUE, max_retries=0
        )

    return Actors(
        run_job=declare(run_job),
        refresh_due_tokens=declare(refresh_due_tokens),
        prune_dead_tokens=declare(prune_dead_tokens),
    )
