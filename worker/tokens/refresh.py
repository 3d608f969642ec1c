"""Refreshing tokens: claim-and-refresh under the row lock, and scheduled runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..errors import (
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    TokenInvalidError,
)
from .rows import TOKEN_COLUMNS, link_scopes, load_token, token_from_row
from .token import NO_REFRESH_EXPIRED, OWNER_CHANGED, REVOKED, VALID, Token

if TYPE_CHECKING:
    import psycopg

    from ..sso import TokenGrant
    from .store import TokenStore

log = logging.getLogger(__name__)

# A claimed token is left alone by other refresh runs for this long, so a
# run that dies mid-batch only delays those tokens, never loses them.
CLAIM_LEASE_S = 120.0
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 300.0


@dataclasses.dataclass(frozen=True)
class RefreshSummary:
    """What one :meth:`TokenStore.refresh_due` run did, counted by outcome."""

    success: int = 0
    dead: int = 0
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


class TokenRefresher:
    """The refresh half of a :class:`~worker.tokens.TokenStore`.

    Each refresh runs in one transaction holding the token's row lock, so
    concurrent callers make one SSO call between them.
    """

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def refresh_due(
        self,
        *,
        ahead_s: float | None = None,
        parallelism: int | None = None,
        batch_size: int = 100,
    ) -> RefreshSummary:
        """Refresh every valid token whose access token expires within ``ahead_s``.

        Tokens are claimed in batches, soonest expiry first, with
        ``FOR UPDATE SKIP LOCKED`` and a short lease, so several workers can
        run this at once without refreshing a token twice.
        """
        ahead_s = self._store.settings.refresh_ahead_s if ahead_s is None else ahead_s
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        counts: Counter[str] = Counter(no_refresh_expired=self._expire_unrefreshable())

        done: set[int] = set()
        while not counts["config_error"]:
            batch = self._claim_due(ahead_s, batch_size, done)
            if not batch:
                break
            done.update(token.id for token in batch)
            log.debug("claimed %d tokens to refresh", len(batch))
            for _token, outcome in self.refresh_all(batch, parallelism, ahead_s):
                counts[outcome] += 1

        summary = RefreshSummary(**counts)
        log.info("token refresh run finished: %s", summary)
        return summary

    def refresh_all(
        self, tokens: list[Token], parallelism: int | None, ahead_s: float | None
    ) -> list[tuple[Token, str]]:
        """Refresh each token on a thread pool; each with its outcome."""
        workers = parallelism or self._store.settings.refresh_parallelism
        if not tokens:
            return []
        with ThreadPoolExecutor(
            max_workers=min(workers, len(tokens)), thread_name_prefix="token-refresh"
        ) as executor:
            return list(
                executor.map(lambda t: self._refresh_quietly(t, ahead_s), tokens)
            )

    def _refresh_quietly(
        self, token: Token, ahead_s: float | None
    ) -> tuple[Token, str]:
        """One refresh for a batch: the outcome instead of an exception."""
        try:
            return self.refresh(token, None, None, ahead_s)
        except (TokenInvalidError, NotRefreshableTokenError):
            return token, "dead"
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

    def refresh(
        self, token: Token, session: Any, auth: Any, min_remaining_s: float | None
    ) -> tuple[Token, str]:
        """Refresh one token under its row lock; the token and the outcome.

        The outcome (``success`` or ``skipped``) and any failure are counted
        in the refresh metrics.
        """
        started = self._store.clock.monotonic()
        outcome = "transient"
        try:
            fresh, outcome = self._claim_and_refresh(
                token, session, auth, min_remaining_s
            )
            return fresh, outcome
        except (TokenInvalidError, NotRefreshableTokenError):
            outcome = "dead"
            raise
        except SSOConfigurationError:
            outcome = "config_error"
            raise
        finally:
            metrics.TOKEN_REFRESHES.labels(outcome=outcome).inc()
            metrics.TOKEN_REFRESH_SECONDS.observe(
                self._store.clock.monotonic() - started
            )

    def _claim_and_refresh(
        self, seen: Token, session: Any, auth: Any, min_remaining_s: float | None
    ) -> tuple[Token, str]:
        # What the caller saw, taken before waiting for the lock: a shared
        # Token object may be updated by another thread meanwhile.
        seen_refresh, seen_expires = seen.refresh_token, seen.access_expires
        failure: SSOError | None = None
        dead: str | None = None
        with self._store.pool.connection() as conn, conn.transaction():
            current = self._lock(conn, seen.id)
            if self._refreshed_elsewhere(
                current, seen_refresh, seen_expires, min_remaining_s
            ):
                log.debug("token %r was refreshed by another holder", current.id)
                return current, "skipped"

            assert current.refresh_token is not None
            try:
                grant = self._store.sso.refresh(
                    current.refresh_token, session=session, auth=auth
                )
            except SSOGrantError as exc:
                dead = f"{REVOKED}: the SSO answered {exc.error}"
                self._set_state(conn, current, REVOKED, f"SSO answered {exc.error}")
                failure = exc
            except SSOConfigurationError:
                log.critical(
                    "SSO refused our client credentials while refreshing "
                    "token %r; fix the SSO settings",
                    current.id,
                )
                raise
            except SSOError as exc:
                self._note_failure(conn, current, exc)
                failure = exc
            else:
                if self._owner_changed(current, grant):
                    dead = f"{OWNER_CHANGED}: the character changed owner"
                    self._set_state(
                        conn, current, OWNER_CHANGED, "the character changed owner"
                    )
                else:
                    self._store_grant(conn, current, grant)
                    fresh = load_token(self._store, conn, current.id)
                    assert fresh is not None
                    return fresh, "success"

        # The transaction has committed the state change; now report it.
        if dead is not None:
            raise TokenInvalidError(
                f"token {current.id} of character {current.character_id} is {dead}",
                token_id=current.id,
                character_id=current.character_id,
            ) from failure
        assert failure is not None
        raise failure

    def _refreshed_elsewhere(
        self,
        current: Token,
        seen_refresh: str | None,
        seen_expires: dt.datetime,
        min_remaining_s: float | None,
    ) -> bool:
        """Whether the locked row no longer needs the SSO call we came for.

        A changed refresh token also means ours may be spent: with rotation,
        the SSO could answer ``invalid_grant`` to it although the grant lives.
        """
        if current.state != VALID:
            raise TokenInvalidError(
                f"token {current.id} is {current.state}",
                token_id=current.id,
                character_id=current.character_id,
            )
        if current.refresh_token is None:
            raise NotRefreshableTokenError(
                f"token {current.id} has no refresh token",
                token_id=current.id,
                character_id=current.character_id,
            )
        if (
            current.refresh_token != seen_refresh
            or current.access_expires != seen_expires
        ):
            return True
        if min_remaining_s is None:
            return False
        remaining = (current.access_expires - self._store.clock.now()).total_seconds()
        return remaining > min_remaining_s

    @staticmethod
    def _owner_changed(current: Token, grant: TokenGrant) -> bool:
        return (
            grant.claims.owner_hash != current.character_owner_hash
            or grant.claims.character_id != current.character_id
        )

    def _lock(self, conn: psycopg.Connection[Any], token_id: int) -> Token:
        token = load_token(self._store, conn, token_id, lock=True)
        if token is None:
            raise TokenInvalidError(
                f"token {token_id} no longer exists", token_id=token_id
            )
        return token

    def _store_grant(
        self, conn: psycopg.Connection[Any], current: Token, grant: TokenGrant
    ) -> None:
        conn.execute(
            "UPDATE esi_token SET access_token = %s, refresh_token = %s, "
            "access_expires = %s, character_name = %s, updated = %s, "
            "refresh_failures = 0, last_refresh_error = NULL, "
            "next_refresh_attempt = NULL WHERE id = %s",
            (
                grant.access_token,
                grant.refresh_token,
                grant.expires_at,
                grant.claims.character_name,
                self._store.clock.now(),
                current.id,
            ),
        )
        if grant.claims.scopes and set(grant.claims.scopes) != set(current.scopes):
            log.warning(
                "token %r now holds %d scopes instead of %d",
                current.id,
                len(grant.claims.scopes),
                len(current.scopes),
            )
            conn.execute(
                "DELETE FROM esi_token_scope WHERE token_id = %s", (current.id,)
            )
            link_scopes(conn, current.id, grant.claims.scopes)
        log.debug("token %r refreshed until %s", current.id, grant.expires_at)

    def _note_failure(
        self, conn: psycopg.Connection[Any], current: Token, exc: SSOError
    ) -> None:
        failures = current.refresh_failures + 1
        delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        delay_s = max(delay_s, exc.retry_after_s or 0.0)
        retry_at = self._store.clock.now() + dt.timedelta(seconds=delay_s)
        conn.execute(
            "UPDATE esi_token SET last_refresh_error = %s, refresh_failures = %s, "
            "next_refresh_attempt = %s WHERE id = %s",
            (str(exc)[:500], failures, retry_at, current.id),
        )
        log.warning(
            "refreshing token %r of character %r failed (%s); retry at %s",
            current.id,
            current.character_id,
            exc,
            retry_at.isoformat(),
            extra={"token_id": current.id, "character_id": current.character_id},
        )

    def _set_state(
        self, conn: psycopg.Connection[Any], current: Token, state: str, reason: str
    ) -> None:
        now = self._store.clock.now()
        conn.execute(
            "UPDATE esi_token SET state = %s, state_reason = %s, state_changed = %s, "
            "updated = %s WHERE id = %s",
            (state, reason, now, now, current.id),
        )
        log.warning(
            "token %r of character %r is now %s: %s",
            current.id,
            current.character_id,
            state,
            reason,
            extra={"token_id": current.id, "character_id": current.character_id},
        )

    def _claim_due(
        self, ahead_s: float, batch_size: int, done: set[int]
    ) -> list[Token]:
        now = self._store.clock.now()
        with self._store.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE esi_token t SET next_refresh_attempt = %s WHERE t.id IN ("
                " SELECT id FROM esi_token WHERE state = %s"
                " AND refresh_token IS NOT NULL AND access_expires <= %s"
                " AND (next_refresh_attempt IS NULL OR next_refresh_attempt <= %s)"
                " AND NOT (id = ANY(%s::bigint[]))"
                " ORDER BY access_expires LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {TOKEN_COLUMNS}",
                (
                    now + dt.timedelta(seconds=CLAIM_LEASE_S),
                    VALID,
                    now + dt.timedelta(seconds=ahead_s),
                    now,
                    list(done),
                    batch_size,
                ),
            ).fetchall()
        tokens = [token_from_row(self._store, r) for r in rows]
        return sorted(tokens, key=lambda t: t.access_expires)

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
                    "expired without a refresh token",
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
