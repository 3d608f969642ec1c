"""The run records in ``esi_job_run``: queued, running, finished, trimmed.

A run's ``state`` is ``queued`` (planned, message sent), ``running``
(claimed by a worker), ``adhoc`` (started by hand, outside the plan) or
``finished`` (``outcome`` set). The partial unique index on ``(job,
subject)`` over ``queued``/``running`` is what stops pile-ups, even between
two schedulers. ``subject`` is 0 for once-jobs, else the character, token
or corporation id the run is for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

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


_COLUMNS = (
    "id, job, subject, character_id, corporation_id, due, attempt, state,"
    " outcome, next_due, enqueued"
)


def queue_run(
    conn: psycopg.Connection[Any], job: str, run: PlannedRun, now: dt.datetime
) -> int | None:
    """Record ``run`` as queued; ``None`` when one is already queued or running."""
    row = conn.execute(
        "INSERT INTO esi_job_run (job, subject, character_id, corporation_id, due,"
        " attempt, state, enqueued) VALUES (%s, %s, %s, %s, %s, %s, 'queued', %s)"
        " ON CONFLICT (job, subject) WHERE state IN ('queued', 'running') DO NOTHING"
        " RETURNING id",
        (
            job,
            run.subject,
            run.character_id,
            run.corporation_id,
            run.due,
            run.attempt,
            now,
        ),
    ).fetchone()
    return int(row[0]) if row else None


def claim_run(pool: ConnectionPool, run_id: int, now: dt.datetime) -> RunRecord | None:
    """Move a queued run to running; ``None`` if another message got it first."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE esi_job_run SET state = 'running', started = %s"
            f" WHERE id = %s AND state = 'queued' RETURNING {_COLUMNS}",
            (now, run_id),
        ).fetchone()
    return RunRecord(**row) if row else None


def start_adhoc(
    pool: ConnectionPool,
    job: str,
    character_id: int | None,
    enqueued: dt.datetime | None,
    now: dt.datetime,
) -> RunRecord:
    """Record a run started outside the plan (by hand, or by an old message)."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO esi_job_run (job, subject, character_id, enqueued, started,"
            f" state) VALUES (%s, %s, %s, %s, %s, 'adhoc') RETURNING {_COLUMNS}",
            (job, character_id or 0, character_id, enqueued, now),
        ).fetchone()
    assert row is not None
    return RunRecord(**row)


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
) -> None:
    """Record how a run ended and, if set, when its job and subject are due next."""
    counts = (
        (stats.pages, stats.items, stats.esi_calls, stats.cache_hits)
        if stats
        else (0, 0, 0, 0)
    )
    with pool.connection() as conn:
        conn.execute(
            "UPDATE esi_job_run SET state = 'finished', finished = %s, outcome = %s,"
            " error = %s, pages = %s, items = %s, esi_calls = %s, cache_hits = %s,"
            " next_due = %s, deferred_reason = %s WHERE id = %s",
            (now, outcome, error, *counts, next_due, deferred_reason, run_id),
        )


def latest_planned(conn: psycopg.Connection[Any], job: str) -> dict[int, RunRecord]:
    """The newest planned run of ``job`` per subject: where its plan stands."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT DISTINCT ON (subject) {_COLUMNS} FROM esi_job_run"
            " WHERE job = %s AND due IS NOT NULL ORDER BY subject, id DESC",
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
) -> int:
    """Close runs of ``job`` running since before ``started_before`` (worker died)."""
    cur = conn.execute(
        "UPDATE esi_job_run SET state = 'finished', finished = %s, outcome = 'failure',"
        " error = 'abandoned: no result within the job timeout'"
        " WHERE job = %s AND state IN ('running', 'adhoc') AND started < %s",
        (now, job, started_before),
    )
    return cur.rowcount


def trim_runs(conn: psycopg.Connection[Any], before: dt.datetime) -> int:
    """Delete finished runs older than ``before``, except each plan's newest."""
    cur = conn.execute(
        "DELETE FROM esi_job_run r WHERE r.state = 'finished' AND r.finished < %s"
        " AND r.id NOT IN (SELECT DISTINCT ON (job, subject) id FROM esi_job_run"
        " WHERE due IS NOT NULL ORDER BY job, subject, id DESC)",
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
