"""Refreshing one token: claim its row, call the SSO, store the outcome.

Everything happens in one transaction holding the token's row lock, so
concurrent callers (threads, processes, machines) make one SSO call between
them. The journal (see ``journal``) covers the gap a dying worker leaves,
and the one an answer lost on the way leaves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..access_tokens import issued_to
from ..errors import (
    ConfigurationError,
    JWTValidationError,
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    SSOTransientError,
    TokenClientMismatchError,
    TokenInvalidError,
)
from ..sso import sso_class
from ..sso.answers import may_have_acted
from .bulk import NOT_ATTEMPTED, RefreshRun, RunStopped
from .journal import JournalEntry
from .outcomes import RowWriter
from .rows import TOKEN_COLUMNS, token_from_row
from .token import OWNER_CHANGED, REVOKED, VALID, Token

if TYPE_CHECKING:
    import psycopg

    from ..sso import TokenAnswer, TokenGrant
    from .store import TokenStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Attempt:
    """What one refresh did: its outcome, the SSO's answer class, the error."""

    outcome: str = "transient"
    sso: str = "none"
    error: Exception | None = None
    token: Token | None = None
    started: dt.datetime | None = None
    # The journal's refresh token, when it was tried and not refused.
    adopted: str | None = None
    # Whether an answer's refresh token was stored (or the grant is dead).
    settled: bool = False


