"""The ESI operations of the bundled spec, and the router from paths to them."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from .config import parse_limit
from .livespec import live_openapi

_VERSION_RE = re.compile(r"^/(latest|legacy|dev|_latest|v\d+)(/.*)?$")
_CACHED_RE = re.compile(r"cached for up to (\d+) seconds")
SWAGGER_PREFIXES = (
    "latest",
    "_latest",
    "legacy",
    "dev",
    "v1",
    "v2",
    "v3",
    "v4",
    "v5",
    "v6",
)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One ESI route + method, with what the emulator needs to serve it."""

    operation_id: str
    method: str
    template: str
    scope: str | None
    paged: bool
    localized: bool
    cached_seconds: int | None
    int_params: frozenset[str]
    rate_limit: tuple[str, int, float] | None
    # ``x-required-roles``: a character needs any one of them (or Director).
    required_roles: tuple[str, ...] = ()
    # The compatibility date a route newer than the bundled spec came with.
    since: str | None = None

    @property
    def authed(self) -> bool:
        """True when the operation needs an access token."""
        return self.scope is not None


@dataclasses.dataclass(frozen=True)
class Match:
    """A request path resolved to an operation."""

    operation: Operation
    path_params: dict[str, str]


class OperationTable:
    """Routes request paths (any prefix style, slash or not) to operations."""

    def __init__(
        self,
        swagger: dict[str, Any],
        openapi: dict[str, Any],
        extra: tuple[Operation, ...] = (),
    ) -> None:
        self.swagger = swagger
        self.openapi = openapi
        self.scopes = frozenset(swagger["securityDefinitions"]["evesso"]["scopes"])
        limits = _openapi_rate_limits(openapi)
        self.by_id: dict[str, Operation] = {}
        self._routes: dict[
            tuple[str, int], list[tuple[re.Pattern[str], Operation]]
        ] = {}

        for template, methods in swagger["paths"].items():
            for method, spec in methods.items():
                op = _operation(
                    swagger,
                    template,
                    method.upper(),
                    spec,
                    limits.get(template.rstrip("/")),
                )
                self._add(op)
        for op in extra:
            self._add(op)
        for routes in self._routes.values():
            # Literal segments win over parameters (``/universe/types/`` vs ids).
            routes.sort(key=lambda item: item[1].template.count("{"))

    def _add(self, op: Operation) -> None:
        self.by_id[op.operation_id] = op
        key = (op.method, op.template.count("/"))
        self._routes.setdefault(key, []).append((_template_re(op.template), op))

    @staticmethod
    def split_version(path: str) -> tuple[str | None, str]:
        """(``latest``/``v4``/... or None, the path without that prefix)."""
        match = _VERSION_RE.match(path)
        if not match:
            return None, path
        return match.group(1), match.group(2) or "/"

    def match(self, method: str, bare_path: str) -> Match | None:
        """The operation a prefix-less path names, or None."""
        path = bare_path if bare_path.endswith("/") else bare_path + "/"
        for pattern, op in self._routes.get((method, path.count("/")), ()):
            found = pattern.match(path)
            if found:
                return Match(op, found.groupdict())
        return None

    def path_exists(self, bare_path: str) -> bool:
        """True when some method serves this path."""
        return any(self.match(m, bare_path) for m in ("GET", "POST", "PUT", "DELETE"))


