"""The token store: queries, adding grants, refreshing (see ``refresh``), pruning."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..scopes import normalize_scopes
from .grants import GrantFields, grant_fields
from .query import TokenQuery
from .refresh import RefreshSummary, TokenRefresher
from .rows import SCOPES_OF_T, link_scopes, load_token
from .token import VALID, Token

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from ..settings import Settings
    from ..sso import SSOClient, TokenGrant

log = logging.getLogger(__name__)

# Namespace of the per-character advisory lock taken while merging grants.
_MERGE_LOCK_CLASS = 74011


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
        self._refresher = TokenRefresher(self)

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

    def import_grant(
        self, grant: TokenGrant | Mapping[str, Any] | Any, user: str | None = None
    ) -> Token:
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
            access_token=access_token,
            refresh_token=refresh_token,
            character_id=character_id,
            character_name=character_name,
            character_owner_hash=character_owner_hash,
            scopes=normalize_scopes(scopes),
            access_expires=access_expires,
            token_type=token_type,
            sso_version=sso_version,
        ).checked()
        with self.pool.connection() as conn, conn.transaction():
            # Two logins of one character at once must not both insert.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_MERGE_LOCK_CLASS, str(fields.character_id)),
            )
            token_id = self._equivalent_id(conn, fields, user)
            if token_id is None:
                token_id = self._insert(conn, fields, user)
            else:
                self._overwrite(conn, token_id, fields)
            token = load_token(self, conn, token_id)
        assert token is not None
        log.info(
            "stored token %r of character %r (%d scopes)",
            token.id,
            token.character_id,
            len(token.scopes),
            extra={"token_id": token.id, "character_id": token.character_id},
        )
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
        return self._refresher.refresh(token, session, auth, min_remaining_s)[0]

    def refresh_many(
        self, tokens: Iterable[Token], *, parallelism: int | None = None
    ) -> list[Token]:
        """Refresh each token (in parallel); the ones that succeeded."""
        results = self._refresher.refresh_all(list(tokens), parallelism, None)
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
        return self._refresher.refresh_due(
            ahead_s=ahead_s, parallelism=parallelism, batch_size=batch_size
        )

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
            log.info(
                "pruned token %r of character %r: %s (%s)",
                token_id,
                character_id,
                state,
                reason,
                extra={"token_id": token_id, "character_id": character_id},
            )
        return len(rows)

    # -- storage internals ---------------------------------------------------

    def _equivalent_id(
        self, conn: psycopg.Connection[Any], fields: GrantFields, user: str | None
    ) -> int | None:
        row = conn.execute(
            f"SELECT t.id FROM (SELECT t.id, t.state, {SCOPES_OF_T} FROM esi_token t"
            " WHERE t.character_id = %s AND t.user_id IS NOT DISTINCT FROM %s) t"
            " WHERE t.scopes = %s::text[] ORDER BY (t.state = %s) DESC, t.id LIMIT 1",
            (fields.character_id, user, list(fields.scopes), VALID),
        ).fetchone()
        return int(row[0]) if row else None

    def _insert(
        self, conn: psycopg.Connection[Any], fields: GrantFields, user: str | None
    ) -> int:
        now = self.clock.now()
        row = conn.execute(
            "INSERT INTO esi_token (created, updated, access_token, refresh_token,"
            " access_expires, character_id, character_name, token_type,"
            " character_owner_hash, sso_version, user_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                now,
                now,
                fields.access_token,
                fields.refresh_token,
                fields.access_expires,
                fields.character_id,
                fields.character_name,
                fields.token_type,
                fields.character_owner_hash,
                fields.sso_version,
                user,
            ),
        ).fetchone()
        assert row is not None
        link_scopes(conn, row[0], fields.scopes)
        return int(row[0])

    def _overwrite(
        self, conn: psycopg.Connection[Any], token_id: int, fields: GrantFields
    ) -> None:
        now = self.clock.now()
        conn.execute(
            "UPDATE esi_token SET updated = %s, access_token = %s,"
            " refresh_token = %s, access_expires = %s, character_name = %s,"
            " token_type = %s, character_owner_hash = %s, sso_version = %s,"
            " state_changed = CASE WHEN state = %s THEN state_changed ELSE %s END,"
            " state = %s, state_reason = NULL, last_refresh_error = NULL,"
            " refresh_failures = 0, next_refresh_attempt = NULL WHERE id = %s",
            (
                now,
                fields.access_token,
                fields.refresh_token,
                fields.access_expires,
                fields.character_name,
                fields.token_type,
                fields.character_owner_hash,
                fields.sso_version,
                VALID,
                now,
                VALID,
                token_id,
            ),
        )
        log.debug("merged a new grant into equivalent token %r", token_id)
