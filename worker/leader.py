"""Scheduler leadership through a PostgreSQL advisory lock.

The leader holds a session-level advisory lock on a connection of its
own. PostgreSQL releases the lock when that session ends, so a leader
that dies (even by SIGKILL, or by losing the network) frees the lock and
a follower, which tries again on every tick, takes over. A leader cut
off by the network is noticed by TCP keepalives on both ends of its
session (PostgreSQL would otherwise keep the session, and the lock, for
the kernel's two hours).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .db import describe_database

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
# A silent peer is given up after about a minute, on both ends: libpq's
# keepalives for this process, the server's own (set for the session
# through ``options``) for PostgreSQL, which holds the lock.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3
USER_TIMEOUT_MS = 60_000
SESSION_OPTIONS = (
    f"-c tcp_keepalives_idle={KEEPALIVE_IDLE_S}"
    f" -c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S}"
    f" -c tcp_keepalives_count={KEEPALIVE_COUNT}"
    f" -c tcp_user_timeout={USER_TIMEOUT_MS}"
)


def session_connection(url: str, name: str) -> psycopg.Connection[Any]:
    """An autocommit connection for a session-level lock, with TCP keepalives.

    :param name: the role, shown with the pid in ``pg_stat_activity``.
    :raises psycopg.Error: when PostgreSQL cannot be reached.
    """
    given = conninfo_to_dict(url).get("options")
    options = f"{given} {SESSION_OPTIONS}" if given else SESSION_OPTIONS
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        # The pid lets an operator find the process from pg_locks.
        application_name=f"esi-worker {name} pid={os.getpid()}",
        keepalives=1,
        keepalives_idle=KEEPALIVE_IDLE_S,
        keepalives_interval=KEEPALIVE_INTERVAL_S,
        keepalives_count=KEEPALIVE_COUNT,
        tcp_user_timeout=USER_TIMEOUT_MS,
        options=options,
    )


class LockSession:
    """The session behind session-level advisory locks: opened on demand,
    checked, closed. Its locks live exactly as long as it does."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        """The session, opened anew if there is none.

        :raises psycopg.Error: when PostgreSQL cannot be reached.
        """
        if self._conn is None or self._conn.closed:
            self._conn = session_connection(self._url, self._name)
        return self._conn

    def alive(self) -> bool:
        """Whether the session (and so every lock it took) still stands."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        """End the session, which frees its locks."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass  # the session is gone either way, and so is its lock
        self._conn = None


class Leadership:
    """One candidate for leadership; :meth:`check` is cheap enough for every tick."""

    def __init__(self, database_url: str, key: int, *, name: str = "scheduler") -> None:
        self._url = database_url
        self._key = key
        self._name = name
        self._lock = threading.Lock()
        self._session = LockSession(database_url, name)
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """True while this candidate held the lock at the last check."""
        return self._leading

    def check(self) -> bool:
        """Confirm the lock is still held, or try to take it; returns leadership.

        A lost connection means a lost lock: leadership is given up at once
        and retried on the next check.
        """
        with self._lock:
            if self._leading and self._session.alive():
                return True
            if self._leading:
                log.warning(
                    "%s lost leadership: its database session ended", self._name
                )
                self._drop()
            self._leading = self._try_acquire()
            return self._leading

    def release(self) -> None:
        """Give the lock up (closing the session frees it too)."""
        with self._lock:
            if self._leading:
                log.info("%s gives up leadership", self._name)
            self._drop()

    def _try_acquire(self) -> bool:
        try:
            row = self._session.connection().execute(
                "SELECT pg_try_advisory_lock(%s)", (self._key,)
            ).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "%s cannot reach PostgreSQL at %s for leadership: %s",
                self._name,
                describe_database(self._url),
                type(exc).__name__,
            )
            self._drop()
            return False
        acquired = bool(row and row[0])
        if acquired:
            log.info("%s is now the leader", self._name)
        return acquired

    def _drop(self) -> None:
        self._leading = False
        self._session.close()
