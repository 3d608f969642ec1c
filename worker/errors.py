"""The errors esi-worker raises, under one root.

::

    WorkerError
    ├── ConfigurationError (ValueError)     a setting is missing or invalid
    │   └── TokenClientMismatchError        a token of another SSO application
    ├── ScopeError (ValueError)             a malformed scope argument
    ├── DatabaseUnavailableError (ConnectionError)  PostgreSQL unreachable
    ├── TokenError                          (django-esi name)
    │   ├── TokenInvalidError               the grant is dead; the token is unusable
    │   ├── TokenExpiredError               expired and cannot be refreshed now
    │   │   ├── TokenRefreshTransientError      + SSOTransientError
    │   │   ├── TokenRefreshClientRefusedError  + SSOConfigurationError
    │   │   ├── TokenRefreshJWTError            + JWTValidationError
    │   │   └── TokenRefreshUnconfiguredError   + ConfigurationError
    │   ├── NotRefreshableTokenError        the token has no refresh token
    │   ├── IncompleteResponseError         the SSO answer lacked what we need
    │   │   └── SSOIncompleteResponseError      + SSOTransientError
    │   └── TokenLookupError (LookupError)  get() found no token, or several
    ├── SSOError                            talking to EVE SSO failed
    │   ├── SSOTransientError               5xx, timeout, malformed body: retry later
    │   ├── SSOGrantError                   the SSO says this grant is dead
    │   ├── SSOConfigurationError           invalid_client: fix the settings
    │   └── JWTValidationError (ValueError) an access token failed verification
    ├── ESIError                            talking to ESI failed
    │   ├── HTTPError                       a non-2xx answer; carries ``status``
    │   │   ├── ErrorLimitedError           420: the error budget is spent
    │   │   └── RateLimitedError            429: a rate-limit bucket is empty
    │   ├── ESITransientError               502/503/504 or a connection error
    │   ├── SpecError                       the spec could not be loaded
    │   ├── PagesInconsistentError          pages kept coming from two snapshots
    │   ├── ScopeMissingError               the token lacks the operation's scope
    │   ├── InvalidLanguageError (ValueError)
    │   └── InvalidParameterError (ValueError)  a call's arguments do not fit
    └── JobError                            a job could not be found or run
        ├── UnknownJobError (LookupError)
        ├── JobDefinitionError (ValueError)
        └── JobSkipped                      a run had nothing to do (no token)

Leaves keep their context as attributes (status, retry-after, character id)
and never carry a secret in their text.

The ``+`` leaves belong to two branches at once. ``valid_access_token()``
raises a ``TokenRefresh*`` error whenever it cannot hand out an access
token now: ``except TokenExpiredError`` (the django-esi habit) catches
every such case, while ``except SSOConfigurationError`` (and the other
second parents) still tells the cause apart. A dead grant is not one of
them: it raises :class:`TokenInvalidError`, as in django-esi.
"""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Root of every error esi-worker raises."""


class ConfigurationError(WorkerError, ValueError):
    """A setting is missing or has an invalid value."""


class TokenClientMismatchError(ConfigurationError):
    """The token was issued to another SSO application than the configured one.

    Refreshing it with our credentials would be answered ``invalid_grant``
    and look like a dead grant, so the refresh is not attempted.
    """

    def __init__(self, message: str, *, token_id: int, issued_to: str) -> None:
        super().__init__(message)
        self.token_id = token_id
        self.issued_to = issued_to


class ScopeError(WorkerError, ValueError):
    """A scope argument is malformed."""


class DatabaseUnavailableError(WorkerError, ConnectionError):
    """PostgreSQL cannot be reached; the message names the server, never a password."""


# -- tokens -----------------------------------------------------------------


class TokenError(WorkerError):
    """A stored token cannot be used."""

    def __init__(self, message: str, *, token_id: int | None = None,
                 character_id: int | None = None, **kwargs: Any) -> None:
        # Cooperative, so a leaf under both TokenError and SSOError takes
        # the keywords of both (see the tree above).
        super().__init__(message, **kwargs)
        self.token_id = token_id
        self.character_id = character_id


class TokenInvalidError(TokenError):
    """The token's grant is dead (revoked, owner changed): a new login is needed."""