class SpecDocuments:
    """The spec files re-pointed at one emulator, serialised once."""

    def __init__(self, table: OperationTable, base_url: str) -> None:
        self._table = table
        self._base_url = base_url
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}

    def swagger(self, prefix: str) -> bytes:
        """``swagger.json`` with host, basePath, schemes and SSO URL rewritten."""
        with self._lock:
            if prefix not in self._cache:
                doc = copy.deepcopy(self._table.swagger)
                doc["host"] = self._base_url.split("://", 1)[1]
                doc["basePath"] = f"/{prefix}"
                doc["schemes"] = [self._base_url.split("://", 1)[0]]
                evesso = doc["securityDefinitions"]["evesso"]
                evesso["authorizationUrl"] = f"{self._base_url}/v2/oauth/authorize"
                self._cache[prefix] = json.dumps(doc).encode("utf-8")
            return self._cache[prefix]

    def openapi(self) -> bytes:
        """The OpenAPI sample with ``servers`` pointed at the emulator."""
        with self._lock:
            if "openapi" not in self._cache:
                doc = copy.deepcopy(self._table.openapi)
                doc["servers"] = [{"url": self._base_url}]
                self._cache["openapi"] = json.dumps(doc).encode("utf-8")
            return self._cache["openapi"]

    def live(
        self,
        openapi_version: str,
        dates: tuple[str, ...],
        rate_limit: Callable[[str], tuple[str, str] | None],
    ) -> bytes:
        """Today's full OpenAPI spec (see :mod:`.livespec`), serialised once."""
        key = f"live:{openapi_version}:{','.join(dates)}"
        with self._lock:
            if key not in self._cache:
                doc = live_openapi(
                    _converted_spec(),
                    self._table.openapi,
                    base_url=self._base_url,
                    dates=dates,
                    openapi_version=openapi_version,
                    rate_limit=rate_limit,
                    cache_age=self._cache_age,
                )
                self._cache[key] = json.dumps(doc).encode("utf-8")
            return self._cache[key]

    def _cache_age(self, operation_id: str) -> int | None:
        op = self._table.by_id.get(operation_id)
        return op.cached_seconds if op is not None else None


@functools.lru_cache(maxsize=1)
def _converted_spec() -> dict[str, Any]:
    specs = resources.files("worker").joinpath("esi", "specs")
    return json.loads(specs.joinpath("swagger-openapi3.json").read_text("utf-8"))


@functools.lru_cache(maxsize=1)
def load_operation_table() -> OperationTable:
    """The bundled specs parsed once per process (read-only afterwards)."""
    # Through the parent package: importing ``worker.esi`` would pull in bravado.
    specs = resources.files("worker").joinpath("esi", "specs")
    swagger = json.loads(specs.joinpath("swagger.json").read_text("utf-8"))
    openapi = json.loads(specs.joinpath("openapi-sample.json").read_text("utf-8"))
    from . import planner  # it builds on Operation, defined here

    return OperationTable(swagger, openapi, (planner.operation(),))


def _operation(
    swagger: dict[str, Any],
    template: str,
    method: str,
    spec: dict[str, Any],
    rate_limit: tuple[str, int, float] | None,
) -> Operation:
    params = [_resolve(swagger, p) for p in spec.get("parameters", ())]
    names = {p["name"] for p in params}
    security = spec.get("security") or [{}]
    scopes = security[0].get("evesso") or [None]
    cached = spec.get("x-cached-seconds")
    if cached is None:
        found = _CACHED_RE.search(spec.get("description", ""))
        cached = int(found.group(1)) if found else None
    int_params = frozenset(
        p["name"]
        for p in params
        if p.get("in") == "path" and p.get("type") == "integer"
    )
    return Operation(
        spec["operationId"],
        method,
        template,
        scopes[0],
        "page" in names,
        "language" in names,
        cached,
        int_params,
        rate_limit,
        tuple(spec.get("x-required-roles") or ()),
    )


def _resolve(swagger: dict[str, Any], param: dict[str, Any]) -> dict[str, Any]:
    ref = param.get("$ref")
    if not ref:
        return param
    return swagger["parameters"][ref.rsplit("/", 1)[1]]


def _template_re(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{pattern}$")


def _openapi_rate_limits(openapi: dict[str, Any]) -> dict[str, tuple[str, int, float]]:
    """``x-rate-limit`` of the OpenAPI sample, keyed by its (slash-less) path."""
    out = {}
    for path, methods in openapi.get("paths", {}).items():
        for spec in methods.values():
            limit = spec.get("x-rate-limit") if isinstance(spec, dict) else None
            if limit:
                tokens, window_s = parse_limit(
                    f"{limit['max-tokens']}/{limit['window-size']}"
                )
                out[path.rstrip("/")] = (limit["group"], tokens, window_s)
    return out
