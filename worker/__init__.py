"""esi-worker: keeps EVE SSO tokens alive and pulls ESI data into PostgreSQL.

Everything a plugin author or a django-esi user reaches for is importable
from here; the modules behind it load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # tokens
    "Token": "worker.tokens",
    "TokenQuery": "worker.tokens",
    "TokenStore": "worker.tokens",
    "TokenScopes": "worker.scopes",
    # SSO
    "SSOClient": "worker.sso",
    # ESI client
    "esi_client_factory": "worker.esi.client",
    "EsiClientProvider": "worker.esi.client",
    "CachingHttpFuture": "worker.esi.futures",
    # jobs
    "job": "worker.jobs",
    "Job": "worker.jobs",
    "JobContext": "worker.jobs",
    "JobRegistry": "worker.jobs",
    "FanOut": "worker.jobs",
    "token_required": "worker.jobs.decorators",
    "tokens_required": "worker.jobs.decorators",
    "single_use_token": "worker.jobs.decorators",
    # login
    "begin_login": "worker.login",
    "complete_login": "worker.login",
    # wiring
    "Runtime": "worker.runtime",
    "Settings": "worker.settings",
    "normalize_scopes": "worker.scopes",
    # errors
    "WorkerError": "worker.errors",
    "ConfigurationError": "worker.errors",
    "TokenClientMismatchError": "worker.errors",
    "ScopeError": "worker.errors",
    "DatabaseUnavailableError": "worker.errors",
    "TokenError": "worker.errors",
    "TokenInvalidError": "worker.errors",
    "TokenExpiredError": "worker.errors",
    "NotRefreshableTokenError": "worker.errors",
    "IncompleteResponseError": "worker.errors",
    "TokenLookupError": "worker.errors",
    "SSOError": "worker.errors",
    "SSOTransientError": "worker.errors",
    "SSOGrantError": "worker.errors",
    "SSOConfigurationError": "worker.errors",
    "JWTValidationError": "worker.errors",
    "SSOIncompleteResponseError": "worker.errors",
    "TokenRefreshTransientError": "worker.errors",
    "TokenRefreshClientRefusedError": "worker.errors",
    "TokenRefreshJWTError": "worker.errors",
    "TokenRefreshUnconfiguredError": "worker.errors",
    "ESIError": "worker.errors",
    "HTTPError": "worker.errors",
    "ErrorLimitedError": "worker.errors",
    "RateLimitedError": "worker.errors",
    "ESITransientError": "worker.errors",
    "SpecError": "worker.errors",
    "PagesInconsistentError": "worker.errors",
    "ScopeMissingError": "worker.errors",
    "InvalidLanguageError": "worker.errors",
    "InvalidParameterError": "worker.errors",
    "JobError": "worker.errors",
    "UnknownJobError": "worker.errors",
    "JobDefinitionError": "worker.errors",
    "JobSkipped": "worker.errors",
}

__all__ = [
    "CachingHttpFuture",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "ESIError",
    "ESITransientError",
    "ErrorLimitedError",
    "EsiClientProvider",
    "FanOut",
    "HTTPError",
    "IncompleteResponseError",
    "InvalidLanguageError",
    "InvalidParameterError",
    "JWTValidationError",
    "Job",
    "JobContext",
    "JobDefinitionError",
    "JobError",
    "JobRegistry",
    "JobSkipped",
    "NotRefreshableTokenError",
    "PagesInconsistentError",
    "RateLimitedError",
    "Runtime",
    "SSOClient",
    "SSOConfigurationError",
    "SSOError",
    "SSOGrantError",
    "SSOIncompleteResponseError",
    "SSOTransientError",
    "ScopeError",
    "ScopeMissingError",
    "Settings",
    "SpecError",
    "Token",
    "TokenClientMismatchError",
    "TokenError",
    "TokenExpiredError",
    "TokenInvalidError",
    "TokenLookupError",
    "TokenQuery",
    "TokenRefreshClientRefusedError",
    "TokenRefreshJWTError",
    "TokenRefreshTransientError",
    "TokenRefreshUnconfiguredError",
    "TokenScopes",
    "TokenStore",
    "UnknownJobError",
    "WorkerError",
    "__version__",
    "begin_login",
    "complete_login",
    "esi_client_factory",
    "job",
    "normalize_scopes",
    "single_use_token",
    "token_required",
    "tokens_required",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .errors import (
        ConfigurationError,
        DatabaseUnavailableError,
        ErrorLimitedError,
        ESIError,
        ESITransientError,
        HTTPError,
        IncompleteResponseError,
        InvalidLanguageError,
        JobDefinitionError,
        JobError,
        JobSkipped,
        JWTValidationError,
        NotRefreshableTokenError,
        PagesInconsistentError,
        RateLimitedError,
        ScopeError,
        ScopeMissingError,
        SpecError,
        SSOConfigurationError,
        SSOError,
        SSOGrantError,
        SSOIncompleteResponseError,
        SSOTransientError,
        TokenClientMismatchError,
        TokenError,
        TokenExpiredError,
        TokenInvalidError,
        TokenLookupError,
        TokenRefreshClientRefusedError,
        TokenRefreshJWTError,
        TokenRefreshTransientError,
        TokenRefreshUnconfiguredError,
        UnknownJobError,
        WorkerError,
    )
    from .esi.client import EsiClientProvider, esi_client_factory
    from .esi.futures import CachingHttpFuture
    from .jobs import FanOut, Job, JobContext, JobRegistry, job
    from .jobs.decorators import single_use_token, token_required, tokens_required
    from .login import begin_login, complete_login
    from .runtime import Runtime
    from .scopes import TokenScopes, normalize_scopes
    from .settings import Settings
    from .sso import SSOClient
    from .tokens import Token, TokenQuery, TokenStore
