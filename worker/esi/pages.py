"""Paged ESI answers: when X-Pages pages agree, and walking cursor routes.

ESI builds every page of one result from one cached snapshot, so the
pages of a consistent walk share ``Last-Modified`` and ``X-Pages``
(ESI.md 3.3, 3.8). When the snapshot expires mid-walk the pages disagree,
and a page revalidated with 304 may carry an older body than its freshly
fetched neighbours; both must be fetched again rather than mixed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .response import EsiResponse

log = logging.getLogger(__name__)

CURSOR_PARAMS = ("before", "after")


@dataclasses.dataclass(frozen=True)
class CursorPage:
    """Records of a cursor-paged route and the tokens to continue from.

    ``after`` is the token to poll with later for records changed since;
    ``before`` points at records older than the oldest returned.
    """

    records: list[Any]
    before: str | None
    after: str | None


def disagreement(responses: Sequence[EsiResponse]) -> str | None:
    """Why the pages are not one snapshot, or None when they agree.

    Beside headers that differ, a page that is gone (404) or empty without
    ``X-Pages`` means the snapshot shrank under the walk: past its last
    page ESI answers one or the other (ESI.md 3.8, unverified which).
    """
    promised = responses[0].headers.get("X-Pages") if responses else None
    for number, response in enumerate(responses[1:], start=2):
        if response.status_code == 404:
            return f"page {number} is gone (404) though X-Pages was {promised}"
        if response.headers.get("X-Pages") is None and response.looks_empty():
            return f"page {number} came back empty without X-Pages"
    for header in ("X-Pages", "Last-Modified"):
        seen = {r.headers.get(header) for r in responses}
        seen.discard(None)
        if len(seen) > 1:
            values = sorted(str(value) for value in seen)
            return f"{header} differs between pages ({', '.join(values)})"
    return None


def stale_pages(responses: Sequence[EsiResponse]) -> list[int]:
    """Indexes of pages revalidated with 304 beside pages ESI sent anew.

    A 304 says that page's ETag still matches; its stored body may still
    come from before neighbours that changed, so it is fetched again.
    """
    fresh = any(not (r.from_cache or r.not_modified) for r in responses)
    if not fresh:
        return []
    return [i for i, r in enumerate(responses) if r.not_modified]


def is_cursor_paged(params: Sequence[str]) -> bool:
    """Whether an operation takes ``before``/``after`` cursor tokens."""
    return all(name in params for name in CURSOR_PARAMS)


def walk_cursor(
    fetch: Callable[[dict[str, Any]], Any],
    *,
    after: str | None,
    max_pages: int,
) -> CursorPage:
    """Every record from the cursor route behind ``fetch``, oldest first.

    With no ``after`` token the newest records come first and ``before`` is
    walked back until a page is empty (a backfill); with one, ``after`` is
    walked forward until a page is empty (a poll for changes).

    :param fetch: sends the request with the given cursor parameters and
        returns the decoded body.
    """
    if after is not None:
        return _walk_forward(fetch, after, max_pages)

    body = fetch({})
    records, cursor = _split(body)
    pages: list[list[Any]] = [records]
    newest, before = cursor.get("after"), cursor.get("before")
    for _ in range(max_pages - 1):
        if not records or before is None:
            break
        records, cursor = _split(fetch({"before": before}))
        if records:
            pages.insert(0, records)
        before = cursor.get("before", before)
    return CursorPage([r for page in pages for r in page], before, newest)


def _walk_forward(
    fetch: Callable[[dict[str, Any]], Any], after: str, max_pages: int
) -> CursorPage:
    collected: list[Any] = []
    before = None
    for _ in range(max_pages):
        records, cursor = _split(fetch({"after": after}))
        if before is None:
            before = cursor.get("before")
        after = cursor.get("after") or after
        if not records:
            break
        collected.extend(records)
    return CursorPage(collected, before, after)


def _split(body: Any) -> tuple[list[Any], dict[str, Any]]:
    """(records, cursor) of a cursor page; the records key varies by route."""
    if not isinstance(body, dict):
        return (list(body) if isinstance(body, list) else []), {}
    cursor = body.get("cursor") or {}
    lists = [v for k, v in body.items() if k != "cursor" and isinstance(v, list)]
    return (lists[0] if lists else []), cursor
