"""Who is running a run: a process proves it is alive with an advisory lock.

Each process that runs jobs takes a number from ``esi_job_holder_seq``
and holds a session-level advisory lock on it, on a connection of its
own, for as long as it lives. A run records that number as its
``holder``. PostgreSQL drops the lock with the session, so a process
killed (or cut off, see the keepalives in :mod:`worker.leader`) frees it,
and the scheduler closes that process's runs; a run whose holder still
holds the lock is never closed behind its back, however long it takes.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING, Any

import psycopg

from ..leader import LockSession

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

# The first key of the two-key advisory locks of run holders ("ESJH");
# the scheduler's leadership lock uses the one-key form, a space of its own.
HOLDER_LOCK_CLASS = 0x45534A48

# The condition, in SQL, that no live session holds run ``r``'s holder lock.
HOLDER_GONE = (
    "NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.granted AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_database"
    " WHERE datname = current_database())"
    f" AND l.classid = {HOLDER_LOCK_CLASS}::oid AND l.objid = r.holder::oid)"
)


class RunHolder:
    """This process's holder number on one database, and the lock that proves it."""

    def __init__(self, conninfo: str) -> None:
        self._lock = threading.Lock()
        self._session = LockSession(conninfo, "runs")
        self._number: int | None = None

    def number(self) -> int:
        """The holder number, its lock taken (again) if the session was lost.

        :raises psycopg.Error: when PostgreSQL cannot be reached.
        """
        with self._lock:
            if self._number is not None and self._session.alive():
                return self._number
            self._session.close()
            self._number = self._take(self._session.connection())
            return self._number

    def close(self) -> None:
        """Let the lock go: this process runs nothing more on the database."""
        with self._lock:
            self._session.close()
            self._number = None

    def _take(self, conn: psycopg.Connection[Any]) -> int:
        # A lost session frees the old number; the runs still going on
        # here keep it if nobody took it meanwhile.
        if self._number is not None and _try_lock(conn, self._number):
            log.info("run holder %d taken again after a lost session", self._number)
            return self._number
        while True:
            row = conn.execute("SELECT nextval('esi_job_holder_seq')").fetchone()
            assert row is not None
            if _try_lock(conn, int(row[0])):
                log.debug("this process holds its runs as holder %d", row[0])
                return int(row[0])


def holder_for(pool: ConnectionPool) -> RunHolder:
    """The process-wide holder on the database of ``pool``."""
    given = pool.conninfo
    conninfo = given if isinstance(given, str) else given()
    with _holders_lock:
        holder = _holders.get(conninfo)
        if holder is None:
            if not _holders:
                atexit.register(close_holders)
            holder = _holders[conninfo] = RunHolder(conninfo)
        return holder


def close_holders() -> None:
    """Release every holder lock of this process (at exit)."""
    with _holders_lock:
        holders = list(_holders.values())
        _holders.clear()
    for holder in holders:
        holder.close()


def _try_lock(conn: psycopg.Connection[Any], number: int) -> bool:
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (HOLDER_LOCK_CLASS, number)
    ).fetchone()
    return bool(row and row[0])


_holders: dict[str, RunHolder] = {}
_holders_lock = threading.Lock()
