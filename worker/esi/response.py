"""ESI answers: the response object callers see, decoding and error mapping."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import requests
from bravado_core.operation import Operation
from bravado_core.response import IncomingResponse
from requests.structures import CaseInsensitiveDict

try:  # about twice as fast on a page of 1,000 orders, the bulk of the work
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

from ..errors import ErrorLimitedError, ESIError, HTTPError, RateLimitedError
from .cache import CachedResponse
from .limitstate import retry_after_s
from .operations import facts, operation_name

log = logging.getLogger(__name__)

_BODY_IN_MESSAGE = 200
_NOT_PARSED = object()
_SHAPES: dict[Any, type] = {"object": dict, "array": list}


class EsiResponse(IncomingResponse):
    """One ESI answer, from the network or from the cache.

    ``from_cache`` is true when no request was sent; ``not_modified`` when
    ESI answered 304 and the cached body stands in for the empty one.
    """

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str],
        raw_bytes: bytes | None,
        *,
        reason: str = "",
        from_cache: bool = False,
        not_modified: bool = False,
        body_text: str | None = None,
    ) -> None:
        self.status_code = status_code
        self._headers: Mapping[str, str] = headers
        self._raw_bytes = raw_bytes
        self._body_text = body_text
        self.reason = reason
        self.from_cache = from_cache
        self.not_modified = not_modified
        self.swagger_result: Any = None
        self._parsed: Any = _NOT_PARSED

    @classmethod
    def from_requests(cls, response: requests.Response) -> EsiResponse:
        """Copy what we need out of a requests response.

        The body of a streamed response is read here, in whole reads.
        """
        return cls(
            response.status_code,
            response.headers,
            b"".join(response.iter_content(chunk_size=None)),
            reason=response.reason or "",
        )

    @classmethod
    def from_cached(
        cls, entry: CachedResponse, *, not_modified: bool = False
    ) -> EsiResponse:
        """A response replaying a cache entry."""
        response = cls(
            entry.status,
            entry.headers,
            None,
            reason="OK",
            from_cache=not not_modified,
            not_modified=not_modified,
            body_text=entry.body,
        )
        parsed = entry.parsed()
        if parsed is not None:
            response._parsed = parsed  # checked on its way out of Redis
        return response

    # A cache hit is answered without looking at its headers or bytes most
    # of the time: both are built on first use, from the entry's own.

    @property  # type: ignore[override]
    def headers(self) -> CaseInsensitiveDict[str]:
        """The answer's headers, case-insensitive."""
        headers = self._headers
        if not isinstance(headers, CaseInsensitiveDict):
            headers = self._headers = CaseInsensitiveDict(headers)
        return headers

    @headers.setter
    def headers(self, value: Mapping[str, str]) -> None:
        self._headers = value

    @property  # type: ignore[override]
    def raw_bytes(self) -> bytes:
        """The body as sent by ESI."""
        raw = self._raw_bytes
        if raw is None:
            raw = self._raw_bytes = (self._body_text or "").encode("utf-8")
        return raw

    @raw_bytes.setter
    def raw_bytes(self, value: bytes) -> None:
        self._raw_bytes, self._body_text = value, None

    @property
    def text(self) -> str:  # type: ignore[override]
        if self._body_text is not None:
            return self._body_text
        return self.raw_bytes.decode("utf-8", errors="replace")

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON."""
        parsed, self._parsed = self._parsed, _NOT_PARSED
        if parsed is not _NOT_PARSED and not kwargs:
            return parsed
        body = self._body_text if self._body_text is not None else self.raw_bytes
        if orjson is not None and not kwargs:
            # orjson reads a str faster than bytes: it is valid UTF-8 already.
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ValueError(str(exc)) from None
        return json.loads(body, **kwargs)

    def looks_empty(self) -> bool:
        """Whether the body is empty or an empty JSON list (cheap on big ones)."""
        body = self._body_text if self._raw_bytes is None else self._raw_bytes
        if body is None:
            return True
        if len(body) > 16:
            return False
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return text.strip() in ("", "[]")

    @property
    def has_body(self) -> bool:
        """Whether any body came with the answer."""
        return bool(self._body_text if self._raw_bytes is None else self._raw_bytes)

    def __repr__(self) -> str:
        return (
            f"EsiResponse(status={self.status_code}, from_cache={self.from_cache}, "
            f"not_modified={self.not_modified})"
        )


def decode(response: EsiResponse, operation: Operation | None) -> Any:
    """The response body as the operation's schema describes it.

    :raises ESIError: the body is not the JSON the operation promises.
    """
    if operation is None:
        return response.json() if response.has_body else None
    schema = facts(operation).schema(operation, response.status_code)
    if schema is None:
        return None

    try:
        value = response.json()
    except ValueError:
        raise ESIError(
            f"ESI answered {response.status_code} to {operation.operation_id} "
            f"with a body that is not JSON (Content-Type "
            f"{response.headers.get('Content-Type', 'missing')!r}): "
            f"{_clip(response.text)!r}"
        ) from None

    shape = _SHAPES.get(schema.get("type")) if isinstance(schema, dict) else None
    if shape is not None and value is not None and not isinstance(value, shape):
        # What bravado refused too: an object where a list belongs, or the
        # reverse (a tampered cache entry, a route answering another shape).
        raise ESIError(
            f"the answer of ESI to {operation.operation_id} does not fit its "
            f"schema: a JSON {type(value).__name__} where a {schema['type']} belongs"
        )
    if getattr(operation.swagger_spec, "plain_json", False):
        return value  # esi_parse_formats off: dates stay ESI's text
    plan = facts(operation).plan(operation, response.status_code)
    if plan is None:
        return value
    try:
        return plan(value)
    except ValueError as exc:
        raise ESIError(
            f"the answer of ESI to {operation.operation_id} does not fit its "
            f"schema: {_clip(str(exc))}"
        ) from exc


def error_for(
    response: EsiResponse, operation: Operation | None, now: float | None = None
) -> HTTPError:
    """The error a non-2xx answer becomes (420, 429 and the rest).

    :param now: for a ``Retry-After`` given as a date without ``Date``.
    """
    name = operation_name(operation)
    status = response.status_code
    body = _error_body(response)
    headers = dict(response.headers)
    message = f"ESI answered {status} to {name}: {_clip(str(body))}"

    if status == 420:
        reset = _seconds(response.headers.get("X-ESI-Error-Limit-Reset"))
        return ErrorLimitedError(
            message, reset_s=reset, operation=name, body=body, headers=headers
        )
    if status == 429:
        return RateLimitedError(
            message,
            retry_after_s=retry_after_s(
                response.headers, time.time() if now is None else now
            ),
            group=response.headers.get("X-Ratelimit-Group"),
            operation=name,
            body=body,
            headers=headers,
        )
    return HTTPError(message, status=status, operation=name, body=body, headers=headers)


def _error_body(response: EsiResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        return _clip(response.text)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _clip(text: str) -> str:
    if len(text) <= _BODY_IN_MESSAGE:
        return text
    return text[:_BODY_IN_MESSAGE] + "..."
