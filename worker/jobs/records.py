"""The run records in ``esi_job_run``: queued, running, finished, trimmed.

A run's ``state`` is ``queued`` (planned; ``enqueued`` is when its
message was sent, NULL while the broker refused it), ``running``
(claimed by a worker), ``adhoc`` (started by hand, outside the plan) or
``finished`` (``outcome`` set). The partial unique index on ``(job,
subject)`` over ``queued``/``running`` is what stops pile-ups, even between
two schedulers. ``subject`` is 0 for once-jobs, else the character, token
or corporation id the run is for.

``esi_job_plan`` points at the newest planned run of each job and subject
(a trigger keeps it), so the plan is read without scanning the history.
A run's ``holder`` is the process running it (see
:mod:`worker.jobs.holders`): a result is recorded only while the run is
still open, and the scheduler closes a run only when its holder is gone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from .holders import HOLDER_GONE

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from .stats import RunStats

QUEUED, RUNNING, ADHOC, FINISHED = "queued", "running", "adhoc", "finished"
SUCCESS, FAILURE, SKIPPED, DEFERRED = "success", "failure", "skipped", "deferred"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class PlannedRun:
    """One run the scheduler found due."""

    subject: int
    due: dt.datetime
    character_id: int | None = None
    corporation_id: int | None = None
    attempt: int = 0
    deferrals: int = 0


@dataclass(frozen=True)
class RunRecord:
    """A run row as a worker or the scheduler sees it."""

    id: int
    job: str
    subject: int
    character_id: int | None
    corporation_id: int | None
    due: dt.datetime | None
    attempt: int
    state: str
    outcome: str | None = None
    next_due: dt.datetime | None = None
    enqueued: dt.datetime | None = None
    deferrals: int = 0
    holder: int | None = None


_COLUMNS = (
    "id, job, subject, character_id, corporation_id, due, attempt, state,"
    " outcome, next_due, enqueued, deferrals, holder"
)
_OPEN = "state IN ('running', 'adhoc')"


def queue_run(
    conn: psycopg.Connection[Any], job: str, run: PlannedRun, now: dt.datetime
) -> int | None:
    """Record ``run`` as queued; ``None`` when one is already queued or running."""
    row = conn.execute(
        "INSERT INTO esi_job_run (job, subject, character_id, corporation_id, due,"
        " attempt, deferrals, state, enqueued)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 'queued', %s)"
        " ON CONFLICT (job, subject) WHERE state IN ('queued', 'running') DO NOTHING"
        " RETURNING id",
        (
            job,
            run.subject,
            run.character_id,
            run.corporation_id,
            run.due,
            run.attempt,
            run.deferrals,
            now,
        ),
    ).fetchone()
    return int(row[0]) if row else None


def claim_run(
    pool: ConnectionPool, run_id: int, now: dt.datetime, holder: int | None = None
) -> RunRecord | None:
    """Move a queued run to running by ``holder``; ``None`` if another got it first."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE esi_job_run SET state = 'running', started = %s, holder = %s"
            f" WHERE id = %s AND state = 'queued' RETURNING {_COLUMNS}",
            (now, holder, run_id),
        ).fetchone()
    return RunRecord(**row) if row else None


def start_adhoc(
    pool: ConnectionPool,
    job: str,
    run: PlannedRun,
    enqueued: dt.datetime | None,
    now: dt.datetime,
    holder: int | None = None,
) -> RunRecord:
    """Record a run started outside the plan (by hand, or by an old message).

    ``run`` says whom it is for; its ``due`` is not recorded (no slot).
    """
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO esi_job_run (job, subject, character_id, corporation_id,"
            " enqueued, started, state, holder)"
            f" VALUES (%s, %s, %s, %s, %s, %s, 'adhoc', %s) RETURNING {_COLUMNS}",
            (
                job,
                run.subject,
                run.character_id,
                run.corporation_id,
                enqueued,
                now,
                holder,
            ),
        ).fetchone()
    assert row is not None
    return RunRecord(**row)


def move_due(pool: ConnectionPool, run_id: int, due: dt.datetime) -> None:
    """Let a claimed run stand for a newer slot (its message waited past it)."""
    with pool.connection() as conn:
        conn.execute("UPDATE esi_job_run SET due = %s WHERE id = %s", (due, run_id))


def mark_timed_out(
    pool: ConnectionPool, run_id: int, now: dt.datetime, error: str
) -> bool:
    """Record a run still in progress as failed by its timeout.

    The run stays open (running): its thread may still be inside the job,
    and until it is out no other run of the subject may start.
    """
    with pool.connection() as conn:
        cur = conn.execute(
            "UPDATE esi_job_run SET outcome = 'failure', error = %s, finished = %s"
            f" WHERE id = %s AND {_OPEN} AND outcome IS NULL",
            (error, now, run_id),
        )
    return cur.rowcount == 1


