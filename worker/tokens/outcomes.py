"""Writing a refresh's outcome into its token's row, under the row lock."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from ..sso.answers import RETRY_AFTER_MAX_S
from .rows import link_scopes
from .token import Token

if TYPE_CHECKING:
    import psycopg

    from ..sso import TokenGrant
    from .store import TokenStore

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 300.0


class RowWriter:
    """The statements a refresh ends with, in the caller's transaction."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def store_grant(
        self, conn: psycopg.Connection[Any], current: Token, grant: TokenGrant
    ) -> Token:
        """Store the grant, clear the journal and any record that the SSO
        refused our client, in one statement; the new token."""
        cipher, now = self._store.cipher, self._store.clock.now()
        conn.execute(
            "WITH cleared AS (DELETE FROM esi_token_refresh_journal"
            " WHERE token_id = %s), accepted AS (DELETE FROM"
            " esi_sso_client_refusal WHERE client_id = %s) "
            "UPDATE esi_token SET access_token = %s, refresh_token = %s, "
            "access_expires = %s, character_name = %s, updated = %s, "
            "refresh_failures = 0, last_refresh_error = NULL, "
            "next_refresh_attempt = NULL WHERE id = %s",
            (
                current.id,
                self._store.settings.sso_client_id or "",
                cipher.encrypt(grant.access_token),
                cipher.encrypt(grant.refresh_token),
                grant.expires_at,
                grant.claims.character_name,
                now,
                current.id,
            ),
        )
        fresh = current.replaced(
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            access_expires=grant.expires_at,
            character_name=grant.claims.character_name,
            updated=now,
            refresh_failures=0,
            last_refresh_error=None,
            next_refresh_attempt=None,
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
            fresh = fresh.replaced(scopes=tuple(sorted(grant.claims.scopes)))
        log.debug("token %r refreshed until %s", current.id, grant.expires_at)
        return fresh

    def keep_refresh_token(
        self, conn: psycopg.Connection[Any], current: Token, refresh_token: str | None
    ) -> None:
        """Store ``refresh_token`` in the row unless it is the one there."""
        if refresh_token is None or refresh_token == current.refresh_token:
            return
        conn.execute(
            "UPDATE esi_token SET refresh_token = %s WHERE id = %s",
            (self._store.cipher.encrypt(refresh_token), current.id),
        )
        log.info("token %r: kept the rotated refresh token", current.id)

    def note_failure(
        self, conn: psycopg.Connection[Any], current: Token, exc: Exception | None
    ) -> None:
        """Count a failed refresh and set when the next one may run.

        The back-off doubles from :data:`BACKOFF_BASE_S` to
        :data:`BACKOFF_MAX_S`, or follows the SSO's Retry-After, read as
        an hour at most.
        """
        failures = current.refresh_failures + 1
        delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        asked_s = min(RETRY_AFTER_MAX_S, getattr(exc, "retry_after_s", None) or 0.0)
        retry_at = self._store.clock.now() + dt.timedelta(seconds=max(delay_s, asked_s))
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

    def set_state(
        self, conn: psycopg.Connection[Any], current: Token, state: str, reason: str
    ) -> None:
        """Mark the token as stopped working, and why (it is kept)."""
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
