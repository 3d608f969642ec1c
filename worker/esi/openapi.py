"""OpenAPI 3.0/3.1 specs turned into the Swagger 2.0 form bravado reads.

ESI publishes OpenAPI 3.1 since 2025 (ESI.md 3.1b, 4.2); bravado only
reads Swagger 2.0. The conversion keeps what the client uses: paths,
parameters (header ones included), schemas with their ``$ref`` rewritten,
security scopes, response headers and the ``x-`` extensions of ESI
(``x-rate-limit``, ``x-cache-age``). Operation ids become the snake_case
names django-esi users call; the PascalCase ones stay reachable as aliases.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import SpecError

# Sent by the HTTP client itself; kept optional so callers need not pass them.
ALIAS_KEY = "x-esi-worker-alias-of"
CLIENT_HEADERS = frozenset({"x-compatibility-date", "x-tenant"})
_SCHEMA_KEYS = (
    "type",
    "format",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
)
_UNTYPED = "x-esi-worker-untyped"
_UPPER_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_REF_PREFIXES = (
    ("#/components/schemas/", "#/definitions/"),
    ("#/components/parameters/", "#/parameters/"),
    ("#/components/responses/", "#/responses/"),
)


def is_openapi(document: Any) -> bool:
    """Whether ``document`` is an OpenAPI 3 spec (rather than Swagger 2.0)."""
    return isinstance(document, dict) and str(document.get("openapi", "")).startswith(
        "3."
    )


def snake_case(operation_id: str) -> str:
    """``GetCharactersCharacterIdAssets`` -> ``get_characters_character_id_assets``."""
    return _UPPER_RE.sub("_", operation_id).lower()


def pascal_case(operation_id: str) -> str:
    """``get_characters_character_id_assets`` -> ``GetCharactersCharacterIdAssets``."""
    return "".join(part[:1].upper() + part[1:] for part in operation_id.split("_"))


def to_swagger(document: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The Swagger 2.0 equivalent of an OpenAPI 3.0/3.1 ``document``.

    :param source: names the spec in errors.
    :raises SpecError: the document lacks ``paths`` or a part cannot be read.
    """
    if not isinstance(document.get("paths"), dict) or not document["paths"]:
        raise SpecError(
            f"ESI spec from {source} (OpenAPI {document.get('openapi')}) is not "
            "usable: it has no 'paths'",
            source=source,
        )
    doc = copy.deepcopy(document)
    components = doc.get("components") or {}
    try:
        converter = _Converter(components)
        swagger = converter.document(doc)
    except (LookupError, TypeError, AttributeError, ValueError) as exc:
        raise SpecError(
            f"ESI spec from {source} could not be converted from OpenAPI "
            f"{doc.get('openapi')}: {type(exc).__name__}: {exc}",
            source=source,
        ) from exc
    return swagger


