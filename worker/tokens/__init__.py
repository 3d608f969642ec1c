"""Tokens: the stored SSO grants, their queries and their upkeep.

``from worker.tokens import Token, TokenQuery, TokenStore`` is the public
surface; the modules behind it are ``token`` (the model), ``query`` (the
chainable query), ``store`` (adding, merging, pruning), ``refresh`` (claim
and refresh under the row lock), ``outcomes`` (the row writes a refresh
ends with), ``journal`` (what an interrupted refresh leaves), ``upkeep``
and ``bulk`` (bulk refresh runs), ``reencrypt`` (key rotation), ``rows``
(shared SQL) and ``grants`` (input).
"""

from __future__ import annotations

from .grants import GrantFields
from .query import TokenQuery
from .reencrypt import ReencryptSummary
from .store import ClientRefusal, TokenStore
from .token import (
    CONFIG_ERROR,
    EXPIRED,
    NO_REFRESH_EXPIRED,
    OWNER_CHANGED,
    REVOKED,
    STATES,
    VALID,
    Token,
)
from .upkeep import RefreshSummary

__all__ = [
    "CONFIG_ERROR",
    "EXPIRED",
    "NO_REFRESH_EXPIRED",
    "OWNER_CHANGED",
    "REVOKED",
    "STATES",
    "VALID",
    "ClientRefusal",
    "GrantFields",
    "ReencryptSummary",
    "RefreshSummary",
    "Token",
    "TokenQuery",
    "TokenStore",
]
