"""Grant fields: what the store needs to save a token, from any grant shape."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..errors import IncompleteResponseError
from ..scopes import normalize_scopes

# Other spellings of a field, as they appear on SSO answers, django-esi rows
# and the emulator's grants.
_ALIASES = {
    "character_owner_hash": ("character_owner_hash", "owner_hash", "owner"),
    "access_expires": ("access_expires", "expires_at", "expires"),
    "character_name": ("character_name", "name"),
}


@dataclasses.dataclass(frozen=True)
class GrantFields:
    """One grant's fields, checked; the secrets are left out of the repr."""

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    character_id: int
    character_name: str
    character_owner_hash: str
    scopes: tuple[str, ...]
    access_expires: dt.datetime
    token_type: str = "character"
    sso_version: int = 2

    def checked(self) -> GrantFields:
        """This grant, with a clear error for the first bad field.

        :raises IncompleteResponseError: a required field is empty or unusable.
        """
        for name in ("access_token", "character_name", "character_owner_hash"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise IncompleteResponseError(f"the grant has no {name}")
        if not isinstance(self.character_id, int) or self.character_id <= 0:
            raise IncompleteResponseError(
                f"character_id must be a positive integer, got {self.character_id!r}"
            )
        if self.refresh_token is not None and not isinstance(self.refresh_token, str):
            raise IncompleteResponseError("refresh_token must be a string or None")
        expires = self.access_expires
        if not isinstance(expires, dt.datetime) or expires.tzinfo is None:
            raise IncompleteResponseError(
                "access_expires must be a timezone-aware datetime"
            )
        return self


def grant_fields(grant: Any) -> GrantFields:
    """The fields of a ``TokenGrant``, a mapping, or an object carrying them.

    :raises IncompleteResponseError: a required field is missing.
    """
    claims = getattr(grant, "claims", None)
    if claims is not None and hasattr(claims, "owner_hash"):
        return GrantFields(
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            character_id=claims.character_id,
            character_name=claims.character_name,
            character_owner_hash=claims.owner_hash,
            scopes=claims.scopes,
            access_expires=grant.expires_at,
            token_type=claims.token_type,
        )

    def read(name: str, default: Any = ...) -> Any:
        for alias in _ALIASES.get(name, (name,)):
            if isinstance(grant, Mapping) and alias in grant:
                return grant[alias]
            if not isinstance(grant, Mapping) and hasattr(grant, alias):
                return getattr(grant, alias)
        if default is ...:
            raise IncompleteResponseError(f"the grant has no {name}")
        return default

    return GrantFields(
        access_token=read("access_token"),
        refresh_token=read("refresh_token", None),
        character_id=int(read("character_id")),
        character_name=read("character_name"),
        character_owner_hash=read("character_owner_hash"),
        scopes=normalize_scopes(read("scopes", ())),
        access_expires=_instant(read("access_expires")),
        token_type=read("token_type", "character"),
        sso_version=int(read("sso_version", 2)),
    )


def _instant(value: Any) -> Any:
    """Epoch seconds become an aware datetime; anything else is checked later."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return value