class _Converter:
    """Walks one OpenAPI document; holds its components for dereferencing."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def document(self, doc: dict[str, Any]) -> dict[str, Any]:
        servers = doc.get("servers") or [{"url": "https://esi.evetech.net"}]
        url = urlsplit(str(servers[0].get("url", "")))
        swagger: dict[str, Any] = {
            "swagger": "2.0",
            "info": doc.get("info") or {"title": "ESI", "version": "unknown"},
            "host": url.netloc or "esi.evetech.net",
            "basePath": url.path or "/",
            "schemes": [url.scheme or "https"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "definitions": {
                name: _rewrite_refs(_plain_schema(schema))
                for name, schema in (self.components.get("schemas") or {}).items()
            },
            "parameters": {
                name: self.parameter(param)
                for name, param in (self.components.get("parameters") or {}).items()
            },
            "securityDefinitions": self.security_definitions(),
            "paths": {},
        }
        if "tags" in doc:
            swagger["tags"] = doc["tags"]
        if "security" in doc:
            # Inherited by every operation that names none of its own: kept,
            # or those operations would turn public (no scope, no token).
            swagger["security"] = doc["security"]

        for path, item in doc["paths"].items():
            try:
                swagger["paths"][path] = self.path_item(item)
            except LookupError as exc:
                where = "/paths/" + path.replace("~", "~0").replace("/", "~1")
                found = exc.args[0] if exc.args else exc
                detail = f"no {found!r}" if type(exc) is KeyError else found
                raise LookupError(f"at {where}: {detail}") from exc
        return swagger

    def path_item(self, item: dict[str, Any]) -> dict[str, Any]:
        shared = item.get("parameters") or []
        out: dict[str, Any] = {}
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch", "head", "options"):
                out[method] = self.operation(op, shared)
        return out

    def operation(self, op: dict[str, Any], shared: list[Any]) -> dict[str, Any]:
        original_id = str(op.get("operationId", ""))
        out = {k: v for k, v in op.items() if k.startswith("x-")}
        out.update(
            {
                k: op[k]
                for k in ("summary", "description", "tags", "deprecated")
                if k in op
            }
        )
        out["operationId"] = snake_case(original_id)
        if original_id != out["operationId"]:
            out["x-operation-alias"] = original_id

        params = [self.parameter(p) for p in [*shared, *op.get("parameters", [])]]
        params = [p for p in params if p is not None]
        params += _language_alias(params)
        if "requestBody" in op:
            params.append(self.body(op["requestBody"], out["operationId"]))
        out["parameters"] = params
        out["responses"] = {
            str(code): self.response(resp)
            for code, resp in (op.get("responses") or {}).items()
        }
        if "security" in op:
            out["security"] = op["security"]
        return out

    def lookup(self, item: dict[str, Any], kind: str) -> dict[str, Any]:
        """``item``, or the component its ``$ref`` names (chains followed).

        :raises LookupError: the reference points nowhere.
        """
        for _ in range(32):
            ref = item.get("$ref") if isinstance(item, dict) else None
            if not isinstance(ref, str):
                return item
            name = ref.rsplit("/", 1)[-1]
            found = (self.components.get(kind) or {}).get(name)
            if found is None:
                raise LookupError(f"$ref {ref!r} points nowhere")
            if not isinstance(found, dict):
                raise TypeError(f"$ref {ref!r} points at a {type(found).__name__}")
            item = found
        raise LookupError(f"$ref {ref!r} is a loop of references")

    def parameter(self, param: dict[str, Any]) -> Any:
        param = self.lookup(param, "parameters")
        if param.get("in") == "cookie":
            return None
        out: dict[str, Any] = {
            k: param[k] for k in ("name", "in", "description", "required") if k in param
        }
        out.update(self.flat_schema(param.get("schema") or {"type": "string"}))
        if out["in"] == "header" and out["name"].lower() in CLIENT_HEADERS:
            out["required"] = False
            out.pop("enum", None)
        if out.get("type") == "array":
            out["collectionFormat"] = "multi" if param.get("explode") else "csv"
        if out["in"] == "path":
            out["required"] = True
        return out

    def body(self, request_body: dict[str, Any], operation_id: str) -> dict[str, Any]:
        request_body = self.lookup(request_body, "requestBodies")
        content = request_body.get("content") or {}
        media: dict[str, Any] = content.get("application/json") or next(
            iter(content.values()), {}
        )
        schema = media.get("schema") or {}
        return {
            "name": _body_name(request_body, schema, operation_id),
            "in": "body",
            "required": bool(request_body.get("required")),
            "description": request_body.get("description", ""),
            "schema": _rewrite_refs(_plain_schema(schema)),
        }

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        response = self.lookup(response, "responses")
        out: dict[str, Any] = {"description": response.get("description", "")}
        content = response.get("content") or {}
        media = content.get("application/json") or next(iter(content.values()), None)
        if media and "schema" in media:
            out["schema"] = _rewrite_refs(_plain_schema(media["schema"]))

        headers = {}
        for name, header in (response.get("headers") or {}).items():
            header = self.lookup(header, "headers")
            flat = self.flat_schema(header.get("schema") or {"type": "string"})
            headers[name] = {"description": header.get("description", ""), **flat}
        if headers:
            out["headers"] = headers
        return out

    def flat_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A non-body parameter's schema as Swagger 2.0 parameter fields.

        Swagger 2.0 parameters take one ``type``: ``anyOf``/``oneOf`` (how
        3.1 writes "integer or null") are merged into it, or, when the
        alternatives differ in type, left untyped rather than mistyped.
        """
        schema = _plain_schema(self.lookup(schema, "schemas"))
        merged = self.alternatives(schema)
        out = {k: merged[k] for k in _SCHEMA_KEYS if k in merged}
        if merged.get("x-nullable"):
            out["x-nullable"] = True
        if "type" not in merged and not merged.get(_UNTYPED):
            out["type"] = "string"
        if "items" in out:
            out["items"] = self.flat_schema(out["items"])
        return out

    def alternatives(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its ``anyOf``/``oneOf`` folded in, nulls as x-nullable."""
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if not isinstance(options, list):
                continue
            resolved = [
                self.alternatives(_plain_schema(self.lookup(o, "schemas")))
                for o in options
                if isinstance(o, dict)
            ]
            real = [o for o in resolved if o.get("type") != "null"]
            outer = {k: v for k, v in schema.items() if k != key}
            if len(real) == 1:
                outer = {**real[0], **outer}
            else:
                kinds = {o.get("type") for o in real}
                if len(kinds) == 1 and None not in kinds:
                    outer.setdefault("type", kinds.pop())
                elif "type" not in outer:
                    outer[_UNTYPED] = True
            if len(real) < len(resolved) or any(o.get("x-nullable") for o in real):
                outer["x-nullable"] = True
            schema = outer
        return schema

    def security_definitions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, scheme in (self.components.get("securitySchemes") or {}).items():
            if scheme.get("type") != "oauth2":
                continue
            flows: dict[str, Any] = scheme.get("flows") or {}
            flow_name = next(iter(flows), "implicit")
            flow: dict[str, Any] = flows.get(flow_name) or {}
            swagger_flow = {"authorizationCode": "accessCode"}.get(flow_name, flow_name)
            definition: dict[str, Any] = {
                "type": "oauth2",
                "flow": swagger_flow,
                "scopes": flow.get("scopes") or {},
            }
            for key in ("authorizationUrl", "tokenUrl"):
                if key in flow:
                    definition[key] = flow[key]
            out[name] = definition
        return out


def _language_alias(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``language`` parameter beside ``Accept-Language``, as django-esi calls it.

    Today's spec has only the header; callers written for the Swagger era
    pass ``language=``. The client sends it as the header as well.
    """
    names = {p["name"].lower() for p in params}
    header = next((p for p in params if p["name"].lower() == "accept-language"), None)
    if header is None or "language" in names:
        return []
    alias = {k: v for k, v in header.items() if k not in ("name", "in", "required")}
    return [{**alias, "name": "language", "in": "query", ALIAS_KEY: header["name"]}]


def _body_name(request_body: dict[str, Any], schema: dict[str, Any], op_id: str) -> str:
    """The keyword the body is passed as: the converter's hint, else ``body``."""
    named = request_body.get("x-codegen-request-body-name") or request_body.get(
        "x-body-name"
    )
    if named:
        return str(named)
    # swagger2openapi keeps the Swagger body parameter's name only inside the
    # schema title it was generated with: "<operation id>_<name>".
    title = str(schema.get("title", ""))
    if title.startswith(op_id + "_") and len(title) > len(op_id) + 1:
        return title[len(op_id) + 1 :]
    return "body"


def _plain_schema(schema: Any) -> Any:
    """OpenAPI 3.1/3.0 schema idioms turned into Swagger 2.0 ones, recursively."""
    if isinstance(schema, list):
        return [_plain_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _plain_schema(v) for k, v in schema.items()}
    kind = out.get("type")
    if isinstance(kind, list):
        # 3.1 writes nullable as a type list: ["string", "null"].
        kinds = [k for k in kind if k != "null"]
        out["type"] = kinds[0] if len(kinds) == 1 else kinds or "string"
        if "null" in kind:
            out["x-nullable"] = True
    if out.pop("nullable", False):
        out["x-nullable"] = True
    for bound, edge in (
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ):
        if isinstance(out.get(bound), int | float) and not isinstance(
            out[bound], bool
        ):
            out[edge], out[bound] = out[bound], True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    out.pop("examples", None)
    return out


def _rewrite_refs(value: Any) -> Any:
    """Every ``#/components/...`` reference pointed at its Swagger 2.0 home."""
    if isinstance(value, list):
        return [_rewrite_refs(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key == "$ref" and isinstance(item, str):
            for old, new in _REF_PREFIXES:
                if item.startswith(old):
                    item = new + item[len(old) :]
            out[key] = item
        else:
            out[key] = _rewrite_refs(item)
    return out