def finish_run(
    pool: ConnectionPool,
    run_id: int,
    now: dt.datetime,
    outcome: str,
    *,
    error: str | None = None,
    stats: RunStats | None = None,
    next_due: dt.datetime | None = None,
    deferred_reason: str | None = None,
) -> bool:
    """Record how a run ended and, if set, when its job and subject are due next.

    :returns: ``False`` when the run was no longer open (the scheduler
        closed it as abandoned): a late result never rewrites a record.
    """
    counts = (
        (stats.pages, stats.items, stats.esi_calls, stats.cache_hits)
        if stats
        else (0, 0, 0, 0)
    )
    with pool.connection() as conn:
        cur = conn.execute(
            "UPDATE esi_job_run SET state = 'finished', finished = %s, outcome = %s,"
            " error = %s, pages = %s, items = %s, esi_calls = %s, cache_hits = %s,"
            f" next_due = %s, deferred_reason = %s WHERE id = %s AND {_OPEN}",
            (now, outcome, error, *counts, next_due, deferred_reason, run_id),
        )
    return cur.rowcount == 1


def latest_planned(conn: psycopg.Connection[Any], job: str) -> dict[int, RunRecord]:
    """The newest planned run of ``job`` per subject: where its plan stands.

    One row per subject from ``esi_job_plan``, however long the history.
    """
    columns = ", ".join(f"r.{name.strip()}" for name in _COLUMNS.split(","))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {columns} FROM esi_job_plan p"
            " JOIN esi_job_run r ON r.id = p.run_id WHERE p.job = %s",
            (job,),
        ).fetchall()
    return {row["subject"]: RunRecord(**row) for row in rows}


def queued_before(
    conn: psycopg.Connection[Any], before: dt.datetime
) -> list[RunRecord]:
    """Queued runs enqueued before ``before`` (their message may be lost)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM esi_job_run WHERE state = 'queued'"
            " AND enqueued < %s ORDER BY id",
            (before,),
        ).fetchall()
    return [RunRecord(**row) for row in rows]


def claim_unsent(
    conn: psycopg.Connection[Any], jobs: list[str], now: dt.datetime
) -> list[RunRecord]:
    """Queued runs of ``jobs`` never sent, marked as sent at ``now``.

    Each run goes to one caller only, however many schedulers ask at once.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "UPDATE esi_job_run SET enqueued = %s WHERE state = 'queued'"
            f" AND enqueued IS NULL AND job = ANY(%s) RETURNING {_COLUMNS}",
            (now, jobs),
        ).fetchall()
    return sorted((RunRecord(**row) for row in rows), key=lambda r: r.id)


def mark_unsent(conn: psycopg.Connection[Any], run_ids: list[int]) -> None:
    """Mark queued runs whose message the broker refused: sent again at once."""
    if run_ids:
        conn.execute(
            "UPDATE esi_job_run SET enqueued = NULL"
            " WHERE id = ANY(%s) AND state = 'queued'",
            (run_ids,),
        )


def touch_enqueued(
    conn: psycopg.Connection[Any], run_ids: list[int], now: dt.datetime
) -> None:
    """Mark queued runs as sent again at ``now``."""
    if run_ids:
        conn.execute(
            "UPDATE esi_job_run SET enqueued = %s"
            " WHERE id = ANY(%s) AND state = 'queued'",
            (now, run_ids),
        )


def abandon_running(
    conn: psycopg.Connection[Any],
    job: str,
    started_before: dt.datetime,
    now: dt.datetime,
    *,
    max_retries: int = 0,
    retry_backoff_s: float = 0.0,
) -> int:
    """Close the open runs of ``job`` whose process is gone; returns how many.

    A run with a holder is closed as soon as no session holds the
    holder's lock, however long ago it started, and never while one
    does; a run without one (older versions) once it started before
    ``started_before``. A planned run is retried by the job's policy.
    A timeout already recorded is kept as the error.
    """
    cur = conn.execute(
        "UPDATE esi_job_run r SET state = 'finished', finished = %s,"
        " outcome = 'failure', error = COALESCE(r.error,"
        " 'abandoned: its worker stopped before recording a result'),"
        " next_due = CASE WHEN r.due IS NOT NULL AND r.attempt < %s"
        " THEN %s + make_interval(secs => %s * power(2, r.attempt)) END"
        f" WHERE r.job = %s AND r.{_OPEN} AND CASE WHEN r.holder IS NULL"
        f" THEN r.started < %s ELSE {HOLDER_GONE} END",
        (now, max_retries, now, retry_backoff_s, job, started_before),
    )
    return cur.rowcount


def trim_runs(conn: psycopg.Connection[Any], before: dt.datetime) -> int:
    """Delete finished runs older than ``before``, except each plan's newest."""
    cur = conn.execute(
        "DELETE FROM esi_job_run r WHERE r.state = 'finished' AND r.finished < %s"
        " AND NOT EXISTS (SELECT 1 FROM esi_job_plan p WHERE p.run_id = r.id)",
        (before,),
    )
    return cur.rowcount


def recent_runs(
    conn: psycopg.Connection[Any],
    limit: int,
    *,
    failures_only: bool = False,
    job: str | None = None,
) -> list[dict[str, Any]]:
    """The newest runs, newest first, as dicts of every column."""
    where = ["TRUE"]
    params: list[Any] = []
    if failures_only:
        where.append("outcome = 'failure'")
    if job is not None:
        where.append("job = %s")
        params.append(job)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT * FROM esi_job_run WHERE {' AND '.join(where)}"
            " ORDER BY id DESC LIMIT %s",
            (*params, limit),
        ).fetchall()
