"""Private copies of a decoded answer, for an in-process cache to hand out.

Parsing a cached body again on every hit costs about 0.5 us per market
order; copying the containers of an already parsed one costs a fifth of
that. Every caller gets containers of its own, so sorting a list or
editing a dict never reaches the kept answer or another caller. Leaves
are shared: JSON leaves (str, int, float, bool, None) and the datetime
and date objects ESI's dates are decoded into cannot change.

Only the shapes ESI answers with most (an object of plain fields, a list
of such objects, a list of ids) are copied; a nested answer is parsed
again on every hit, as before.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

_LEAVES = frozenset({str, int, float, bool, type(None), dt.datetime, dt.date})
_OBJECTS = frozenset({dict})

SIZE_PER_TEXT_BYTE = 4
"""Bytes a parsed answer holds per byte of its JSON text (1,000 orders: 3.95)."""


class JsonCopier:
    """Keeps one decoded answer and hands out copies of it.

    :param value: the decoded answer; the copier owns it from now on, so
        the caller must not hand it out as well.
    :param copy: makes a copy of ``value`` sharing only its leaves.
    :param size: approximate bytes ``value`` holds.
    """

    __slots__ = ("_copy", "_value", "size")

    def __init__(self, value: Any, copy: Callable[[Any], Any], size: int) -> None:
        self._value = value
        self._copy = copy
        self.size = size

    @classmethod
    def of(cls, value: Any, text_bytes: int) -> JsonCopier | None:
        """A copier for ``value``, or ``None`` when its shape is not one copied.

        :param text_bytes: length of the JSON text ``value`` was parsed from.
        """
        copy = _copier_for(value)
        if copy is None:
            return None
        return cls(value, copy, text_bytes * SIZE_PER_TEXT_BYTE)

    def copy(self) -> Any:
        """A copy of the answer that shares nothing a caller can change."""
        return self._copy(self._value)


def _copier_for(value: Any) -> Callable[[Any], Any] | None:
    kind = type(value)
    if kind in _LEAVES:
        return _same
    if kind is dict:
        return dict.copy if _LEAVES.issuperset(map(type, value.values())) else None
    if kind is not list:
        return None
    if _LEAVES.issuperset(map(type, value)):
        return list.copy
    if not _OBJECTS.issuperset(map(type, value)):
        return None
    fields = itertools.chain.from_iterable(map(dict.values, value))
    return _copy_objects if _LEAVES.issuperset(map(type, fields)) else None


def _same(value: Any) -> Any:
    return value


def _copy_objects(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(map(dict.copy, value))