class TokenExpiredError(TokenError):
    """The access token has expired and could not be refreshed."""


class NotRefreshableTokenError(TokenError):
    """The token has no refresh token, so it cannot be refreshed."""


class IncompleteResponseError(TokenError):
    """The SSO answer lacked a field the token needs."""


class TokenLookupError(TokenError, LookupError):
    """``TokenQuery.get()`` found no matching token, or more than one."""


# -- SSO --------------------------------------------------------------------


class SSOError(WorkerError):
    """A request to EVE SSO failed."""

    def __init__(self, message: str, *, status: int | None = None,
                 error: str | None = None, retry_after_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.error = error
        self.retry_after_s = retry_after_s


class SSOTransientError(SSOError):
    """An SSO outage or malformed answer; the same request may work later."""


class SSOGrantError(SSOError):
    """The SSO says the grant is dead (``invalid_grant`` and kin)."""


class SSOConfigurationError(SSOError):
    """The SSO rejected our client credentials (``invalid_client``)."""


class JWTValidationError(SSOError, ValueError):
    """An access token failed signature or claim verification."""


# -- in two branches: see the module docstring ------------------------------


class SSOIncompleteResponseError(IncompleteResponseError, SSOTransientError):
    """The SSO answered 200 without an access token: incomplete, retry later."""


class TokenRefreshTransientError(TokenExpiredError, SSOTransientError):
    """The token expired and the SSO could not refresh it now (an outage)."""


class TokenRefreshClientRefusedError(TokenExpiredError, SSOConfigurationError):
    """The token expired and the SSO refused our client credentials."""


class TokenRefreshJWTError(TokenExpiredError, JWTValidationError):
    """The token expired and the refreshed access token failed verification."""


class TokenRefreshUnconfiguredError(TokenExpiredError, ConfigurationError):
    """The token expired and the settings do not allow a refresh (no SSO
    application configured, or its secrets open with no configured key)."""


# -- ESI --------------------------------------------------------------------


class ESIError(WorkerError):
    """A request to ESI failed."""


class HTTPError(ESIError):
    """ESI answered with an error status."""

    def __init__(self, message: str, *, status: int, operation: str | None = None,
                 body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.status_code = status
        self.operation = operation
        self.body = body
        self.headers = headers or {}


class ErrorLimitedError(HTTPError):
    """ESI answered 420: the error budget is spent until the window resets."""

    def __init__(self, message: str, *, reset_s: float | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("status", 420)
        super().__init__(message, **kwargs)
        self.reset_s = reset_s


class RateLimitedError(HTTPError):
    """ESI answered 429: a rate-limit bucket is empty."""

    def __init__(self, message: str, *, retry_after_s: float | None = None,
                 group: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("status", 429)
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        self.group = group


class ESITransientError(ESIError):
    """A 502/503/504 or connection error that outlasted the retries."""

    def __init__(self, message: str, *, status: int | None = None,
                 operation: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.operation = operation


class SpecError(ESIError):
    """The ESI spec could not be loaded from the named source."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class PagesInconsistentError(ESIError):
    """The pages of a paged result kept disagreeing after the re-fetches."""

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class ScopeMissingError(ESIError):
    """The token does not hold the scope the operation requires."""

    def __init__(self, message: str, *, operation: str, scope: str,
                 character_id: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.scope = scope
        self.character_id = character_id


class InvalidLanguageError(ESIError, ValueError):
    """A language ESI does not serve was asked for."""


class InvalidParameterError(ESIError, ValueError):
    """An operation was called with arguments its spec does not accept.

    Raised before any request: an unknown or missing parameter, or a value
    of the wrong type or outside the parameter's enum.
    """

    def __init__(self, message: str, *, operation: str,
                 parameter: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.parameter = parameter


# -- jobs -------------------------------------------------------------------


class JobError(WorkerError):
    """A job could not be found, loaded or run."""


class UnknownJobError(JobError, LookupError):
    """No job of that name is registered."""


class JobDefinitionError(JobError, ValueError):
    """A job declares an invalid schedule, fan-out or scope."""


class JobSkipped(JobError):
    """A run found nothing to do, e.g. no token holds the job's scopes."""
