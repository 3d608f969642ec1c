"""ESI answers: the response object callers see, decoding and error mapping."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import requests
from bravado_core.operation import Operation
from bravado_core.response import IncomingResponse
from bravado_core.unmarshal import unmarshal_schema_object
from requests.structures import CaseInsensitiveDict

try:  # about twice as fast on a page of 1,000 orders, the bulk of the work
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

from ..errors import ErrorLimitedError, ESIError, HTTPError, RateLimitedError
from .cache import CachedResponse
from .operations import facts, operation_name

log = logging.getLogger(__name__)

_BODY_IN_MESSAGE = 200


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
        return cls(
            entry.status,
            entry.headers,
            None,
            reason="OK",
            from_cache=not not_modified,
            not_modified=not_modified,
            body_text=entry.body,
        )

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
        body = self._body_text if self._body_text is not None else self.raw_bytes
        if orjson is not None and not kwargs:
            # orjson reads a str faster than bytes: it is valid UTF-8 already.
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ValueError(str(exc)) from None
        return json.loads(body, **kwargs)

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

    if getattr(operation.swagger_spec, "plain_json", False):
        # Plain JSON, as ESI sent it: bravado's per-item walk (date parsing,
        # format checks) costs ~80 us per market order, more than the fetch.
        return value
    try:
        return unmarshal_schema_object(operation.swagger_spec, schema, value)
    except Exception as exc:  # bravado-core's format converters raise freely
        raise ESIError(
            f"the answer of ESI to {operation.operation_id} does not fit its "
            f"schema: {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc


def error_for(response: EsiResponse, operation: Operation | None) -> HTTPError:
    """The error a non-2xx answer becomes (420, 429 and the rest)."""
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
            retry_after_s=_seconds(response.headers.get("Retry-After")),
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
