"""Scopes: the argument forms django-esi accepts, normalised to one, and
the collection a token's scopes come in."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Self

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
                raise ScopeError(f"malformed scope name {name!r}{_hint(name)}")
            names.add(name)
    return tuple(sorted(names))


class Scope(str):
    """One scope name that also answers to ``.name``, as django-esi's
    ``Scope`` rows do (``[s.name for s in token.scopes.all()]``)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """The scope name itself."""
        return str(self)


class TokenScopes(tuple[Scope, ...]):
    """A token's scope names: a sorted tuple of strings, equal to a plain
    tuple of the same names, with the few manager methods django-esi code
    calls on ``token.scopes``.

    ``all()``, ``filter(name=...)`` / ``filter(name__in=...)`` return
    scopes again, ``exists()`` and ``count()`` (no argument) answer as a
    query would; ``count(name)`` keeps the tuple's meaning.
    """

    __slots__ = ()

    def __new__(cls, names: Iterable[str] = ()) -> Self:
        return super().__new__(cls, (Scope(n) for n in names))

    def all(self) -> TokenScopes:
        """Every scope (django-esi: ``token.scopes.all()``)."""
        return self

    def filter(
        self, *, name: str | None = None, name__in: Iterable[str] | None = None
    ) -> TokenScopes:
        """The scopes with this ``name``, or with a name in ``name__in``."""
        wanted = set(name__in) if name__in is not None else None
        return TokenScopes(
            s
            for s in self
            if (name is None or s == name) and (wanted is None or s in wanted)
        )

    def exists(self) -> bool:
        """Whether there is any scope."""
        return bool(self)

    def count(self, value: Any = ..., /) -> int:  # type: ignore[override]
        """How many scopes; with an argument, how often it occurs (tuple)."""
        if value is ...:
            return len(self)
        return super().count(value)


def _hint(name: str) -> str:
    """What probably went wrong with a malformed scope name."""
    if "," in name or ";" in name:
        return "; scopes are separated by spaces, not commas"
    return ""


def _as_list(scopes: Iterable[str]) -> list[str]:
    try:
        return list(scopes)
    except TypeError:
        raise ScopeError(
            f"scopes must be a string or an iterable of strings, "
            f"not {type(scopes).__name__}"
        ) from None
