"""Scheduled token upkeep: bulk refresh of due tokens, expiry of unrefreshable ones."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    TokenClientMismatchError,
    TokenInvalidError,
)
from .bulk import NOT_ATTEMPTED, RefreshRun
from .reencrypt import ENCRYPT_BATCH, SecretRewriter
from .rows import TOKEN_COLUMNS, token_from_row
from .token import NO_REFRESH_EXPIRED, VALID, Token

if TYPE_CHECKING:
    from .refresh import TokenRefresher
    from .store import TokenStore

log = logging.getLogger(__name__)

# A claimed token is left alone by other refresh runs for at least this
# long, so a run that dies mid-batch only delays those tokens, never loses
# them. The lease grows to cover the batch even when every SSO call runs
# into the timeout, up to MAX_LEASE_S (a batch is cut to fit); should it
# run out all the same, the lease check under the row lock still keeps a
# token from being refreshed by two runs.
CLAIM_LEASE_S = 120.0
MAX_LEASE_S = 900.0
# How long a token whose secrets no configured key opens is left alone.
UNREADABLE_RETRY_S = 3600.0
# What a refresh costs beyond the SSO timeout: the lock, the journal, the commit.
REFRESH_OVERHEAD_S = 5.0

# The share of the spread window a token is due early by: a fixed function
# of its id (Fibonacci hashing), so renewals that once coincided drift apart.
_SHARE_SQL = "(((t.id %% 65536) * 40503) %% 65536) / 65536.0"


def spread_share(token_id: int) -> float:
    """How far into the spread window (0..1) token ``token_id`` is due early."""
    return ((token_id % 65536) * 40503 % 65536) / 65536


@dataclasses.dataclass(frozen=True)
class _Batch:
    """A claimed batch on the refresh threads."""

    tokens: list[Token]
    futures: list[Future[tuple[Token, str]]]
    claimed: tuple[dt.datetime, dt.datetime]


@dataclasses.dataclass(frozen=True)
class RefreshSummary:
    """What one :meth:`TokenStore.refresh_due` run did, counted by outcome.

    ``not_attempted`` counts claimed tokens the run left without an SSO
    call: it stopped after an ``invalid_client``, or the token had been
    taken over by another run or backed off by another holder meanwhile.
    """

    success: int = 0
    dead: int = 0
    owner_changed: int = 0
    transient: int = 0
    config_error: int = 0
    skipped: int = 0
    no_refresh_expired: int = 0
    not_attempted: int = 0

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
        self._secrets = SecretRewriter(store)

    def refresh_due(
        self, *, ahead_s: float | None, parallelism: int | None, batch_size: int
    ) -> RefreshSummary:
        """Refresh every valid token whose access token expires within ``ahead_s``
        (or, spread by token, up to ``refresh_spread_s`` earlier)."""
        settings = self._store.settings
        ahead_s = settings.refresh_ahead_s if ahead_s is None else ahead_s
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        # Before any claim: a missing setting is the operator's to fix, not
        # a failure of each token (no lease, no journal entry, no back-off).
        self._store.sso.require_application()
        workers = self._workers(parallelism)
        batch_size, lease_s = self._batch_and_lease(batch_size, workers)
        counts: Counter[str] = Counter(no_refresh_expired=self._expire_unrefreshable())
        self._secrets.encrypt_plaintext(limit=ENCRYPT_BATCH)

        # The parallelism bounds the SSO calls in flight; a few more threads
        # do the database work around them, so the SSO never waits for it.
        run = RefreshRun(sso_slots=threading.BoundedSemaphore(workers))
        done = set[int]()
        window = (ahead_s, settings.refresh_spread_s)
        with ThreadPoolExecutor(
            max_workers=self._threads(workers), thread_name_prefix="token-refresh"
        ) as executor:
            # The next batch is claimed while this one is refreshed, so the
            # threads never wait for a batch's last refreshes to end.
            running: _Batch | None = None
            while not run.stopped:
                batch, claimed, unreadable = self._claim_due(
                    window, batch_size, lease_s, done
                )
                counts["config_error"] += len(unreadable)
                done.update(unreadable)
                done.update(token.id for token in batch)
                if batch:
                    log.debug("claimed %d tokens to refresh", len(batch))
                submitted = self._submit(executor, batch, sum(window), run, claimed)
                if running is not None:
                    counts.update(self._finish(running))
                running = submitted
                if not batch and not unreadable:
                    break
            if running is not None:
                counts.update(self._finish(running))

        summary = RefreshSummary(**counts)
        log.info("token refresh run finished: %s", summary)
        return summary

    def refresh_all(
        self,
        tokens: list[Token],
        parallelism: int | None,
        ahead_s: float | None,
        run: RefreshRun | None = None,
    ) -> list[tuple[Token, str]]:
        """Refresh each token on a thread pool; each with its outcome.

        An ``invalid_client`` answer stops the refreshes not yet sent: every
        one of them would get the same answer.

        :raises ConfigurationError: no SSO application is configured.
        """
        if not tokens:
            return []
        self._store.sso.require_application()
        workers = self._workers(parallelism)
        run = run or RefreshRun()
        with ThreadPoolExecutor(
            max_workers=min(workers, len(tokens)), thread_name_prefix="token-refresh"
        ) as executor:
            return list(
                executor.map(lambda t: self._refresh_quietly(t, ahead_s, run), tokens)
            )

    def _submit(
        self,
        executor: ThreadPoolExecutor,
        batch: list[Token],
        ahead_s: float,
        run: RefreshRun,
        claimed: tuple[dt.datetime, dt.datetime],
    ) -> _Batch:
        batch_run = run.for_batch(*claimed)
        futures = [
            executor.submit(self._refresh_quietly, token, ahead_s, batch_run)
            for token in batch
        ]
        return _Batch(batch, futures, claimed)

    def _finish(self, batch: _Batch) -> list[str]:
        """Wait for a batch's refreshes; give back what it left; the outcomes."""
        results = [future.result() for future in batch.futures]
        self._release(results, *batch.claimed)
        return [outcome for _token, outcome in results]

    def _threads(self, workers: int) -> int:
        """Refresh threads for ``workers`` SSO calls at once: a quarter more,
        as the database pool allows (each thread holds a connection)."""
        limit = max(1, getattr(self._store.pool, "max_size", workers + 1) - 1)
        return max(workers, min(limit, workers + math.ceil(workers / 4)))

    def _workers(self, parallelism: int | None) -> int:
        """The refreshes to run at once, within what the database pool allows."""
        workers = parallelism or self._store.settings.refresh_parallelism
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
        return workers

    def _batch_and_lease(self, batch_size: int, workers: int) -> tuple[int, float]:
        """A batch the run can finish within its lease, and that lease.

        The worst case of one refresh is the SSO timeout (plus our own
        overhead); the lease covers that many rounds of two batches, since
        the next batch is claimed while one is refreshed.
        """
        per_token_s = self._store.settings.sso_timeout_s + REFRESH_OVERHEAD_S
        # Two batches are held at once: one refreshing, the next waiting.
        most = workers * max(1, int(MAX_LEASE_S // per_token_s) // 2)
        batch_size = min(batch_size, most)
        needed = 2 * math.ceil(batch_size / workers) * per_token_s
        return batch_size, min(MAX_LEASE_S, max(CLAIM_LEASE_S, needed))

    def _refresh_quietly(
        self, token: Token, ahead_s: float | None, run: RefreshRun
    ) -> tuple[Token, str]:
        """One refresh for a batch: the outcome instead of an exception."""
        if run.stopped:
            return token, NOT_ATTEMPTED
        try:
            return self._refresher.refresh(token, None, None, ahead_s, run)
        except (TokenInvalidError, NotRefreshableTokenError) as exc:
            return token, getattr(exc, "outcome", "dead")
        except SSOConfigurationError:
            return token, "config_error"
        except SSOError:
            return token, "transient"
        except TokenClientMismatchError as exc:
            log.error("%s", exc, extra={"token_id": token.id})
            return token, "config_error"
        except ConfigurationError as exc:
            # A secret no configured key opens: an operator's fix, not ours.
            log.error(
                "token %r of character %r cannot be refreshed: %s",
                token.id,
                token.character_id,
                exc,
                extra={"token_id": token.id, "character_id": token.character_id},
            )
            return token, "transient"
        except Exception:
            log.exception(
                "refreshing token %r of character %r failed",
                token.id,
                token.character_id,
            )
            return token, "transient"

    def _claim_due(
        self,
        window: tuple[float, float],
        batch_size: int,
        lease_s: float,
        done: set[int],
    ) -> tuple[list[Token], tuple[dt.datetime, dt.datetime], list[int]]:
        """Lease a batch of due tokens, journal their refreshes as started;
        the tokens, the claim's time and lease, and the ids of tokens set
        aside as unreadable (see :meth:`_readable`).

        A token is due once its access token expires within ``ahead_s``,
        or within ``ahead_s`` plus its share of ``spread_s``. The journal
        entries are written with the claim (one statement instead of one
        per token); an entry left by an earlier unfinished refresh is kept,
        so its story is not lost.
        """
        ahead_s, spread_s = window
        now = self._store.clock.now()
        lease_until = now + dt.timedelta(seconds=lease_s)
        with self._store.pool.connection() as conn:
            rows = conn.execute(
                "WITH claimed AS (UPDATE esi_token t SET next_refresh_attempt = %s"
                " WHERE t.id IN (SELECT t.id FROM esi_token t WHERE t.state = %s"
                " AND t.refresh_token IS NOT NULL AND t.access_expires <= %s"
                f" AND t.access_expires <= %s + (%s + %s * {_SHARE_SQL})"
                " * interval '1 second'"
                " AND (t.next_refresh_attempt IS NULL OR t.next_refresh_attempt <= %s)"
                " AND NOT (t.id = ANY(%s::bigint[]))"
                " ORDER BY t.access_expires LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {TOKEN_COLUMNS}), journal AS ("
                " INSERT INTO esi_token_refresh_journal (token_id, started)"
                " SELECT id, %s FROM claimed ON CONFLICT (token_id) DO NOTHING)"
                " SELECT * FROM claimed",
                (
                    lease_until,
                    VALID,
                    now + dt.timedelta(seconds=ahead_s + spread_s),
                    now,
                    ahead_s,
                    spread_s,
                    now,
                    list(done),
                    batch_size,
                    now,
                ),
            ).fetchall()
        tokens, unreadable = self._readable(rows, now)
        tokens.sort(key=lambda t: t.access_expires)
        return tokens, (now, lease_until), unreadable

    def _readable(
        self, rows: list[Any], claimed_at: dt.datetime
    ) -> tuple[list[Token], list[int]]:
        """The claimed tokens whose secrets open; the others are set aside.

        One token written under a key that was since dropped must not stop
        the refresh of all the others: it is logged, noted on its row and
        left alone for a while, nothing else about it changes.
        """
        tokens, unreadable = [], []
        for row in rows:
            try:
                tokens.append(token_from_row(self._store, row))
            except ConfigurationError as exc:
                unreadable.append(row[0])
                reason = str(exc)
        if unreadable:
            self._set_aside(unreadable, claimed_at, reason)
        return tokens, unreadable

    def _set_aside(
        self, token_ids: list[int], claimed_at: dt.datetime, reason: str
    ) -> None:
        retry_at = claimed_at + dt.timedelta(seconds=UNREADABLE_RETRY_S)
        with self._store.pool.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE esi_token SET last_refresh_error = %s,"
                " next_refresh_attempt = %s WHERE id = ANY(%s)",
                (reason[:500], retry_at, token_ids),
            )
            conn.execute(
                "DELETE FROM esi_token_refresh_journal WHERE token_id = ANY(%s)"
                " AND started = %s AND refresh_token IS NULL",
                (token_ids, claimed_at),
            )
        for token_id in token_ids:
            log.error(
                "token %r cannot be refreshed: its secrets open with none of the "
                "configured keys (ESI_WORKER_TOKEN_KEYS); retrying at %s",
                token_id,
                retry_at.isoformat(),
                extra={"token_id": token_id},
            )

    def _release(
        self,
        results: list[tuple[Token, str]],
        claimed_at: dt.datetime,
        lease_until: dt.datetime,
    ) -> None:
        """Give back the leases (and journal entries) of tokens the run left
        untouched: passed over, or refused with our client credentials."""
        untouched = (NOT_ATTEMPTED, "config_error")
        ids = [t.id for t, outcome in results if outcome in untouched]
        if not ids:
            return
        with self._store.pool.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE esi_token SET next_refresh_attempt = NULL"
                " WHERE id = ANY(%s) AND next_refresh_attempt = %s",
                (ids, lease_until),
            )
            conn.execute(
                "DELETE FROM esi_token_refresh_journal WHERE token_id = ANY(%s)"
                " AND started = %s AND refresh_token IS NULL",
                (ids, claimed_at),
            )
        log.debug("released the leases of %d tokens left untouched", len(ids))

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
