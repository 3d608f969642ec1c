"""A synthetic cursor-paged route, shaped like ESI's Corporation Projects.

SYNTHETIC: no recording stands behind it. ESI documents cursor paging
(ESI.md 3.8): with no token the newest records come back; ``before``
walks to older ones until a page is empty; ``after`` returns records
changed since, so a client keeps the ``after`` token to poll later.
Records are ordered by ``last_modified``, newest last; tokens are opaque.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

from .messages import Request, Response, error_response, json_response

PATH_RE = re.compile(r"^/corporations/(?P<corporation_id>\d+)/projects/?$")
DEFAULT_LIMIT = 100
MAX_LIMIT = 100
_EPOCH_S = 1_750_000_000


def answer(request: Request, record_count: int) -> Response | None:
    """The answer to a cursor-route request, or None for any other path."""
    match = PATH_RE.match(request.path)
    if match is None or request.method != "GET":
        return None
    query = request.query
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
        before = _index(query.get("before"))
        after = _index(query.get("after"))
    except ValueError as exc:
        return error_response(400, str(exc))
    if not 1 <= limit <= MAX_LIMIT:
        return error_response(400, f"limit must be 1..{MAX_LIMIT}, got {limit}")
    if before is not None and after is not None:
        return error_response(400, "give before or after, not both")

    first, last = _window(record_count, limit, before, after)
    records = [_record(i) for i in range(first, last + 1)]
    cursor = {
        "before": _token(first if records else (before or first)),
        "after": _token(last if records else (after or last)),
    }
    body = {"cursor": cursor, "projects": records}
    return json_response(200, body, [("Cache-Control", "private, max-age=0")])


def _window(
    count: int, limit: int, before: int | None, after: int | None
) -> tuple[int, int]:
    """(first, last) record index to return; empty when first > last."""
    if after is not None:
        return after + 1, min(count, after + limit)
    top = count if before is None else min(count, before - 1)
    return max(1, top - limit + 1), top


def _record(index: int) -> dict[str, Any]:
    stamp = _EPOCH_S + index * 60
    when = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": 1000 + index, "name": f"Project {index}", "last_modified": when}


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(f"cursor:{index}".encode()).decode().rstrip("=")


def _index(token: str | None) -> int | None:
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.urlsafe_b64decode(padded.encode()).decode()
        kind, _, number = text.partition(":")
        if kind != "cursor":
            raise ValueError
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid cursor token {token!r}") from None
