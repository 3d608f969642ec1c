"""Scheduled token upkeep: bulk refresh of due tokens, expiry, re-encryption."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..errors import (
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    TokenInvalidError,
)
from .rows import TOKEN_COLUMNS, token_from_row
from .token import NO_REFRESH_EXPIRED, VALID, Token

if TYPE_CHECKING:
    from .refresh import TokenRefresher
    from .store import TokenStore

log = logging.getLogger(__name__)

# A claimed token is left alone by other refresh runs for this long, so a
# run that dies mid-batch only delays those tokens, never loses them.
CLAIM_LEASE_S = 120.0
ENCRYPT_BATCH = 500


@dataclasses.dataclass(frozen=True)
class RefreshSummary:
    """What one :meth:`TokenStore.refresh_due` run did, counted by outcome."""

    success: int = 0
    dead: int = 0
    owner_changed: int = 0
    transient: int = 0
    config_error: int = 0
    skipped: int = 0
    no_refresh_expired: int = 0

    @property
    def total(self) -> int:
        """Every token the run touched."""
        return sum(dataclasses.astuple(self))

    def __str__(self) -> str:
        return ", ".join(
            f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
        )


class TokenUpkeep:
    """Bulk refresh for a :class:`~worker.tokens.TokenStore`.

    Tokens are claimed in batches, soonest expiry first, with ``FOR UPDATE
    SKIP LOCKED`` and a short lease, so several workers can run at once
    without refreshing a token twice; each token is then refreshed under its
    own row lock with bounded parallelism.
    """

    def __init__(self, store: TokenStore, refresher: TokenRefresher) -> None:
        self._store = store
        self._refresher = refresher

    def refresh_due(
        self, *, ahead_s: float | None, parallelism: int | None, batch_size: int
    ) -> RefreshSummary:
        """Refresh every valid token whose access token expires within ``ahead_s``."""
        ahead_s = self._store.settings.refresh_ahead_s if ahead_s is None else ahead_s
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        counts: Counter[str] = Counter(no_refresh_expired=self._expire_unrefreshable())
        self.encrypt_secrets(plaintext_only=True, limit=ENCRYPT_BATCH)

        done: set[int] = set()
        while not counts["config_error"]:
            batch, claimed_at = self._claim_due(ahead_s, batch_size, done)
            if not batch:
                break
            done.update(token.id for token in batch)
            log.debug("claimed %d tokens to refresh", len(batch))
            for _token, outcome in self.refresh_all(
                batch, parallelism, ahead_s, claimed_at
            ):
                counts[outcome] += 1

        summary = RefreshSummary(**counts)
        log.info("token refresh run finished: %s", summary)
        return summary

    def refresh_all(
        self,
        tokens: list[Token],
        parallelism: int | None,
        ahead_s: float | None,
        claimed_at: dt.datetime | None = None,
    ) -> list[tuple[Token, str]]:
        """Refresh each token on a thread pool; each with its outcome."""
        workers = parallelism or self._store.settings.refresh_parallelism
        if not tokens:
            return []
        # Each refresh holds a pooled connection across its SSO call; leave
        # one for everybody else.
        limit = max(1, getattr(self._store.pool, "max_size", workers + 1) - 1)
        if workers > limit:
            log.warning(
                "refresh parallelism %d lowered to %d to fit the database pool",
                workers,
                limit,
            )
            workers = limit
        with ThreadPoolExecutor(
            max_workers=min(workers, len(tokens)), thread_name_prefix="token-refresh"
        ) as executor:
            return list(
                executor.map(
                    lambda t: self._refresh_quietly(t, ahead_s, claimed_at), tokens
                )
            )

    def encrypt_secrets(
        self, *, plaintext_only: bool = False, limit: int | None = None
    ) -> int:
        """Encrypt secrets stored in plaintext or under an old key; how many rows.

        :param plaintext_only: skip the (costlier) check for old keys.
        :param limit: at most this many rows (``None``: all).
        """
        cipher, rewritten = self._store.cipher, 0
        where = (
            " WHERE access_token NOT LIKE 'fernet:%%'"
            " OR refresh_token NOT LIKE 'fernet:%%'"
            if plaintext_only
            else ""
        )
        with self._store.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, access_token, refresh_token FROM esi_token"
                f"{where} ORDER BY id FOR UPDATE SKIP LOCKED"
            )
            for token_id, access, refresh in rows.fetchall():
                if cipher.is_current(access) and cipher.is_current(refresh):
                    continue
                conn.execute(
                    "UPDATE esi_token SET access_token = %s, refresh_token = %s"
                    " WHERE id = %s",
                    (
                        cipher.encrypt(cipher.decrypt(access)),
                        cipher.encrypt(cipher.decrypt(refresh)),
                        token_id,
                    ),
                )
                rewritten += 1
                if limit is not None and rewritten >= limit:
                    break
        if rewritten:
            log.info(
                "encrypted the secrets of %d tokens with the current key", rewritten
            )
        return rewritten

    def _refresh_quietly(
        self, token: Token, ahead_s: float | None, claimed_at: dt.datetime | None
    ) -> tuple[Token, str]:
        """One refresh for a batch: the outcome instead of an exception."""
        try:
            return self._refresher.refresh(token, None, None, ahead_s, claimed_at)
        except (TokenInvalidError, NotRefreshableTokenError) as exc:
            return token, getattr(exc, "outcome", "dead")
        except SSOConfigurationError:
            return token, "config_error"
        except SSOError:
            return token, "transient"
        except Exception:
            log.exception(
                "refreshing token %r of character %r failed",
                token.id,
                token.character_id,
            )
            return token, "transient"

    def _claim_due(
        self, ahead_s: float, batch_size: int, done: set[int]
    ) -> tuple[list[Token], dt.datetime]:
        """Lease a batch of due tokens, journal their refreshes as started;
        the tokens and the claim's time.

        The journal entries are written with the claim (one statement
        instead of one per token); an entry left by an earlier unfinished
        refresh is kept, so its story is not lost.
        """
        now = self._store.clock.now()
        with self._store.pool.connection() as conn:
            rows = conn.execute(
                "WITH claimed AS (UPDATE esi_token t SET next_refresh_attempt = %s"
                " WHERE t.id IN (SELECT id FROM esi_token WHERE state = %s"
                " AND refresh_token IS NOT NULL AND access_expires <= %s"
                " AND (next_refresh_attempt IS NULL OR next_refresh_attempt <= %s)"
                " AND NOT (id = ANY(%s::bigint[]))"
                " ORDER BY access_expires LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {TOKEN_COLUMNS}), journal AS ("
                " INSERT INTO esi_token_refresh_journal (token_id, started)"
                " SELECT id, %s FROM claimed ON CONFLICT (token_id) DO NOTHING)"
                " SELECT * FROM claimed",
                (
                    now + dt.timedelta(seconds=CLAIM_LEASE_S),
                    VALID,
                    now + dt.timedelta(seconds=ahead_s),
                    now,
                    list(done),
                    batch_size,
                    now,
                ),
            ).fetchall()
        tokens = [token_from_row(self._store, r) for r in rows]
        return sorted(tokens, key=lambda t: t.access_expires), now

    def _expire_unrefreshable(self) -> int:
        now = self._store.clock.now()
        with self._store.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE esi_token SET state = %s, state_reason = %s, "
                "state_changed = %s, updated = %s WHERE state = %s "
                "AND refresh_token IS NULL AND access_expires <= %s "
                "RETURNING id, character_id",
                (
                    NO_REFRESH_EXPIRED,
                    "expired without a refresh token (a login with no scopes)",
                    now,
                    now,
                    VALID,
                    now,
                ),
            ).fetchall()
        for token_id, character_id in rows:
            log.info(
                "token %r of character %r expired and cannot be refreshed",
                token_id,
                character_id,
                extra={"token_id": token_id, "character_id": character_id},
            )
        return len(rows)
