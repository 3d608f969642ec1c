"""What an ESI operation asks of a call: scopes, languages, paging."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from bravado_core.exception import MatchingResponseNotFound
from bravado_core.operation import Operation
from bravado_core.response import get_response_spec

from ..errors import InvalidLanguageError, ScopeMissingError
from .formats import Convert, plan_for

LANGUAGE_PARAMS = ("language", "Accept_Language")
# The Swagger-era spec says en-us, today's says en (ESI.md 3.9); ESI takes both.
_ALIASES = {"en-us": "en", "en": "en-us"}


class TokenLike(Protocol):
    """The members of a token the ESI client uses."""

    character_id: int

    @property
    def scopes(self) -> Sequence[str]: ...

    def valid_access_token(self) -> str: ...


_FACTS = "_esi_facts"
DAY_S = 86400.0
"""The longest an answer is kept fresh when its operation names no cache time."""


@dataclasses.dataclass(frozen=True)
class OperationFacts:
    """What every call of one operation asks again, worked out once.

    Kept on the operation itself (see :func:`facts`): a built spec is
    shared by every client of the process and never changes, so neither
    does what is read from it.
    """

    name: str
    scope_sets: tuple[tuple[str, ...], ...]
    paged: bool
    cache_cap_s: float = DAY_S
    schemas: dict[int, Any] = dataclasses.field(default_factory=dict, repr=False)
    plans: dict[int, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def authed(self) -> bool:
        """Whether the operation is authenticated."""
        return bool(self.scope_sets)

    def schema(self, operation: Operation, status: int) -> Any:
        """The dereferenced body schema of answer ``status``, or ``None``."""
        try:
            return self.schemas[status]
        except KeyError:
            pass
        try:
            spec = get_response_spec(status, operation)
        except MatchingResponseNotFound:
            schema = None
        else:
            raw = spec.get("schema")
            schema = None if raw is None else operation.swagger_spec.deref(raw)
        self.schemas[status] = schema
        return schema

    def plan(self, operation: Operation, status: int) -> Convert | None:
        """How to turn the dates of answer ``status`` into objects, or None."""
        try:
            return self.plans[status]  # type: ignore[no-any-return]
        except KeyError:
            pass
        schema = self.schema(operation, status)
        plan = None if schema is None else plan_for(operation.swagger_spec, schema)
        self.plans[status] = plan
        return plan


def facts(operation: Operation) -> OperationFacts:
    """The :class:`OperationFacts` of ``operation``, built on first use."""
    found = operation.__dict__.get(_FACTS)
    if found is None:
        found = OperationFacts(
            name=operation.operation_id,
            scope_sets=tuple(_scope_sets(operation)),
            paged="page" in operation.params,
            cache_cap_s=_cache_cap_s(operation.op_spec),
        )
        setattr(operation, _FACTS, found)  # a race builds the same facts twice
    return found


def operation_name(operation: Operation | None) -> str:
    """The operation id, used in logs, errors and metric labels."""
    return facts(operation).name if operation is not None else "unknown"


def required_scopes(operation: Operation) -> list[tuple[str, ...]]:
    """The alternatives of scope sets the operation accepts; empty if public."""
    return list(facts(operation).scope_sets)


def needs_token(operation: Operation | None) -> bool:
    """Whether the operation is authenticated."""
    return operation is not None and bool(facts(operation).scope_sets)


def check_token(operation: Operation, token: TokenLike | None) -> None:
    """Fail before any request when ``token`` cannot call ``operation``.

    :raises ScopeMissingError: no token, or none of the accepted scope sets
        is held by the token.
    """
    alternatives = facts(operation).scope_sets
    if not alternatives:
        return
    name = operation.operation_id
    wanted = " ".join(alternatives[0])
    if token is None:
        raise ScopeMissingError(
            f"{name} needs a token with scope {wanted}; "
            "the client was built without a token",
            operation=name,
            scope=wanted,
        )

    held = set(token.scopes)
    if not any(held.issuperset(scopes) for scopes in alternatives):
        raise ScopeMissingError(
            f"{name} needs scope {wanted}, which the token of character "
            f"{token.character_id} does not hold",
            operation=name,
            scope=wanted,
            character_id=token.character_id,
        )


def allowed_languages(operation: Operation) -> tuple[str, ...]:
    """The languages the operation's ``language`` parameter allows."""
    for param_name in LANGUAGE_PARAMS:
        param = operation.params.get(param_name)
        if param is not None:
            spec = operation.swagger_spec.deref(param.param_spec)
            return tuple(spec.get("enum", ()))
    return ()


def check_languages(operation: Operation, languages: Iterable[str]) -> list[str]:
    """``languages`` without duplicates, each one checked.

    :raises InvalidLanguageError: the operation is not localized, or a
        language is not one it allows (naming both).
    """
    allowed = allowed_languages(operation)
    if not allowed:
        raise InvalidLanguageError(
            f"{operation.operation_id} is not localized; it takes no language"
        )
    checked: list[str] = []
    for language in languages:
        if language not in allowed and _ALIASES.get(language) not in allowed:
            raise InvalidLanguageError(
                f"language {language!r} is not served by {operation.operation_id}; "
                f"allowed: {', '.join(allowed)}"
            )
        if language not in checked:
            checked.append(language)
    return checked


def is_paged(operation: Operation | None) -> bool:
    """Whether the operation takes a ``page`` parameter."""
    return operation is not None and facts(operation).paged


def _scope_sets(operation: Operation) -> list[tuple[str, ...]]:
    security = operation.op_spec.get("security")
    if security is None:
        security = operation.swagger_spec.spec_dict.get("security", [])
    return [tuple(s for scopes in req.values() for s in scopes) for req in security]


def _cache_cap_s(op_spec: Any) -> float:
    """The longest an answer may stay fresh: the route's own cache time.

    ``x-cache-age`` (today's spec) or ``x-cached-seconds`` (Swagger era);
    one day when the spec names none ("expires daily at 11:05" routes).
    """
    for key in ("x-cache-age", "x-cached-seconds"):
        value = op_spec.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return DAY_S
