"""The OpenAPI document the emulator serves as today's ESI publishes one.

Built from the bundled Swagger spec as converted to OpenAPI 3 by
swagger2openapi (``worker/esi/specs/swagger-openapi3.json``), reshaped the
way ESI's 2025-2026 spec reads (ESI.md 3.1b, 4.2): unversioned paths
without trailing slash, PascalCase operation ids, ``X-Compatibility-Date``,
``X-Tenant``, ``Accept-Language`` and ``If-None-Match`` header parameters,
an ``OAuth2`` authorization-code scheme, ``x-cache-age`` and the
``x-rate-limit`` of every bucket-limited group. One synthetic route is
added and labelled as such: the cursor-paged ``/corporations/{id}/projects``.
The route planner's ``POST /route/{origin}/{destination}`` (2025-09-30)
is described from its recorded exchanges (see :mod:`.planner`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

CURSOR_PATH = "/corporations/{corporation_id}/projects"
ROUTE_PATH = "/route/{origin}/{destination}"
ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
_DROPPED_PARAMS = frozenset({"datasource", "token", "language", "Accept-Language"})
_HEADER_PARAMS = ("AcceptLanguage", "IfNoneMatch", "CompatibilityDate", "Tenant")


def live_openapi(
    converted: dict[str, Any],
    sample: dict[str, Any],
    *,
    base_url: str,
    dates: Sequence[str],
    openapi_version: str,
    rate_limit: Callable[[str], tuple[str, str] | None],
    cache_age: Callable[[str], int | None],
) -> dict[str, Any]:
    """Today's ESI spec for the emulator at ``base_url``.

    :param rate_limit: ``(group, "600/15m")`` of an operation id, or None.
    :param cache_age: seconds an operation's answers live, or None.
    """
    doc = copy.deepcopy(converted)
    newest = max(dates)
    doc["openapi"] = openapi_version
    doc["info"] = {**sample["info"], "version": newest}
    doc["servers"] = [{"url": base_url}]
    components = doc.setdefault("components", {})
    components["parameters"] = {
        **components.get("parameters", {}),
        **copy.deepcopy(sample["components"]["parameters"]),
    }
    components["parameters"]["CompatibilityDate"]["schema"]["enum"] = sorted(
        dates, reverse=True
    )
    components["headers"] = copy.deepcopy(sample["components"]["headers"])
    for name in ("Error", "ErrorDetail"):
        components["schemas"][name] = copy.deepcopy(sample["components"]["schemas"][name])
    components["securitySchemes"] = _security(converted, base_url)

    paths = {}
    for path, item in doc["paths"].items():
        bare = path.rstrip("/") or "/"
        paths[bare] = {
            method: _operation(op, rate_limit, cache_age)
            for method, op in item.items()
        }
    paths[CURSOR_PATH] = {"get": _cursor_operation()}
    paths.setdefault(ROUTE_PATH, {})["post"] = _route_planner_operation()
    doc["paths"] = paths
    return doc


def _operation(
    op: dict[str, Any],
    rate_limit: Callable[[str], tuple[str, str] | None],
    cache_age: Callable[[str], int | None],
) -> dict[str, Any]:
    snake = op["operationId"]
    params = [
        p
        for p in op.get("parameters", [])
        if _param_name(p) not in _DROPPED_PARAMS and _param_name(p) != "If-None-Match"
    ]
    params += [{"$ref": f"#/components/parameters/{name}"} for name in _HEADER_PARAMS]
    out = {k: v for k, v in op.items() if not k.startswith("x-alternate")}
    out.update(
        operationId="".join(part.capitalize() for part in snake.split("_")),
        parameters=params,
        **{"x-compatibility-date": "2020-01-01"},
    )
    out["responses"] = {
        **op.get("responses", {}),
        "default": {
            "description": "Error",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
            },
        },
    }
    if "security" in op:
        out["security"] = [
            {"OAuth2": scopes} for req in op["security"] for scopes in req.values()
        ]
    age = cache_age(snake)
    if age:
        out["x-cache-age"] = age
    limit = rate_limit(snake)
    if limit is not None:
        tokens, window = limit[1].split("/")
        out["x-rate-limit"] = {
            "group": limit[0],
            "max-tokens": int(tokens),
            "window-size": window,
        }
    return out


def _param_name(param: dict[str, Any]) -> str:
    if "$ref" in param:
        return str(param["$ref"]).rsplit("/", 1)[-1]
    return str(param.get("name", ""))


def _security(converted: dict[str, Any], base_url: str) -> dict[str, Any]:
    scopes = converted["components"]["securitySchemes"]["evesso"]["flows"][
        "implicit"
    ]["scopes"]
    return {
        "OAuth2": {
            "type": "oauth2",
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": f"{base_url}/v2/oauth/authorize",
                    "tokenUrl": f"{base_url}/v2/oauth/token",
                    "scopes": {name: name for name in scopes},
                }
            },
        }
    }


def _cursor_operation() -> dict[str, Any]:
    record = {
        "type": "object",
        "required": ["id", "name", "last_modified"],
        "properties": {
            "id": {"type": "integer", "format": "int64"},
            "name": {"type": "string"},
            "last_modified": {"type": "string", "format": "date-time"},
        },
    }
    token = {"type": "string"}
    return {
        "operationId": "GetCorporationsCorporationIdProjects",
        "summary": "SYNTHETIC (emulator only): cursor-paged corporation projects",
        "description": (
            "Synthetic route of the esi-worker emulator, shaped like ESI's "
            "cursor-paged Corporation Projects (ESI.md 3.8): records ordered "
            "by last_modified, newest last, walked with before/after tokens."
        ),
        "tags": ["Corporation"],
        "x-emulator-synthetic": True,
        "x-cache-age": 300,
        "parameters": [
            {
                "name": "corporation_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "format": "int32"},
            },
            {"name": "before", "in": "query", "schema": token},
            {"name": "after", "in": "query", "schema": token},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            },
            *[{"$ref": f"#/components/parameters/{n}"} for n in _HEADER_PARAMS],
        ],
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "cursor": {
                                    "type": "object",
                                    "properties": {"before": token, "after": token},
                                },
                                "projects": {"type": "array", "items": record},
                            },
                        }
                    }
                },
            }
        },
    }


def _route_planner_operation() -> dict[str, Any]:
    """``POST /route/{origin}/{destination}``, shaped as its recordings show."""
    system = {"type": "integer", "format": "int32"}
    body = {
        "type": "object",
        "properties": {
            "avoid_systems": {"type": "array", "items": system, "maxItems": 100},
            "connections": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "required": ["from", "to"],
                    "properties": {"from": system, "to": system},
                },
            },
            "preference": {
                "type": "string",
                "enum": ["Shorter", "Safer", "LessSecure"],
            },
            "security_penalty": {"type": "integer", "minimum": 0, "maximum": 100},
        },
    }
    answer = {
        "type": "object",
        "required": ["route"],
        "properties": {"route": {"type": "array", "items": system}},
    }
    path = [
        {"name": name, "in": "path", "required": True, "schema": system}
        for name in ("origin", "destination")
    ]
    return {
        "operationId": "PostRouteOriginDestination",
        "summary": "Plan a route between two solar systems",
        "tags": ["Routes"],
        "x-compatibility-date": "2025-09-30",
        "x-rate-limit": {"group": "routes", "max-tokens": 3600, "window-size": "15m"},
        "parameters": [
            *path,
            *[{"$ref": f"#/components/parameters/{n}"} for n in _HEADER_PARAMS],
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body}},
        },
        "responses": {
            "200": {
                "description": "The systems of the route, origin first",
                "content": {"application/json": {"schema": answer}},
            },
            "default": {
                "description": "Error",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
        },
    }
