"""The refresh journal: what a refresh in flight must not lose if it dies.

A refresh holds its token's row lock in one transaction from the claim to
the commit. If the worker dies after the SSO answered but before the
commit, that transaction rolls back, and with rotation the SSO may already
have retired the stored refresh token. So, outside that transaction, the
journal records that a refresh started and, once the SSO answered, the new
refresh token (encrypted). The next refresh of the token adopts it, or,
when nothing was saved and the SSO refuses the old one, says why.

An entry is cleared only once its story is over: the refresh stored an
answer, or the grant is known dead. A refresh that got no answer it could
use but may have reached the SSO (a timeout after sending, a 5xx, a
garbled 200) leaves an entry without a refresh token, so a later
``invalid_grant`` is explained rather than just reported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ..crypto import TokenCipher

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """A refresh that started and never committed: when, and what it got."""

    started: dt.datetime
    refresh_token: str | None = dataclasses.field(repr=False)
    received: dt.datetime | None


class RefreshJournal:
    """Writes on its own autocommit connection; reads and clears in the caller's.

    The writes use ``synchronous_commit = off``: they must survive the
    worker dying, not the database server crashing, and so need not wait
    for a flush to disk. They run on connections of the journal's own,
    never the pool's: a refresh waiting for its row lock while holding a
    pooled connection must never also need a second one. A write takes an
    idle one (or opens one), so refreshes running at once never queue
    behind each other; there are as many as writes ever ran at once.
    """

    def __init__(self, pool: ConnectionPool, cipher: TokenCipher) -> None:
        self._pool = pool
        self._cipher = cipher
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        # Closes the connections when the journal is collected or at exit.
        self._finalizer = weakref.finalize(self, _close_all, self._idle)

    def __repr__(self) -> str:
        return "<RefreshJournal>"

    def started(self, token_id: int, now: dt.datetime) -> None:
        """Record that a refresh of ``token_id`` is about to call the SSO.

        An entry left by an earlier, unfinished refresh is kept as it is:
        its time and refresh token are what the next refresh needs to know.
        """
        self._write(
            "INSERT INTO esi_token_refresh_journal (token_id, started)"
            " VALUES (%s, %s) ON CONFLICT (token_id) DO NOTHING",
            (token_id, now),
        )

    def received(self, token_id: int, refresh_token: str, now: dt.datetime) -> None:
        """Record the refresh token the SSO just handed out for ``token_id``."""
        self._write(
            "UPDATE esi_token_refresh_journal SET refresh_token = %s,"
            " received = %s WHERE token_id = %s",
            (self._cipher.encrypt(refresh_token), now, token_id),
        )

    @staticmethod
    def clear(conn: psycopg.Connection[Any], token_id: int) -> None:
        """Drop the entry, inside the transaction that stores the outcome."""
        conn.execute(
            "DELETE FROM esi_token_refresh_journal WHERE token_id = %s", (token_id,)
        )

    @staticmethod
    def unfinished(
        conn: psycopg.Connection[Any], token_id: int, started: dt.datetime
    ) -> None:
        """Leave an entry saying a refresh started at ``started`` never learned
        its outcome, inside the transaction that stores the failure."""
        conn.execute(
            "INSERT INTO esi_token_refresh_journal (token_id, started)"
            " VALUES (%s, %s) ON CONFLICT (token_id) DO UPDATE"
            " SET started = EXCLUDED.started, refresh_token = NULL, received = NULL",
            (token_id, started),
        )

    def close(self) -> None:
        """Close the journal's connections (they reopen on the next write)."""
        with self._lock:
            _close_all(self._idle)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        # A journal that cannot be written only weakens crash recovery; the
        # refresh itself goes on.
        for attempt in (1, 2):
            conn = None
            try:
                conn = self._take()
                conn.execute(sql, params)
            except psycopg.OperationalError as exc:
                if conn is not None:
                    _close_all([conn])
                if attempt == 2:
                    log.warning("refresh journal not written (%s)", type(exc).__name__)
                continue
            self._give_back(conn)
            return

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        conninfo = self._pool.conninfo
        conninfo = conninfo() if callable(conninfo) else conninfo
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute("SET synchronous_commit = off")
        return conn

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._idle.append(conn)


def _close_all(holder: list[psycopg.Connection[Any]]) -> None:
    while holder:
        conn = holder.pop()
        try:
            conn.close()
        except psycopg.Error:
            pass