class TokenRefresher:
    """Refreshes single tokens of a :class:`~worker.tokens.TokenStore`."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store
        self._rows = RowWriter(store)

    def refresh(
        self,
        token: Token,
        session: Any,
        auth: Any,
        min_remaining_s: float | None,
        run: RefreshRun | None = None,
    ) -> tuple[Token, str]:
        """Refresh one token under its row lock; the token and the outcome.

        Outcomes are ``success``, ``skipped`` (another holder refreshed it)
        and, in a bulk ``run``, ``not_attempted`` (the run stopped, or the
        token is no longer its to refresh); every other outcome is raised.
        All but ``not_attempted`` are counted in metrics.
        """
        started = self._store.clock.monotonic()
        attempt = _Attempt()
        try:
            self._claim_and_refresh(
                token, session, auth, min_remaining_s, attempt, run or RefreshRun()
            )
        except (TokenInvalidError, NotRefreshableTokenError) as exc:
            attempt.outcome = getattr(exc, "outcome", "dead")
            raise
        except (SSOConfigurationError, TokenClientMismatchError):
            attempt.outcome = "config_error"
            raise
        finally:
            if attempt.outcome != NOT_ATTEMPTED:
                metrics.TOKEN_REFRESHES.labels(
                    outcome=attempt.outcome, sso_class=attempt.sso
                ).inc()
                metrics.TOKEN_REFRESH_SECONDS.observe(
                    self._store.clock.monotonic() - started
                )
        assert attempt.token is not None
        return attempt.token, attempt.outcome

    def _claim_and_refresh(
        self,
        seen: Token,
        session: Any,
        auth: Any,
        min_remaining_s: float | None,
        attempt: _Attempt,
        run: RefreshRun,
    ) -> None:
        # What the caller saw, taken before waiting for the lock: a shared
        # Token object may be updated by another thread meanwhile.
        seen_refresh, seen_expires = seen.refresh_token, seen.access_expires
        journal = self._store.journal
        # Pipeline mode: BEGIN goes with the locking SELECT, and the writes
        # with the COMMIT, two round trips in all besides the SSO call.
        with (
            self._store.pool.connection() as conn,
            conn.pipeline(),
            conn.transaction(),
        ):
            current, entry = self._lock(conn, seen.id)
            earlier = _earlier(entry, current, run.claimed_at)
            if self._refreshed_elsewhere(
                current, seen_refresh, seen_expires, min_remaining_s
            ):
                log.debug("token %r was refreshed by another holder", current.id)
                attempt.outcome, attempt.token = "skipped", current
            elif run.passes_over(current):
                log.debug("token %r passed over by this run", current.id)
                attempt.outcome, attempt.token = NOT_ATTEMPTED, current
            if attempt.token is not None:
                if entry is not None and earlier is None:
                    journal.clear(conn, current.id)
                return

            self._check_client(current)
            attempt.started = run.claimed_at or self._store.clock.now()
            if run.claimed_at is None:
                journal.started(current.id, attempt.started)
            try:
                answer = self._ask_sso(current, earlier, session, auth, attempt, run)
            except RunStopped:
                # Stopped while waiting for an SSO slot: nothing was asked,
                # and the claim gives the token back untouched.
                log.debug("token %r passed over by this run", current.id)
                attempt.outcome, attempt.token = NOT_ATTEMPTED, current
                return
            self._store_outcome(conn, current, earlier, answer, attempt)
            self._settle_journal(conn, current, earlier, attempt)
        self._raise_for(current, attempt)

    def _check_client(self, current: Token) -> None:
        """Refuse to refresh a token another SSO application was issued.

        The SSO binds a refresh token to its application: refreshed with
        ours it answers ``invalid_grant``, which would mark a live grant
        revoked (a django-esi import under a different application, or a
        changed ESI_WORKER_SSO_CLIENT_ID).

        :raises TokenClientMismatchError: naming both applications.
        """
        ours = self._store.settings.sso_client_id
        theirs = issued_to(current.access_token) if ours else None
        if theirs is None or theirs == ours:
            return
        raise TokenClientMismatchError(
            f"token {current.id} of character {current.character_id} was issued "
            f"to SSO application {theirs!r}, not to the configured "
            f"ESI_WORKER_SSO_CLIENT_ID {ours!r}; it is left untouched, since "
            "refreshing it with another application would end its grant. "
            "Configure the application that issued it.",
            token_id=current.id,
            issued_to=theirs,
        )

    def _ask_sso(
        self,
        current: Token,
        earlier: JournalEntry | None,
        session: Any,
        auth: Any,
        attempt: _Attempt,
        run: RefreshRun,
    ) -> TokenAnswer | None:
        """The SSO's answer to our refresh token(s); ``None`` on failure.

        A refresh token saved by an interrupted refresh is tried first: with
        rotation it is the live one. The stored one is the fallback.
        """
        assert current.refresh_token is not None
        candidates = [current.refresh_token]
        if _adoptable(earlier, current):
            assert earlier is not None and earlier.refresh_token is not None
            log.info(
                "token %r: adopting the refresh token of an interrupted refresh",
                current.id,
            )
            candidates.insert(0, earlier.refresh_token)

        for refresh_token in candidates:
            try:
                with run.sso_call():
                    answer = self._store.sso.refresh_answer(
                        refresh_token, session=session, auth=auth
                    )
            except SSOError as exc:
                attempt.sso, attempt.error = sso_class(exc), exc
                if not isinstance(exc, SSOGrantError):
                    if refresh_token != current.refresh_token:
                        attempt.adopted = refresh_token
                    break
                continue
            attempt.sso, attempt.error = "success", None
            if answer.rotated:
                self._store.journal.received(
                    current.id, str(answer.refresh_token), self._store.clock.now()
                )
            return answer

        if isinstance(attempt.error, SSOConfigurationError) and run.stop():
            log.critical(
                "SSO refused our client credentials while refreshing token %r "
                "(%s); no token can be refreshed until "
                "ESI_WORKER_SSO_CLIENT_ID / ESI_WORKER_SSO_CLIENT_SECRET are fixed",
                current.id,
                attempt.error.error,
                extra={"token_id": current.id},
            )
        return None

    def _store_outcome(
        self,
        conn: psycopg.Connection[Any],
        current: Token,
        earlier: JournalEntry | None,
        answer: TokenAnswer | None,
        attempt: _Attempt,
    ) -> None:
        """Write what the SSO said into the locked row."""
        error = attempt.error
        if answer is not None:
            self._store_answer(conn, current, answer, attempt)
        elif isinstance(error, SSOGrantError):
            reason = _dead_reason(error, earlier)
            self._rows.set_state(conn, current, REVOKED, reason)
            attempt.outcome, attempt.settled = "dead", True
        elif isinstance(error, SSOConfigurationError):
            attempt.outcome = "config_error"
            self._store.client_refused(conn, error)
        else:
            self._rows.note_failure(conn, current, error)

    def _store_answer(
        self,
        conn: psycopg.Connection[Any],
        current: Token,
        answer: TokenAnswer,
        attempt: _Attempt,
    ) -> None:
        """Verify and store the answer; a rotated refresh token is kept regardless.

        Kept, that is, when the answer is about this very token: one whose
        access token names another character is not ours to store at all.
        """
        try:
            grant = self._store.sso.verify_answer(answer)
        except (JWTValidationError, SSOTransientError) as exc:
            # The old refresh token may be spent: keep the new one, keep the
            # old access token, and try again after the back-off.
            self._rows.keep_refresh_token(conn, current, answer.refresh_token)
            attempt.sso, attempt.error, attempt.settled = "transient", exc, True
            self._rows.note_failure(conn, current, exc)
            return
        if grant.claims.character_id != current.character_id:
            attempt.sso, attempt.error = "transient", _misdirected(current, grant)
            log.error("%s", attempt.error, extra={"token_id": current.id})
            self._rows.note_failure(conn, current, attempt.error)
            return
        if grant.claims.owner_hash != current.character_owner_hash:
            # The new grant belongs to the character's new account, which
            # never logged in to this application: nothing of it is kept.
            self._rows.set_state(
                conn, current, OWNER_CHANGED, "the character changed owner"
            )
            attempt.outcome, attempt.settled = "owner_changed", True
            return

        attempt.token = self._rows.store_grant(conn, current, grant)
        attempt.outcome, attempt.settled = "success", True

    def _settle_journal(
        self,
        conn: psycopg.Connection[Any],
        current: Token,
        earlier: JournalEntry | None,
        attempt: _Attempt,
    ) -> None:
        """Leave in the journal exactly what a later refresh must still know.

        Written after the SSO call only: the journal's own writes (on their
        own connection) must never wait for this transaction.
        """
        journal = self._store.journal
        if attempt.outcome == "success":
            return  # _store_grant cleared it with the row
        if attempt.settled:
            journal.clear(conn, current.id)
            return
        if attempt.outcome == "config_error":
            # Nothing reached the SSO: an earlier entry stays as it was.
            if earlier is None:
                journal.clear(conn, current.id)
            return

        if attempt.adopted is not None:
            self._rows.keep_refresh_token(conn, current, attempt.adopted)
        if earlier is not None and earlier.refresh_token is None:
            return  # an earlier unfinished refresh is still unexplained
        assert attempt.error is not None and attempt.started is not None
        if may_have_acted(attempt.error):
            journal.unfinished(conn, current.id, attempt.started)
        else:
            journal.clear(conn, current.id)

    def _raise_for(self, current: Token, attempt: _Attempt) -> None:
        """After the commit: report a dead or failed refresh as an error."""
        if attempt.outcome in ("success", "skipped", NOT_ATTEMPTED):
            return
        if attempt.outcome in ("dead", "owner_changed"):
            state = REVOKED if attempt.outcome == "dead" else OWNER_CHANGED
            error = TokenInvalidError(
                f"token {current.id} of character {current.character_id} is "
                f"{state}; a new login is needed",
                token_id=current.id,
                character_id=current.character_id,
            )
            error.outcome = attempt.outcome  # type: ignore[attr-defined]
            raise error from attempt.error
        assert attempt.error is not None
        raise attempt.error

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

    def _lock(
        self, conn: psycopg.Connection[Any], token_id: int
    ) -> tuple[Token, JournalEntry | None]:
        """The locked row and its journal entry, in one round trip."""
        row = conn.execute(
            f"SELECT {TOKEN_COLUMNS}, j.started, j.refresh_token, j.received"
            " FROM esi_token t LEFT JOIN esi_token_refresh_journal j"
            " ON j.token_id = t.id WHERE t.id = %s FOR UPDATE OF t",
            (token_id,),
        ).fetchone()
        if row is None:
            raise TokenInvalidError(
                f"token {token_id} no longer exists", token_id=token_id
            )
        token = token_from_row(self._store, row[:-3])
        started, refresh_token, received = row[-3:]
        if started is None:
            return token, None
        try:
            secret = self._store.cipher.decrypt(refresh_token)
        except ConfigurationError:
            # Its key was dropped: the saved refresh token is lost, but the
            # fact that a refresh never finished is still worth telling.
            log.warning(
                "token %r: the refresh journal entry cannot be decrypted with "
                "the configured keys; its saved refresh token is ignored",
                token.id,
                extra={"token_id": token.id},
            )
            secret = None
        return token, JournalEntry(started, secret, received)


def _earlier(
    entry: JournalEntry | None, current: Token, claimed_at: dt.datetime | None
) -> JournalEntry | None:
    """The entry if an earlier, unfinished refresh left it; else ``None``.

    An entry older than the token is from a deleted token whose id was
    reused; one stamped with our own claim, and holding nothing, is ours.
    """
    if entry is None or entry.started < current.created:
        return None
    if entry.started == claimed_at and entry.refresh_token is None:
        return None
    return entry


def _adoptable(entry: JournalEntry | None, current: Token) -> bool:
    """Whether the journal holds a newer refresh token for this very token."""
    return (
        entry is not None
        and entry.refresh_token is not None
        and entry.refresh_token != current.refresh_token
        and entry.started >= current.created
    )


def _misdirected(current: Token, grant: TokenGrant) -> SSOTransientError:
    return SSOTransientError(
        f"SSO answered the refresh of token {current.id} (character "
        f"{current.character_id}) with an access token of character "
        f"{grant.claims.character_id}; nothing of that answer was stored"
    )


def _dead_reason(error: SSOGrantError, entry: JournalEntry | None) -> str:
    """Why the grant is dead, as the operator will read it."""
    reason = f"SSO answered {error.error or 'invalid_grant'}: log in again"
    if entry is not None and entry.refresh_token is None:
        reason += (
            f"; a refresh started {entry.started:%Y-%m-%d %H:%M:%S}Z never "
            "finished (the worker stopped, or the SSO's answer was lost), so "
            "the SSO may have rotated the refresh token before the worker "
            "could save the new one"
        )
    return reason
