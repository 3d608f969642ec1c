"""Tokens: the stored SSO grants, their queries and their upkeep.

``from worker.tokens import Token, TokenQuery, TokenStore`` is the public
surface; the modules behind it are ``token`` (the model), ``query`` (the
chainable query), ``store`` (SQL, refresh, prune) and ``grants`` (input).
"""

from __future__ import annotations

from .grants import GrantFields
from .query import TokenQuery
from .store import RefreshSummary, TokenStore
from .token import (
    CONFIG_ERROR,
    NO_REFRESH_EXPIRED,
    OWNER_CHANGED,
    REVOKED,
    STATES,
    VALID,
    Token,
)

__all__ = [
    "CONFIG_ERROR",
    "NO_REFRESH_EXPIRED",
    "OWNER_CHANGED",
    "REVOKED",
    "STATES",
    "VALID",
    "GrantFields",
    "RefreshSummary",
    "Token",
    "TokenQuery",
    "TokenStore",
]
