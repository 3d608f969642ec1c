"""ESI's ``date-time`` and ``date`` fields as datetime and date objects, fast.

bravado-core turns them into objects by walking every value of an answer
against its schema: about 80 us per market order, more than fetching it.
Here an answer schema is read once into a plan naming where such fields
are, and an answer is converted by visiting those fields only; a page of
1,000 orders with one ``date-time`` each costs about 0.15 us per order.

What comes back is what bravado gives django-esi users: aware datetimes
(UTC when ESI names no offset) and dates; everything else stays the JSON
ESI sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any

from bravado_core.spec import Spec

Convert = Callable[[Any], Any]
"""Turns the formatted fields of a value into objects; may change it in place."""

MAX_DEPTH = 32
_TZINFO = attrgetter("tzinfo")


def plan_for(spec: Spec, schema: Any) -> Convert | None:
    """How to convert answers of ``schema``; None when nothing needs it."""
    return _Planner(spec).plan(schema, 0)


def to_datetime(value: Any) -> Any:
    """An ISO 8601 date-time text as an aware datetime; other values unchanged.

    :raises ValueError: the text is not a date-time.
    """
    if type(value) is not str:
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        parsed = _lenient(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def to_date(value: Any) -> Any:
    """An ISO 8601 date text as a date; other values unchanged.

    :raises ValueError: the text is not a date.
    """
    if type(value) is not str:
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return _lenient(value).date()


_LEAVES: dict[str, Convert] = {"date-time": to_datetime, "date": to_date}


class _Planner:
    """Reads one schema; ``$ref`` cycles end the walk there (no conversion)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.open: set[int] = set()

    def plan(self, schema: Any, depth: int) -> Convert | None:
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return None
        target = self.spec.deref(schema)
        if not isinstance(target, dict) or id(target) in self.open:
            return None
        self.open.add(id(target))
        try:
            return self._plan(target, depth)
        finally:
            self.open.discard(id(target))

    def _plan(self, schema: dict[str, Any], depth: int) -> Convert | None:
        kind = schema.get("type")
        leaf = _LEAVES.get(str(schema.get("format")))
        if leaf is not None and kind in (None, "string"):
            return leaf
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                return self._alternatives(schema[key], depth)
        if kind == "array" or (kind is None and "items" in schema):
            return _array(self.plan(schema.get("items"), depth + 1))
        if kind == "object" or (
            kind is None and ("properties" in schema or "allOf" in schema)
        ):
            return self._object(schema, depth)
        return None

    def _object(self, schema: dict[str, Any], depth: int) -> Convert | None:
        fields: dict[str, Convert] = {}
        parts = [schema, *[self.spec.deref(p) for p in schema.get("allOf") or ()]]
        for part in parts:
            for name, prop in ((part or {}).get("properties") or {}).items():
                convert = self.plan(prop, depth + 1)
                if convert is not None:
                    fields[str(name)] = convert
        extra = schema.get("additionalProperties")
        rest = self.plan(extra, depth + 1) if isinstance(extra, dict) else None
        if not fields and rest is None:
            return None
        return _Object(fields, rest)

    def _alternatives(self, options: list[Any], depth: int) -> Convert | None:
        """A plan when every non-null alternative converts the same way."""
        plans = []
        for option in options:
            target = self.spec.deref(option)
            if isinstance(target, dict) and target.get("type") == "null":
                continue
            plans.append(self.plan(option, depth + 1))
        return plans[0] if plans and all(p is plans[0] for p in plans) else None


class _Object:
    """Converts the named fields of an object, and of its free-form ones."""

    __slots__ = ("fields", "leaves", "rest")

    def __init__(self, fields: dict[str, Convert], rest: Convert | None) -> None:
        self.fields = fields
        self.rest = rest
        leaves = {k: c for k, c in fields.items() if c in _LEAVES.values()}
        self.leaves = leaves if len(leaves) == len(fields) and rest is None else None

    def __call__(self, value: Any) -> Any:
        if type(value) is not dict:
            return value
        for key, convert in self.fields.items():
            found = value.get(key)
            if found is not None:
                value[key] = convert(found)
        if self.rest is not None:
            for key, found in value.items():
                if key not in self.fields:
                    value[key] = self.rest(found)
        return value


def _array(items: Convert | None) -> Convert | None:
    if items is None:
        return None
    if isinstance(items, _Object) and items.leaves:
        return _ObjectList(items)
    return _List(items)


class _List:
    """Converts every item of a list."""

    __slots__ = ("items",)

    def __init__(self, items: Convert) -> None:
        self.items = items

    def __call__(self, value: Any) -> Any:
        if type(value) is not list:
            return value
        convert = self.items
        value[:] = map(convert, value)
        return value


class _ObjectList:
    """A list of objects whose formatted fields are all plain leaves.

    The shape of most paged answers (orders, assets, journal entries): each
    field is converted for the whole list in C-level passes; a list that
    does not fit (a missing field, a null, an odd text) goes item by item.
    """

    __slots__ = ("objects",)

    def __init__(self, objects: _Object) -> None:
        self.objects = objects

    def __call__(self, value: Any) -> Any:
        if type(value) is not list:
            return value
        assert self.objects.leaves is not None
        for key, convert in self.objects.leaves.items():
            try:
                parsed = _parse_all(value, key, convert)
            except (KeyError, TypeError, ValueError, AttributeError):
                # Converting is idempotent: fields done already stay done.
                for item in value:
                    self.objects(item)
                return value
            for item, converted in zip(value, parsed, strict=True):
                item[key] = converted
        return value


def _parse_all(items: list[Any], key: str, convert: Convert) -> list[Any]:
    texts = list(map(itemgetter(key), items))
    if convert is to_date:
        return list(map(dt.date.fromisoformat, texts))
    parsed = list(map(dt.datetime.fromisoformat, texts))
    if None in map(_TZINFO, parsed):
        parsed = [d if d.tzinfo else d.replace(tzinfo=dt.UTC) for d in parsed]
    return parsed


def _lenient(value: str) -> dt.datetime:
    """What ``fromisoformat`` refuses but ISO 8601 allows (bravado's parser)."""
    from dateutil.parser import isoparse

    try:
        return isoparse(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from exc
