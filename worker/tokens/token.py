"""The stored token: django-esi's ``Token`` fields and methods."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    JWTValidationError,
    NotRefreshableTokenError,
    SSOConfigurationError,
    SSOError,
    SSOTransientError,
    TokenError,
    TokenExpiredError,
    TokenInvalidError,
    TokenLookupError,
    TokenRefreshClientRefusedError,
    TokenRefreshJWTError,
    TokenRefreshTransientError,
    TokenRefreshUnconfiguredError,
)
from ..scopes import TokenScopes

if TYPE_CHECKING:
    from .query import TokenQuery
    from .store import TokenStore

log = logging.getLogger(__name__)

VALID = "valid"
REVOKED = "revoked"
OWNER_CHANGED = "owner_changed"
NO_REFRESH_EXPIRED = "no_refresh_expired"
CONFIG_ERROR = "config_error"
STATES = (VALID, REVOKED, OWNER_CHANGED, NO_REFRESH_EXPIRED, CONFIG_ERROR)
# Not a stored state: what a valid token whose access token lapsed shows as
# (see Token.status). A refresh renews it, if it has a refresh token.
EXPIRED = "expired"

# An access token this close to its expiry counts as expired: an ESI call
# started with it could arrive after it lapsed.
EXPIRY_MARGIN_S = 30.0

# What valid_access_token() raises when a refresh failed for now: a
# TokenExpiredError, as django-esi callers catch, that is also the error
# of the cause (see worker.errors). Subclasses before their parents.
_EXPIRED_BECAUSE: tuple[tuple[type[Exception], type[TokenExpiredError]], ...] = (
    (SSOConfigurationError, TokenRefreshClientRefusedError),
    (JWTValidationError, TokenRefreshJWTError),
    (SSOTransientError, TokenRefreshTransientError),
    (ConfigurationError, TokenRefreshUnconfiguredError),
)

COLUMNS = (
    "id",
    "created",
    "updated",
    "access_token",
    "refresh_token",
    "access_expires",
    "character_id",
    "character_name",
    "token_type",
    "character_owner_hash",
    "sso_version",
    "user_id",
    "state",
    "state_reason",
    "state_changed",
    "last_refresh_error",
    "refresh_failures",
    "next_refresh_attempt",
)


class _Objects:
    """``Token.objects``: the token query of the current runtime."""

    def __get__(self, instance: Any, owner: type) -> TokenQuery:
        from ..runtime import current

        return current().tokens.query()


class Token:
    """One SSO grant of one character, as django-esi's ``Token`` model offers it.

    Instances come from a :class:`~worker.tokens.TokenStore`; they are
    snapshots of a row, updated in place by :meth:`refresh`.
    """

    __slots__ = (*COLUMNS, "scopes", "_store")

    objects = _Objects()
    DoesNotExist = TokenLookupError
    MultipleObjectsReturned = TokenLookupError

    id: int
    created: dt.datetime
    updated: dt.datetime
    access_token: str
    refresh_token: str | None
    access_expires: dt.datetime
    character_id: int
    character_name: str
    token_type: str
    character_owner_hash: str
    sso_version: int
    user_id: str | None
    state: str
    state_reason: str | None
    state_changed: dt.datetime | None
    last_refresh_error: str | None
    refresh_failures: int
    next_refresh_attempt: dt.datetime | None
    scopes: TokenScopes

    def __init__(self, store: TokenStore, row: Mapping[str, Any]) -> None:
        self._store = store
        for name in COLUMNS:
            setattr(self, name, row[name])
        self.scopes = TokenScopes(row.get("scopes") or ())

    def __repr__(self) -> str:
        return (
            f"<Token id={self.id} character={self.character_id} "
            f"{self.character_name!r} state={self.state}>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Token", self.id))

    @property
    def pk(self) -> int:
        """django-esi's name for :attr:`id`."""
        return self.id

    @property
    def user(self) -> str | None:
        """The owning user's id (a string), or ``None``."""
        return self.user_id

    @property
    def expires(self) -> dt.datetime:
        """When the access token itself expires."""
        return self.access_expires

    @property
    def expired(self) -> bool:
        """Whether the access token has expired (or will within the margin)."""
        margin = dt.timedelta(seconds=EXPIRY_MARGIN_S)
        return self._store.clock.now() + margin >= self.access_expires

    @property
    def status(self) -> str:
        """The state as an operator reads it: ``expired`` for a valid token
        whose access token lapsed, else :attr:`state`.

        A refusal of our client credentials by the SSO is not a property of
        the token; :meth:`TokenStore.client_refusal` reports it.
        """
        if self.state == VALID and self.expired:
            return EXPIRED
        return self.state

    @property
    def can_refresh(self) -> bool:
        """Whether a refresh could renew the access token."""
        return self.refresh_token is not None and self.state == VALID

    def valid_access_token(self) -> str:
        """The access token, refreshed first when it has expired.

        Every failure to get a usable access token *now* is a
        :class:`TokenExpiredError`; the ones a refresh met are also the
        error of their cause (``TokenRefresh*`` in :mod:`worker.errors`),
        so ``except SSOConfigurationError`` still tells a refused client
        apart.

        :raises TokenInvalidError: the grant is dead (revoked, owner changed).
        :raises TokenExpiredError: expired, and no refresh is possible now.
        """
        if self.state != VALID:
            raise TokenInvalidError(
                f"token {self.id} is {self.state}",
                token_id=self.id,
                character_id=self.character_id,
            )
        if not self.expired:
            return self.access_token
        if self.refresh_token is None:
            raise TokenExpiredError(
                f"token {self.id} expired and has no refresh token",
                token_id=self.id,
                character_id=self.character_id,
            )

        try:
            fresh = self._store.refresh(self, min_remaining_s=EXPIRY_MARGIN_S)
        except NotRefreshableTokenError as exc:
            # Its refresh token went while we waited for the row lock.
            raise TokenExpiredError(
                f"token {self.id} expired and has no refresh token",
                token_id=self.id,
                character_id=self.character_id,
            ) from exc
        except (SSOError, ConfigurationError) as exc:
            raise self._expired_because(exc) from exc
        self._assign(fresh)
        return self.access_token

    def refresh(self, session: Any = None, auth: Any = None) -> None:
        """Refresh the access token now and update this object.

        :raises NotRefreshableTokenError: the token has no refresh token.
        :raises TokenInvalidError: the SSO says the grant is dead.
        :raises ConfigurationError: no SSO application is configured.
        :raises SSOError: the SSO could not answer (nothing was lost).
        """
        if self.refresh_token is None:
            raise NotRefreshableTokenError(
                f"token {self.id} has no refresh token",
                token_id=self.id,
                character_id=self.character_id,
            )
        self._assign(self._store.refresh(self, session=session, auth=auth))

    def get_esi_client(self, **kwargs: Any) -> Any:
        """An ESI client that authenticates as this token."""
        from ..esi.client import esi_client_factory

        return esi_client_factory(token=self, **kwargs)

    @classmethod
    def get_token(cls, character_id: int, scopes: str | Iterable[str]) -> Token | bool:
        """A usable token of the character holding ``scopes``, else ``False``.

        :raises ConfigurationError: a refresh was needed and the settings do
            not allow one (no SSO application configured).
        """
        candidates = (
            cls.objects.filter(character_id=character_id)
            .require_scopes(scopes)
            .order_by("-access_expires")
        )
        for token in candidates:
            try:
                token.valid_access_token()
            except ConfigurationError:
                raise  # the settings' fault, the same for every token
            except (TokenError, SSOError) as exc:
                log.debug(
                    "token %r of character %r unusable: %s",
                    token.id,
                    character_id,
                    type(exc).__name__,
                )
                continue
            return token
        return False

    def replaced(self, **changes: Any) -> Token:
        """A copy of this snapshot with some fields changed (nothing is stored)."""
        values = {name: getattr(self, name) for name in (*COLUMNS, "scopes")}
        values.update(changes)
        return Token(self._store, values)

    def _expired_because(
        self, exc: SSOError | ConfigurationError
    ) -> TokenExpiredError:
        """The error for a refresh that failed with ``exc``: in both branches."""
        message = f"token {self.id} expired and could not be refreshed now: {exc}"
        ids = {"token_id": self.id, "character_id": self.character_id}
        kind = next((k for c, k in _EXPIRED_BECAUSE if isinstance(exc, c)), None)
        if kind is None or not isinstance(exc, SSOError):
            return (kind or TokenExpiredError)(message, **ids)
        return kind(
            message,
            **ids,
            status=exc.status,
            error=exc.error,
            retry_after_s=exc.retry_after_s,
        )

    def _assign(self, other: Token) -> None:
        for name in (*COLUMNS, "scopes"):
            setattr(self, name, getattr(other, name))
