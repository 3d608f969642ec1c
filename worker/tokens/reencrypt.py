"""Re-encrypting stored secrets under the first key, in every table holding one.

Tokens hold their access and refresh tokens, the refresh journal the
refresh tokens saved by interrupted refreshes, pending logins their PKCE
verifiers: a key may only be dropped once none of them needs it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import ConfigurationError
from ..wording import counted

if TYPE_CHECKING:
    from .store import TokenStore

log = logging.getLogger(__name__)

ENCRYPT_BATCH = 500


@dataclasses.dataclass(frozen=True)
class ReencryptSummary:
    """What :meth:`TokenStore.reencrypt_report` rewrote, and what it could not."""

    tokens: int = 0
    journal_entries: int = 0
    pending_logins: int = 0
    locked: int = 0

    @property
    def rewritten(self) -> int:
        """Rows rewritten under the first key, over every table."""
        return self.tokens + self.journal_entries + self.pending_logins

    def __str__(self) -> str:
        entries = counted(
            self.journal_entries, "refresh journal entry", "refresh journal entries"
        )
        text = (
            f"re-encrypted the secrets of {counted(self.tokens, 'token')}, "
            f"{entries} and {counted(self.pending_logins, 'pending login')}"
        )
        if self.locked:
            text += (
                f"; {counted(self.locked, 'row')} stayed locked by refreshes in "
                "flight and were not re-encrypted: run it again before dropping "
                "the old key"
            )
        return text


# Tables holding secrets: the table, its key column, its secret columns.
_SECRET_TABLES = (
    ("esi_token", "id", ("access_token", "refresh_token")),
    ("esi_token_refresh_journal", "token_id", ("refresh_token",)),
    ("esi_pending_login", "state", ("code_verifier",)),
)


class SecretRewriter:
    """Rewrites a store's secrets under its cipher's first key."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def reencrypt(self, *, lock_timeout_s: float = 30.0) -> ReencryptSummary:
        """Encrypt every secret not under the first key, in every table.

        Rows locked by a refresh in flight are skipped at first, then
        waited for up to ``lock_timeout_s`` each; those still locked are
        counted in the summary (and logged), never silently left behind.
        """
        rewritten: dict[str, int] = {}
        locked = 0
        for table, key, columns in _SECRET_TABLES:
            count, busy = self._reencrypt_table(table, key, columns, lock_timeout_s)
            rewritten[table], locked = count, locked + busy
        summary = ReencryptSummary(
            tokens=rewritten["esi_token"],
            journal_entries=rewritten["esi_token_refresh_journal"],
            pending_logins=rewritten["esi_pending_login"],
            locked=locked,
        )
        if summary.locked:
            log.warning("%s", summary)
        elif summary.rewritten:
            log.info("%s", summary)
        return summary

    def encrypt_plaintext(self, *, limit: int) -> int:
        """Encrypt up to ``limit`` token rows still in plaintext; how many.

        Rows being refreshed are skipped: the refresh writes them encrypted.
        """
        cipher, rewritten = self._store.cipher, 0
        with self._store.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, access_token, refresh_token FROM esi_token"
                " WHERE access_token NOT LIKE 'fernet:%%'"
                " OR refresh_token NOT LIKE 'fernet:%%'"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            for token_id, *values in rows:
                # decrypt() passes plaintext through: one column may be
                # encrypted already, maybe under a key since dropped (the
                # refresh run reports such a token).
                try:
                    fresh = [cipher.encrypt(cipher.decrypt(v)) for v in values]
                except ConfigurationError:
                    continue
                conn.execute(
                    "UPDATE esi_token SET access_token = %s, refresh_token = %s"
                    " WHERE id = %s",
                    (*fresh, token_id),
                )
                rewritten += 1
        if rewritten:
            log.info("encrypted the secrets of %d plaintext tokens", rewritten)
        return rewritten

    def _reencrypt_table(
        self, table: str, key: str, columns: tuple[str, ...], lock_timeout_s: float
    ) -> tuple[int, int]:
        """Re-encrypt one table in batches; rows rewritten and rows left locked."""
        with self._store.pool.connection() as conn:
            keys = [r[0] for r in conn.execute(f"SELECT {key} FROM {table}")]  # type: ignore[arg-type]
        rewritten, skipped = 0, []
        for start in range(0, len(keys), ENCRYPT_BATCH):
            chunk = keys[start : start + ENCRYPT_BATCH]
            done, seen = self._reencrypt_rows(table, key, columns, chunk, None)
            rewritten += done
            skipped += [k for k in chunk if k not in seen]
        locked = 0
        for row_key in skipped:
            try:
                done, seen = self._reencrypt_rows(
                    table, key, columns, [row_key], lock_timeout_s
                )
            except psycopg.errors.LockNotAvailable:
                locked += 1
                continue
            rewritten += done
        return rewritten, locked

    def _reencrypt_rows(
        self,
        table: str,
        key: str,
        columns: tuple[str, ...],
        keys: list[Any],
        wait_s: float | None,
    ) -> tuple[int, set[Any]]:
        """Rewrite the rows of ``keys`` not under the first key; how many, and
        which rows were seen (``wait_s`` None: skip locked ones)."""
        cipher, rewritten = self._store.cipher, 0
        lock = " FOR UPDATE SKIP LOCKED" if wait_s is None else " FOR UPDATE"
        with self._store.pool.connection() as conn, conn.transaction():
            if wait_s is not None:
                conn.execute(f"SET LOCAL lock_timeout = {int(wait_s * 1000)}")  # type: ignore[arg-type]
            rows = conn.execute(
                f"SELECT {key}, {', '.join(columns)} FROM {table}"  # type: ignore[arg-type]
                f" WHERE {key} = ANY(%s){lock}",
                (keys,),
            ).fetchall()
            for row_key, *values in rows:
                if all(cipher.is_current(v) for v in values):
                    continue
                fresh = [cipher.encrypt(cipher.decrypt(v)) for v in values]
                assignments = ", ".join(f"{c} = %s" for c in columns)
                conn.execute(
                    f"UPDATE {table} SET {assignments} WHERE {key} = %s",  # type: ignore[arg-type]
                    (*fresh, row_key),
                )
                rewritten += 1
        return rewritten, {r[0] for r in rows}
