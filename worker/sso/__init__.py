"""EVE SSO v2: login URLs, code exchange, refresh, revoke, and answer classes.

Callers see only :class:`~worker.errors.SSOGrantError`,
:class:`~worker.errors.SSOConfigurationError` and
:class:`~worker.errors.SSOTransientError` (classified once, in
``answers``), never a requests or oauthlib exception. Access-token checks
live in :mod:`worker.access_tokens` and are re-exported here.
"""

from __future__ import annotations

from ..access_tokens import (
    ACCEPTED_ISSUERS,
    CLOCK_LEEWAY_S,
    EVE_AUDIENCE,
    SUPPORTED_ALGORITHMS,
    UNKNOWN_KID_REFETCH_S,
    AccessTokenClaims,
    KeySet,
    verify_access_token,
)
from .answers import SSO_CLASSES, classify_token_error, sso_class
from .client import (
    Endpoints,
    LoginRequest,
    SSOClient,
    TokenAnswer,
    TokenGrant,
    require_sso_application,
)

__all__ = [
    "ACCEPTED_ISSUERS",
    "CLOCK_LEEWAY_S",
    "EVE_AUDIENCE",
    "SSO_CLASSES",
    "SUPPORTED_ALGORITHMS",
    "UNKNOWN_KID_REFETCH_S",
    "AccessTokenClaims",
    "Endpoints",
    "KeySet",
    "LoginRequest",
    "SSOClient",
    "TokenAnswer",
    "TokenGrant",
    "classify_token_error",
    "require_sso_application",
    "sso_class",
    "verify_access_token",
]
