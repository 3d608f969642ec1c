"""Scope arguments: the forms django-esi accepts, normalised to one."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ScopeError

# ESI scope names look like ``esi-assets.read_assets.v1``; ``publicData`` is
# the one legacy name without dots.
_SCOPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


def normalize_scopes(scopes: str | Iterable[str] | None) -> tuple[str, ...]:
    """Turn any accepted scope argument into a sorted tuple of unique names.

    Accepted: ``None``, a space-delimited string, a list (or any iterable)
    of names, or a one-element list holding a space-delimited string.

    :raises ScopeError: when an element is not a string or not a scope name.
    """
    if scopes is None:
        return ()
    if isinstance(scopes, (bytes, bytearray)):
        raise ScopeError(f"scopes must be text, not {type(scopes).__name__}")
    items = [scopes] if isinstance(scopes, str) else _as_list(scopes)

    names: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ScopeError(f"scope {item!r} is a {type(item).__name__}, not a string")
        for name in item.split():
            if not _SCOPE_RE.match(name):
                raise ScopeError(f"malformed scope name {name!r}")
            names.add(name)
    return tuple(sorted(names))


def _as_list(scopes: Iterable[str]) -> list[str]:
    try:
        return list(scopes)
    except TypeError:
        raise ScopeError(
            f"scopes must be a string or an iterable of strings, "
            f"not {type(scopes).__name__}"
        ) from None
