"""A worker started inside the test process, for plugin authors' tests.

It runs the real actors on an in-process broker, so a test can say "run
my job now" or "plan now" and then look at the database.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout

from ..actors import QUEUE, Actors, declare_actors
from ..jobs import Job, JobRegistry
from ..jobs.records import recent_runs
from ..scheduler import JobScheduler

if TYPE_CHECKING:
    from ..leader import Leadership
    from ..runtime import Runtime


class StartedWorker:
    """Broker, worker threads and actors around one runtime; stop() when done."""

    def __init__(
        self,
        runtime: Runtime,
        registry: JobRegistry | None = None,
        jobs: Iterable[Job] = (),
        *,
        broker: dramatiq.Broker | None = None,
        threads: int = 2,
    ) -> None:
        self.runtime = runtime
        self.registry = registry or JobRegistry(extra=jobs)
        self.broker = broker or StubBroker()
        self.actors: Actors = declare_actors(self.broker, self.registry)
        # A short poll keeps join() and stop() quick in tests.
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=threads, worker_timeout=100
        )
        self._worker.start()

    def run(self, name: str, character_id: int | None = None) -> dict[str, Any]:
        """Run job ``name`` once through the broker; returns its run record."""
        self.actors.enqueue(self.registry.get(name), character_id)
        self.join()
        return self.runs(name)[0]

    def scheduler(
        self,
        jobs: Mapping[str, Job] | None = None,
        leadership: Leadership | None = None,
    ) -> JobScheduler:
        """A scheduler sending to this worker's broker (leader unless told otherwise)."""
        if jobs is None:
            jobs, _failures = self.registry.load_all()
        return JobScheduler(self.runtime, jobs, self.actors, leadership=leadership)

    def plan(self, *names: str, now: dt.datetime | None = None) -> int:
        """Plan the named jobs (every loaded one if none is named) once, as the
        leader would, and wait for the runs; returns how many were sent."""
        jobs = {name: self.registry.get(name) for name in names} if names else None
        scheduler = self.scheduler(jobs)
        when = now or self.runtime.clock.now()
        sent = sum(scheduler.tick(name, when) for name in sorted(scheduler.jobs))
        self.join()
        return sent

    def join(self, timeout_s: float = 60.0) -> None:
        """Wait until every message sent so far has been handled.

        A run past its timeout is stopped by the watchdog; one blocked in a
        call that cannot be interrupted is handled when the call returns.

        :raises TimeoutError: runs are still queued or running after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        try:
            self.broker.join(QUEUE, timeout=int(timeout_s * 1000))
        except QueueJoinTimeout:
            # A run past its timeout is recorded as such at once, but its
            # message is done only when its thread is out of the job.
            raise TimeoutError(
                f"messages still unhandled after {timeout_s:g} s"
            ) from None
        self._worker.join()
        # A message a consumer has fetched but not yet handed to a worker
        # thread is in neither queue: the run records tell the truth.
        while self._unfinished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still unfinished after {timeout_s:g} s")
            time.sleep(0.02)
            self._worker.join()

    def runs(self, job: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest run records (of ``job`` if given), newest first."""
        with self.runtime.pool.connection() as conn:
            return recent_runs(conn, limit, job=job)

    def _unfinished(self) -> int:
        with self.runtime.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM esi_job_run"
                " WHERE state IN ('queued', 'running', 'adhoc')"
            ).fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        """Stop the worker threads and close the broker."""
        self._worker.stop()
        self.broker.close()
