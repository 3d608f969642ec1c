"""The token store: SQL for tokens, claim-and-refresh under a row lock, pruning."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    TokenInvalidError,
)
from ..scopes import normalize_scopes
from .grants import GrantFields, grant_fields
from .query import SCOPES_OF_T, TokenQuery
from .token import COLUMNS, NO_REFRESH_EXPIRED, OWNER_CHANGED, REVOKED, VALID, Token

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from ..settings import Settings
    from ..sso import SSOClient, TokenGrant

log = logging.getLogger(__name__)

# A claimed token is left alone by other refresh runs for this long, so a
# run that dies mid-batch only delays those tokens, never loses them.
CLAIM_LEASE_S = 120.0
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 300.0
# Namespace of the per-character advisory lock taken while merging grants.
_MERGE_LOCK_CLASS = 74011

_RETURNING = ", ".join(f"t.{c}" for c in COLUMNS) + f", {SCOPES_OF_T}"
_OUTCOMES = ("success", "dead", "transient", "config_error", "skipped")


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
        return ", ".join(f"{f.name}={getattr(self, f.name)}"
                         for f in dataclasses.fields(self))


class TokenStore:
    """Tokens in PostgreSQL: queries, imports, refreshes, pruning.

    Every instant is taken from the injected clock, so tests move time
    instead of sleeping.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        sso: SSOClient,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pool = pool
        self.sso = sso
        self.settings = settings
        self.clock = clock

    def __repr__(self) -> str:
        return f"<TokenStore clock={type(self.clock).__name__}>"

    def query(self) -> TokenQuery:
        """A query over every valid token."""
        return TokenQuery(self)

    def get(self, token_id: int) -> Token | None:
        """The token with this id, whatever its state, or ``None``."""
        return self.query().including_dead().filter(id=token_id).first()

    # -- adding tokens -------------------------------------------------------

    def create_from_code(
        self, code: str, *, code_verifier: str | None = None, user: str | None = None
    ) -> Token:
        """Finish a login: exchange the code and store the grant.

        :raises SSOError: the exchange failed (see :meth:`SSOClient.exchange_code`).
        """
        grant = self.sso.exchange_code(code, code_verifier=code_verifier)
        return self.import_grant(grant, user=user)

    def import_grant(self, grant: TokenGrant | Mapping[str, Any] | Any,
                     user: str | None = None) -> Token:
        """Store a grant (a ``TokenGrant``, a mapping or an object with its fields).

        An equivalent token (same character, scopes and user) is updated in
        place instead of duplicated.

        :raises IncompleteResponseError: a required field is missing.
        """
        return self.add(**dataclasses.asdict(grant_fields(grant)), user=user)

    def add(
        self,
        *,
        access_token: str,
        refresh_token: str | None,
        character_id: int,
        character_name: str,
        character_owner_hash: str,
        scopes: str | Iterable[str],
        access_expires: dt.datetime,
        token_type: str = "character",
        sso_version: int = 2,
        user: str | None = None,
    ) -> Token:
        """Insert a token, or merge it into an equivalent one.

        :raises ScopeError: a malformed scope.
        """
        fields = GrantFields(
            access_token=access_token, refresh_token=refresh_token,
            character_id=character_id, character_name=character_name,
            character_owner_hash=character_owner_hash,
            scopes=normalize_scopes(scopes), access_expires=access_expires,
            token_type=token_type, sso_version=sso_version,
        ).checked()
        with self.pool.connection() as conn, conn.transaction():
            # Two logins of one character at once must not both insert.
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                         (_MERGE_LOCK_CLASS, str(fields.character_id)))
            token_id = self._equivalent_id(conn, fields, user)
            if token_id is None:
                token_id = self._insert(conn, fields, user)
            else:
                self._overwrite(conn, token_id, fields)
            token = self._load(conn, token_id)
        log.info("stored token %r of character %r (%d scopes)", token.id,
                 token.character_id, len(token.scopes),
                 extra={"token_id": token.id, "character_id": token.character_id})
        return token

    # -- refreshing ----------------------------------------------------------

    def refresh(
        self,
        token: Token,
        *,
        session: Any = None,
        auth: Any = None,
        min_remaining_s: float | None = None,
    ) -> Token:
        """Refresh ``token`` under its row lock and return the stored result.

        When another holder refreshed the token while this call waited for
        the lock (or, with ``min_remaining_s``, the stored access token still
        lives that long), the stored token is returned without an SSO call.

        :raises TokenInvalidError: the grant is dead; the token's state says why.
        :raises NotRefreshableTokenError: the token has no refresh token.
        :raises SSOConfigurationError: our client credentials were refused.
        :raises SSOError: a transient failure; the token is kept for later.
        """
        return self._refresh(token, session, auth, min_remaining_s)[0]

    def refresh_many(self, tokens: Iterable[Token], *,
                     parallelism: int | None = None) -> list[Token]:
        """Refresh each token (in parallel); the ones that succeeded."""
        results = self._refresh_all(list(tokens), parallelism, None)
        return [token for token, outcome in results if outcome == "success"]

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
        ahead_s = self.settings.refresh_ahead_s if ahead_s is None else ahead_s
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
            for _token, outcome in self._refresh_all(batch, parallelism, ahead_s):
                counts[outcome] += 1

        summary = RefreshSummary(**counts)
        log.info("token refresh run finished: %s", summary)
        return summary

    def prune(self, *, grace_s: float | None = None) -> int:
        """Delete dead tokens whose state changed longer than ``grace_s`` ago."""
        grace_s = self.settings.prune_grace_s if grace_s is None else grace_s
        cutoff = self.clock.now() - dt.timedelta(seconds=grace_s)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "DELETE FROM esi_token WHERE state <> %s "
                "AND COALESCE(state_changed, updated) < %s "
                "RETURNING id, character_id, state, state_reason",
                (VALID, cutoff),
            ).fetchall()
        for token_id, character_id, state, reason in rows:
            log.info("pruned token %r of character %r: %s (%s)", token_id,
                     character_id, state, reason,
                     extra={"token_id": token_id, "character_id": character_id})
        return len(rows)

    # -- refresh internals ---------------------------------------------------

    def _refresh_all(
        self, tokens: list[Token], parallelism: int | None, ahead_s: float | None
    ) -> list[tuple[Token, str]]:
        workers = parallelism or self.settings.refresh_parallelism
        if not tokens:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(tokens)),
                                thread_name_prefix="token-refresh") as executor:
            return list(executor.map(lambda t: self._refresh_quietly(t, ahead_s),
                                     tokens))

    def _refresh_quietly(self, token: Token, ahead_s: float | None) -> tuple[Token, str]:
        """One refresh for a batch: the outcome instead of an exception."""
        try:
            return self._refresh(token, None, None, ahead_s)
        except (TokenInvalidError, NotRefreshableTokenError):
            return token, "dead"
        except SSOConfigurationError:
            return token, "config_error"
        except SSOError:
            return token, "transient"
        except Exception:
            log.exception("refreshing token %r of character %r failed", token.id,
                          token.character_id)
            return token, "transient"

    def _refresh(
        self, token: Token, session: Any, auth: Any, min_remaining_s: float | None
    ) -> tuple[Token, str]:
        started = self.clock.monotonic()
        outcome = "transient"
        try:
            fresh, outcome = self._claim_and_refresh(token, session, auth,
                                                     min_remaining_s)
            return fresh, outcome
        except (TokenInvalidError, NotRefreshableTokenError):
            outcome = "dead"
            raise
        except SSOConfigurationError:
            outcome = "config_error"
            raise
        finally:
            metrics.TOKEN_REFRESHES.labels(outcome=outcome).inc()
            metrics.TOKEN_REFRESH_SECONDS.observe(self.clock.monotonic() - started)

    def _claim_and_refresh(
        self, seen: Token, session: Any, auth: Any, min_remaining_s: float | None
    ) -> tuple[Token, str]:
        # What the caller saw, taken before waiting for the lock: a shared
        # Token object may be updated by another thread meanwhile.
        seen_refresh, seen_expires = seen.refresh_token, seen.access_expires
        failure: SSOError | None = None
        dead: str | None = None
        with self.pool.connection() as conn, conn.transaction():
            current = self._lock(conn, seen.id)
            if self._refreshed_elsewhere(current, seen_refresh, seen_expires,
                                         min_remaining_s):
                log.debug("token %r was refreshed by another holder", current.id)
                return current, "skipped"

            assert current.refresh_token is not None
            try:
                grant = self.sso.refresh(current.refresh_token, session=session,
                                         auth=auth)
            except SSOGrantError as exc:
                dead = f"{REVOKED}: the SSO answered {exc.error}"
                self._set_state(conn, current, REVOKED, f"SSO answered {exc.error}")
                failure = exc
            except SSOConfigurationError:
                log.critical("SSO refused our client credentials while refreshing "
                             "token %r; fix the SSO settings", current.id)
                raise
            except SSOError as exc:
                self._note_failure(conn, current, exc)
                failure = exc
            else:
                if self._owner_changed(current, grant):
                    dead = f"{OWNER_CHANGED}: the character changed owner"
                    self._set_state(conn, current, OWNER_CHANGED,
                                    "the character changed owner")
                else:
                    self._store_grant(conn, current, grant)
                    return self._load(conn, current.id), "success"

        # The transaction has committed the state change; now report it.
        if dead is not None:
            raise TokenInvalidError(
                f"token {current.id} of character {current.character_id} is {dead}",
                token_id=current.id, character_id=current.character_id,
            ) from failure
        assert failure is not None
        raise failure

    def _refreshed_elsewhere(
        self, current: Token, seen_refresh: str | None, seen_expires: dt.datetime,
        min_remaining_s: float | None,
    ) -> bool:
        """Whether the locked row no longer needs the SSO call we came for.

        A changed refresh token also means ours may be spent: with rotation,
        the SSO could answer ``invalid_grant`` to it although the grant lives.
        """
        if current.state != VALID:
            raise TokenInvalidError(
                f"token {current.id} is {current.state}", token_id=current.id,
                character_id=current.character_id,
            )
        if current.refresh_token is None:
            raise NotRefreshableTokenError(
                f"token {current.id} has no refresh token", token_id=current.id,
                character_id=current.character_id,
            )
        if current.refresh_token != seen_refresh or current.access_expires != seen_expires:
            return True
        if min_remaining_s is None:
            return False
        remaining = (current.access_expires - self.clock.now()).total_seconds()
        return remaining > min_remaining_s

    @staticmethod
    def _owner_changed(current: Token, grant: TokenGrant) -> bool:
        return (grant.claims.owner_hash != current.character_owner_hash
                or grant.claims.character_id != current.character_id)

    def _lock(self, conn: psycopg.Connection[Any], token_id: int) -> Token:
        row = conn.execute(
            f"SELECT {_RETURNING} FROM esi_token t WHERE t.id = %s FOR UPDATE OF t",
            (token_id,),
        ).fetchone()
        if row is None:
            raise TokenInvalidError(f"token {token_id} no longer exists",
                                    token_id=token_id)
        return Token(self, dict(zip((*COLUMNS, "scopes"), row, strict=True)))

    def _store_grant(self, conn: psycopg.Connection[Any], current: Token,
                     grant: TokenGrant) -> None:
        conn.execute(
            "UPDATE esi_token SET access_token = %s, refresh_token = %s, "
            "access_expires = %s, character_name = %s, updated = %s, "
            "refresh_failures = 0, last_refresh_error = NULL, "
            "next_refresh_attempt = NULL WHERE id = %s",
            (grant.access_token, grant.refresh_token, grant.expires_at,
             grant.claims.character_name, self.clock.now(), current.id),
        )
        if grant.claims.scopes and set(grant.claims.scopes) != set(current.scopes):
            log.warning("token %r now holds %d scopes instead of %d", current.id,
                        len(grant.claims.scopes), len(current.scopes))
            conn.execute("DELETE FROM esi_token_scope WHERE token_id = %s",
                         (current.id,))
            self._link_scopes(conn, current.id, grant.claims.scopes)
        log.debug("token %r refreshed until %s", current.id, grant.expires_at)

    def _note_failure(self, conn: psycopg.Connection[Any], current: Token,
                      exc: SSOError) -> None:
        failures = current.refresh_failures + 1
        delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        delay_s = max(delay_s, exc.retry_after_s or 0.0)
        retry_at = self.clock.now() + dt.timedelta(seconds=delay_s)
        conn.execute(
            "UPDATE esi_token SET last_refresh_error = %s, refresh_failures = %s, "
            "next_refresh_attempt = %s WHERE id = %s",
            (str(exc)[:500], failures, retry_at, current.id),
        )
        log.warning("refreshing token %r of character %r failed (%s); retry at %s",
                    current.id, current.character_id, exc, retry_at.isoformat(),
                    extra={"token_id": current.id,
                           "character_id": current.character_id})

    def _set_state(self, conn: psycopg.Connection[Any], current: Token, state: str,
                   reason: str) -> None:
        now = self.clock.now()
        conn.execute(
            "UPDATE esi_token SET state = %s, state_reason = %s, state_changed = %s, "
            "updated = %s WHERE id = %s",
            (state, reason, now, now, current.id),
        )
        log.warning("token %r of character %r is now %s: %s", current.id,
                    current.character_id, state, reason,
                    extra={"token_id": current.id, "character_id": current.character_id})

    def _claim_due(self, ahead_s: float, batch_size: int, done: set[int]) -> list[Token]:
        now = self.clock.now()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE esi_token t SET next_refresh_attempt = %s WHERE t.id IN ("
                " SELECT id FROM esi_token WHERE state = %s"
                " AND refresh_token IS NOT NULL AND access_expires <= %s"
                " AND (next_refresh_attempt IS NULL OR next_refresh_attempt <= %s)"
                " AND NOT (id = ANY(%s::bigint[]))"
                " ORDER BY access_expires LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_RETURNING}",
                (now + dt.timedelta(seconds=CLAIM_LEASE_S), VALID,
                 now + dt.timedelta(seconds=ahead_s), now, list(done), batch_size),
            ).fetchall()
        tokens = [Token(self, dict(zip((*COLUMNS, "scopes"), r, strict=True)))
                  for r in rows]
        return sorted(tokens, key=lambda t: t.access_expires)

    def _expire_unrefreshable(self) -> int:
        now = self.clock.now()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE esi_token SET state = %s, state_reason = %s, "
                "state_changed = %s, updated = %s WHERE state = %s "
                "AND refresh_token IS NULL AND access_expires <= %s "
                "RETURNING id, character_id",
                (NO_REFRESH_EXPIRED, "expired without a refresh token", now, now,
                 VALID, now),
            ).fetchall()
        for token_id, character_id in rows:
            log.info("token %r of character %r expired and cannot be refreshed",
                     token_id, character_id,
                     extra={"token_id": token_id, "character_id": character_id})
        return len(rows)

    # -- storage internals ---------------------------------------------------

    def _load(self, conn: psycopg.Connection[Any], token_id: int) -> Token:
        row = conn.execute(f"SELECT {_RETURNING} FROM esi_token t WHERE t.id = %s",
                           (token_id,)).fetchone()
        assert row is not None, f"token {token_id} vanished inside its transaction"
        return Token(self, dict(zip((*COLUMNS, "scopes"), row, strict=True)))

    def _equivalent_id(self, conn: psycopg.Connection[Any], fields: GrantFields,
                       user: str | None) -> int | None:
        row = conn.execute(
            f"SELECT t.id FROM (SELECT t.id, t.state, {SCOPES_OF_T} FROM esi_token t"
            " WHERE t.character_id = %s AND t.user_id IS NOT DISTINCT FROM %s) t"
            " WHERE t.scopes = %s::text[] ORDER BY (t.state = %s) DESC, t.id LIMIT 1",
            (fields.character_id, user, list(fields.scopes), VALID),
        ).fetchone()
        return int(row[0]) if row else None

    def _insert(self, conn: psycopg.Connection[Any], fields: GrantFields,
                user: str | None) -> int:
        now = self.clock.now()
        row = conn.execute(
            "INSERT INTO esi_token (created, updated, access_token, refresh_token,"
            " access_expires, character_id, character_name, token_type,"
            " character_owner_hash, sso_version, user_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (now, now, fields.access_token, fields.refresh_token,
             fields.access_expires, fields.character_id, fields.character_name,
             fields.token_type, fields.character_owner_hash, fields.sso_version, user),
        ).fetchone()
        assert row is not None
        self._link_scopes(conn, row[0], fields.scopes)
        return int(row[0])

    def _overwrite(self, conn: psycopg.Connection[Any], token_id: int,
                   fields: GrantFields) -> None:
        now = self.clock.now()
        conn.execute(
            "UPDATE esi_token SET updated = %s, access_token = %s,"
            " refresh_token = %s, access_expires = %s, character_name = %s,"
            " token_type = %s, character_owner_hash = %s, sso_version = %s,"
            " state_changed = CASE WHEN state = %s THEN state_changed ELSE %s END,"
            " state = %s, state_reason = NULL, last_refresh_error = NULL,"
            " refresh_failures = 0, next_refresh_attempt = NULL WHERE id = %s",
            (now, fields.access_token, fields.refresh_token, fields.access_expires,
             fields.character_name, fields.token_type, fields.character_owner_hash,
             fields.sso_version, VALID, now, VALID, token_id),
        )
        log.debug("merged a new grant into equivalent token %r", token_id)

    @staticmethod
    def _link_scopes(conn: psycopg.Connection[Any], token_id: int,
                     scopes: Iterable[str]) -> None:
        names = list(scopes)
        if not names:
            return
        conn.execute(
            "INSERT INTO esi_scope (name) SELECT unnest(%s::text[]) "
            "ON CONFLICT (name) DO NOTHING", (names,),
        )
        conn.execute(
            "INSERT INTO esi_token_scope (token_id, scope_id) SELECT %s, id "
            "FROM esi_scope WHERE name = ANY(%s::text[]) ON CONFLICT DO NOTHING",
            (token_id, names),
        )
