"""The token store: queries, adding grants, refreshing (see ``refresh``), pruning."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..crypto import TokenCipher
from ..errors import TokenLookupError
from ..scopes import normalize_scopes
from ..wording import counted
from .grants import GrantFields, grant_fields
from .journal import RefreshJournal
from .query import TokenQuery
from .reencrypt import ReencryptSummary, SecretRewriter
from .refresh import TokenRefresher
from .rows import SCOPES_OF_T, link_scopes, load_token
from .token import REVOKED, VALID, Token
from .upkeep import RefreshSummary, TokenUpkeep

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from ..errors import SSOConfigurationError
    from ..settings import Settings
    from ..sso import SSOClient, TokenGrant

log = logging.getLogger(__name__)

# Namespace of the per-character advisory lock taken while merging grants.
_MERGE_LOCK_CLASS = 74011


@dataclasses.dataclass(frozen=True)
class ClientRefusal:
    """The SSO refuses our client credentials: since when, with which error.

    No token is touched when that happens (the tokens are fine, the
    settings are not); this record is what tells the operator. The next
    successful refresh with the same client id removes it.
    """

    client_id: str
    first_refused: dt.datetime
    last_refused: dt.datetime
    error: str

    def __str__(self) -> str:
        return (
            f"the SSO refuses the client credentials of {self.client_id!r} "
            f"({self.error}) since {self.first_refused:%Y-%m-%d %H:%M:%S}Z "
            f"(last {self.last_refused:%Y-%m-%d %H:%M:%S}Z): no token can be "
            "refreshed until ESI_WORKER_SSO_CLIENT_ID / "
            "ESI_WORKER_SSO_CLIENT_SECRET are fixed"
        )


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
        cipher: TokenCipher | None = None,
    ) -> None:
        self.pool = pool
        self.sso = sso
        self.settings = settings
        self.clock = clock
        self.cipher = cipher or TokenCipher.from_settings(settings)
        self.journal = RefreshJournal(pool, self.cipher)
        self._refresher = TokenRefresher(self)
        self._upkeep = TokenUpkeep(self, self._refresher)

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
            token_id, _action = self.merge(conn, fields, user=user)
            token = load_token(self, conn, token_id)
        assert token is not None
        log.info(
            "stored token %r of character %r (%s)",
            token.id,
            token.character_id,
            counted(len(token.scopes), "scope"),
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

        :raises ConfigurationError: no SSO application is configured;
            nothing was written.
        :raises TokenInvalidError: the grant is dead; the token's state says why.
        :raises NotRefreshableTokenError: the token has no refresh token.
        :raises SSOConfigurationError: our client credentials were refused.
        :raises SSOError: a transient failure; the token is kept for later.
        """
        self.sso.require_application()
        return self._refresher.refresh(token, session, auth, min_remaining_s)[0]

    def refresh_many(
        self, tokens: Iterable[Token], *, parallelism: int | None = None
    ) -> list[Token]:
        """Refresh each token (in parallel); the ones now fresh.

        That is the ones refreshed here and the ones another holder
        refreshed meanwhile, as stored now. An ``invalid_client`` answer
        stops the refreshes not yet sent.

        :raises ConfigurationError: no SSO application is configured (and
            there was something to refresh); nothing was written.
        """
        results = self._upkeep.refresh_all(list(tokens), parallelism, None)
        return [t for t, outcome in results if outcome in ("success", "skipped")]

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
        run this at once without refreshing a token twice. A token is also
        due up to ``refresh_spread_s`` earlier, by a fixed share of its own
        (see :func:`~worker.tokens.upkeep.spread_share`), so tokens that
        expire together are renewed over a few runs, not in one burst.

        :raises ConfigurationError: no SSO application is configured; the
            run stops before it claims (or writes) anything.
        """
        return self._upkeep.refresh_due(
            ahead_s=ahead_s, parallelism=parallelism, batch_size=batch_size
        )

    def reencrypt(self) -> int:
        """Encrypt every secret not under the first key (plaintext included);
        how many rows were rewritten.

        Tokens, saved refresh tokens of the refresh journal and the PKCE
        verifiers of pending logins are all covered. Run after putting a new
        key first in ``ESI_WORKER_TOKEN_KEYS``; the old key can be dropped
        once this returns and :meth:`reencrypt_report` shows nothing locked.
        """
        return self.reencrypt_report().rewritten

    def reencrypt_report(self, *, lock_timeout_s: float = 30.0) -> ReencryptSummary:
        """Like :meth:`reencrypt`, with the count per table and of the rows
        still locked (being refreshed) after waiting ``lock_timeout_s``."""
        return SecretRewriter(self).reencrypt(lock_timeout_s=lock_timeout_s)

    def client_refusal(self) -> ClientRefusal | None:
        """Whether the SSO refuses our client credentials (see :class:`ClientRefusal`)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT client_id, first_refused, last_refused, error"
                " FROM esi_sso_client_refusal WHERE client_id = %s",
                (self.settings.sso_client_id or "",),
            ).fetchone()
        return ClientRefusal(*row) if row else None

    def client_refused(
        self, conn: psycopg.Connection[Any], error: SSOConfigurationError
    ) -> None:
        """Record, in ``conn``'s transaction, that the SSO refused our client."""
        now = self.clock.now()
        conn.execute(
            "INSERT INTO esi_sso_client_refusal (client_id, first_refused,"
            " last_refused, error) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (client_id) DO UPDATE SET"
            " last_refused = EXCLUDED.last_refused, error = EXCLUDED.error",
            (
                self.settings.sso_client_id or "",
                now,
                now,
                error.error or "invalid_client",
            ),
        )

    def revoke(self, token: Token, *, reason: str = "revoked by the operator") -> Token:
        """Revoke the grant at the SSO, then mark the token revoked (kept until pruned).

        :raises ConfigurationError: no SSO application is configured and the
            token has a refresh token to revoke; the token is unchanged.
        :raises SSOError: the SSO could not be told; the token is unchanged.
        """
        current = self.get(token.id)
        if current is None:
            raise TokenLookupError(f"no token with id {token.id}")
        if current.refresh_token is not None:
            self.sso.revoke(current.refresh_token)
        now = self.clock.now()
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE esi_token SET state = %s, state_reason = %s,"
                " state_changed = %s, updated = %s WHERE id = %s",
                (REVOKED, reason, now, now, current.id),
            )
            self.journal.clear(conn, current.id)
        log.info(
            "revoked token %r of character %r",
            current.id,
            current.character_id,
            extra={"token_id": current.id, "character_id": current.character_id},
        )
        revoked = self.get(current.id)
        assert revoked is not None
        return revoked

    def prune(self, *, grace_s: float | None = None) -> int:
        """Delete dead tokens whose state changed longer than ``grace_s`` ago.

        Each deletion is recorded in ``esi_token_pruned`` with its reason,
        and the refresh journal entries of the pruned tokens go with them.
        """
        grace_s = self.settings.prune_grace_s if grace_s is None else grace_s
        cutoff = self.clock.now() - dt.timedelta(seconds=grace_s)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "WITH gone AS (DELETE FROM esi_token WHERE state <> %s"
                " AND COALESCE(state_changed, updated) < %s"
                " RETURNING id, character_id, character_name, user_id, state,"
                " state_reason, state_changed),"
                " unjournaled AS (DELETE FROM esi_token_refresh_journal"
                " WHERE token_id IN (SELECT id FROM gone))"
                " INSERT INTO esi_token_pruned (token_id, character_id,"
                " character_name, user_id, state, state_reason, state_changed,"
                " pruned) SELECT g.*, %s FROM gone g"
                " RETURNING token_id, character_id, state, state_reason",
                (VALID, cutoff, self.clock.now()),
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

    def close(self) -> None:
        """Close the connection the refresh journal opened (if any)."""
        self.journal.close()

    def merge(
        self,
        conn: psycopg.Connection[Any],
        fields: GrantFields,
        *,
        user: str | None = None,
        source: str | None = None,
        keep_valid: bool = False,
    ) -> tuple[int, str]:
        """Insert ``fields`` or merge them into an equivalent token, in ``conn``'s
        transaction; the token id and ``inserted``, ``merged`` or ``kept``.

        Equivalent means the same character and scopes, and the same user or
        no user; a token of the same user is preferred, then a valid one. A
        merge into a token without a user gives it ``user``.

        :param source: where the grant came from, e.g. ``django-esi:17``.
        :param keep_valid: never overwrite an equivalent valid token (an
            import must not replace a refresh token the worker rotated);
            a grant whose refresh token none of them holds is then stored
            beside them, since it may be the only live one.
        """
        # Two logins of one character at once must not both insert.
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (_MERGE_LOCK_CLASS, str(fields.character_id)),
        )
        candidates = self._equivalents(conn, fields, user)
        if not candidates:
            return self._insert(conn, fields, user, source), "inserted"
        valid = [(i, secret) for i, state, secret in candidates if state == VALID]
        if keep_valid and valid:
            held = {self.cipher.decrypt(secret) for _, secret in valid}
            if fields.refresh_token is None or fields.refresh_token in held:
                return valid[0][0], "kept"
            return self._insert(conn, fields, user, source), "inserted"
        token_id = candidates[0][0]
        self._overwrite(conn, token_id, fields, user)
        return token_id, "merged"

    # -- storage internals ---------------------------------------------------

    def _equivalents(
        self, conn: psycopg.Connection[Any], fields: GrantFields, user: str | None
    ) -> list[tuple[int, str, str | None]]:
        """Equivalent tokens (id, state, stored refresh token), best first."""
        rows = conn.execute(
            f"SELECT t.id, t.state, t.refresh_token FROM (SELECT t.id, t.state,"
            f" t.user_id, t.refresh_token, {SCOPES_OF_T} FROM esi_token t"
            " WHERE t.character_id = %s"
            " AND (t.user_id IS NOT DISTINCT FROM %s OR t.user_id IS NULL)) t"
            " WHERE t.scopes = %s::text[]"
            " ORDER BY (t.user_id IS NOT DISTINCT FROM %s) DESC,"
            " (t.state = %s) DESC, t.id",
            (fields.character_id, user, list(fields.scopes), user, VALID),
        ).fetchall()
        return [(int(r[0]), str(r[1]), r[2]) for r in rows]

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        fields: GrantFields,
        user: str | None,
        source: str | None,
    ) -> int:
        now = self.clock.now()
        row = conn.execute(
            "INSERT INTO esi_token (created, updated, access_token, refresh_token,"
            " access_expires, character_id, character_name, token_type,"
            " character_owner_hash, sso_version, user_id, source)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                now,
                now,
                self.cipher.encrypt(fields.access_token),
                self.cipher.encrypt(fields.refresh_token),
                fields.access_expires,
                fields.character_id,
                fields.character_name,
                fields.token_type,
                fields.character_owner_hash,
                fields.sso_version,
                user,
                source,
            ),
        ).fetchone()
        assert row is not None
        link_scopes(conn, row[0], fields.scopes)
        return int(row[0])

    def _overwrite(
        self,
        conn: psycopg.Connection[Any],
        token_id: int,
        fields: GrantFields,
        user: str | None,
    ) -> None:
        now = self.clock.now()
        conn.execute(
            "UPDATE esi_token SET updated = %s, user_id = COALESCE(%s, user_id),"
            " access_token = %s,"
            " refresh_token = %s, access_expires = %s, character_name = %s,"
            " token_type = %s, character_owner_hash = %s, sso_version = %s,"
            " state_changed = CASE WHEN state = %s THEN state_changed ELSE %s END,"
            " state = %s, state_reason = NULL, last_refresh_error = NULL,"
            " refresh_failures = 0, next_refresh_attempt = NULL WHERE id = %s",
            (
                now,
                user,
                self.cipher.encrypt(fields.access_token),
                self.cipher.encrypt(fields.refresh_token),
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
        # After the row lock is ours (the UPDATE), so no refresh in flight
        # still needs it: the new grant replaces whatever the journal held.
        self.journal.clear(conn, token_id)
        log.debug("merged a new grant into equivalent token %r", token_id)
