"""Corporation roles: the names ESI knows and what each route requires.

ESI marks a corporate route with ``x-required-roles``: a member needs any
one of those roles (a Director holds every role). A per-corporation job
needs, for each route it names, one role of that route's list, and every
role it declares itself. Both are read from the bundled Swagger spec.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DIRECTOR = "Director"
ROLES_PATH = "/characters/{character_id}/roles/"
_VERSION_RE = re.compile(r"^/(latest|legacy|dev|v\d+)(?=/)")
_PARAM_RE = re.compile(r"\{[^}]*\}")


def known_roles() -> frozenset[str]:
    """Every corporation role ESI names (the enum of the roles route)."""
    return _known_roles()


def route_roles(routes: Iterable[str]) -> tuple[frozenset[str], ...]:
    """For each of ``routes`` that requires roles, the roles of which one is needed.

    A route is ``"/path"`` or ``"METHOD /path"``, with or without a version
    prefix or trailing slash; routes the spec does not know require nothing.
    """
    return _route_roles(tuple(routes))


def roles_cover(held: Iterable[str], required: Iterable[Iterable[str]]) -> bool:
    """Whether ``held`` has one role of every set in ``required``.

    A Director holds every role in game.
    """
    have = set(held)
    if DIRECTOR in have:
        return True
    return all(have & set(choice) for choice in required)


@functools.cache
def bundled_swagger() -> dict[str, Any]:
    """The bundled Swagger spec of ESI, parsed once."""
    # Read by path: importing ``worker.esi`` would load bravado (seconds).
    specs = Path(__file__).resolve().parent.parent / "esi" / "specs"
    document: dict[str, Any] = json.loads(
        (specs / "swagger.json").read_text(encoding="utf-8")
    )
    return document


@functools.cache
def _known_roles() -> frozenset[str]:
    operation = bundled_swagger()["paths"][ROLES_PATH]["get"]
    schema = operation["responses"]["200"]["schema"]
    return frozenset(schema["properties"]["roles"]["items"]["enum"])


@functools.cache
def _route_roles(routes: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    table = _required_roles()
    found = (table.get(_route_key(route)) for route in routes)
    return tuple(roles for roles in found if roles)


@functools.cache
def _required_roles() -> dict[tuple[str, str], frozenset[str]]:
    table: dict[tuple[str, str], frozenset[str]] = {}
    for path, operations in bundled_swagger()["paths"].items():
        for method, operation in operations.items():
            roles = isinstance(operation, dict) and operation.get("x-required-roles")
            if roles:
                table[_route_key(f"{method} {path}")] = frozenset(roles)
    return table


def _route_key(route: str) -> tuple[str, str]:
    method, _, path = route.strip().rpartition(" ")
    path = _VERSION_RE.sub("", path.strip()).rstrip("/").lower() or "/"
    # Parameter names differ between spec versions; their places do not.
    return (method or "GET").upper(), _PARAM_RE.sub("{}", path)
