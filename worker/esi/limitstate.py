"""The documents the ESI limiter keeps, and what ESI's headers say about them.

Three kinds of JSON object live in the limiter's store (ESI.md 3.6, 3.7):

* ``errors``: ESI's error budget as last told (``remain``, ``reset_at``),
  the requests in flight, and the errors seen without budget headers
  (bucket-limited routes send none, yet their errors may count).
* ``op:<operation>``: the rate-limit group ESI named for an operation
  (learned from its answers, so every process knows it), the one request
  allowed while the group is unknown, and a block after a game-side 429.
* ``bucket:<group>:<caller>``: the tokens spent in the floating window.

A shared store may hold anything: every field read here is checked and a
bad one replaced by its default, so one bad write never disables the
limiter; ``bad`` tells the caller to write the repaired document back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..httpdate import parse_http_date

State = dict[str, Any]

RESERVED_COST = 5
"""Tokens held per request: a 4xx costs 5, the most any answer costs (ESI.md 3.7)."""
ERROR_WINDOW_S = 60.0
"""ESI's error window; errors seen without budget headers count for this long."""
RESET_SLACK_S = 1.0
"""Added to ``Retry-After`` and the budget reset: ESI may round either down."""
EXPIRY_SLACK_S = 0.5
"""Past the window, before a settled cost counts as returned (costs are
timed at the answer, which ESI charged no later)."""
IN_FLIGHT_STALE_S = 120.0
MAX_BACKOFF_S = 60.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A rate-limit group as the spec or ESI's headers describe it."""

    group: str
    max_tokens: int
    window_s: float

    @classmethod
    def parse(cls, group: str, limit: str) -> Bucket | None:
        """``("status", "600/15m")`` -> a bucket; None if unreadable."""
        tokens, _, window = str(limit).partition("/")
        try:
            size, unit = float(window[:-1]), _UNITS[window[-1:]]
            bucket = cls(str(group), int(tokens), size * unit)
        except (ValueError, KeyError):
            return None
        if bucket.max_tokens < 1 or not 0 < bucket.window_s < math.inf:
            return None
        return bucket


@dataclasses.dataclass
class Read:
    """A document as read: the checked state, and whether it needed repair."""

    state: State
    bad: bool = False


# -- reading the documents -----------------------------------------------------


def read_errors(raw: Mapping[str, Any], now: float) -> Read:
    """The error document, its window rolled over once ESI's reset has passed."""
    read = Read({}, bad=bool(raw.get("_unreadable")))
    remain = _field(read, raw, "remain", _count)
    reset_at = _field(read, raw, "reset_at", _instant)
    seen = [t for t in _items(read, raw, "seen", _instant) if now - t < ERROR_WINDOW_S]
    if reset_at is not None and now >= reset_at:
        # Errors before the reset belong to the window that ended.
        seen = [t for t in seen if t >= reset_at - RESET_SLACK_S]
        remain, reset_at = None, None
    in_flight = _field(read, raw, "in_flight", _stamps) or {}
    read.state = {
        "remain": remain,
        "reset_at": reset_at,
        "seen": seen,
        "in_flight": {
            k: v for k, v in in_flight.items() if now - v < IN_FLIGHT_STALE_S
        },
    }
    return read


def read_operation(raw: Mapping[str, Any], now: float) -> Read:
    """The operation document: its learned group, probe and game-side block."""
    read = Read({}, bad=bool(raw.get("_unreadable")))
    limit = _field(read, raw, "limit", _limit)
    group = _field(read, raw, "group", _text)
    learned = _field(read, raw, "learned", _flag) or False
    probe = _field(read, raw, "probe", _probe)
    if probe is not None and now - probe[1] >= IN_FLIGHT_STALE_S:
        probe = None
    read.state = {
        "learned": learned and (group is None or limit is not None),
        "group": group,
        "limit": limit,
        "probe": probe,
        "blocked_until": _field(read, raw, "blocked_until", _instant) or 0.0,
        "strikes": _field(read, raw, "strikes", _count) or 0,
    }
    return read


def read_bucket(raw: Mapping[str, Any], now: float, bucket: Bucket) -> Read:
    """The bucket document: costs still in the floating window, any block."""
    read = Read({}, bad=bool(raw.get("_unreadable")))
    limit = _field(read, raw, "limit", _limit)
    window_s = limit[1] if limit else bucket.window_s
    horizon = now - window_s - EXPIRY_SLACK_S
    entries = []
    for entry in _items(read, raw, "entries", _entry):
        at, _cost, request_id = entry
        # A reservation still in flight stays until it is settled.
        pending = request_id is not None and now - at < IN_FLIGHT_STALE_S
        if pending or at > horizon:
            entries.append(entry)
    read.state = {
        "entries": entries,
        "blocked_until": _field(read, raw, "blocked_until", _instant) or 0.0,
    }
    if limit:
        read.state["limit"] = limit
    return read


def operation_bucket(state: State) -> Bucket | None:
    """The bucket an operation document names (``learned`` must be true)."""
    if state["group"] is None or state["limit"] is None:
        return None
    tokens, window_s = state["limit"]
    return Bucket(state["group"], tokens, window_s)


def effective(state: State, bucket: Bucket) -> Bucket:
    """``bucket`` as ESI's headers last described it to any process."""
    limit = state.get("limit")
    if not limit:
        return bucket
    return Bucket(bucket.group, int(limit[0]), float(limit[1]))


def spent(state: State) -> int:
    """Tokens counted against a bucket: settled costs and reservations."""
    return sum(cost for _at, cost, _rid in state["entries"])


# -- what the headers say --------------------------------------------------------


def bucket_from_headers(headers: Mapping[str, str]) -> Bucket | None:
    """The bucket named by ``X-Ratelimit-Group``/``-Limit``, if both are readable."""
    group, limit = headers.get("X-Ratelimit-Group"), headers.get("X-Ratelimit-Limit")
    if not group or not limit:
        return None
    return Bucket.parse(group, limit)


def error_headers(headers: Mapping[str, str]) -> tuple[int, float] | None:
    """(errors left, seconds to the reset) from ``X-ESI-Error-Limit-*``."""
    remain = number(headers.get("X-ESI-Error-Limit-Remain"))
    reset_s = number(headers.get("X-ESI-Error-Limit-Reset"))
    if remain is None or reset_s is None:
        return None
    return max(0, int(remain)), max(0.0, reset_s)


def answer_cost(headers: Mapping[str, str], status: int | None) -> int:
    """Tokens an answer cost: ``X-Ratelimit-Used``, else ESI's price of its class."""
    used = number(headers.get("X-Ratelimit-Used"))
    if used is not None and used >= 0:
        return math.ceil(used)
    if status is None:
        return RESERVED_COST  # ESI may have answered; we never saw what
    if status == 429 or status >= 500:
        return 0
    if status >= 400:
        return 5
    return 1 if status >= 300 else 2


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date (RFC 9110 10.2.3).

    A date is counted from the answer's own ``Date`` when it has one, so a
    skewed local clock does not stretch or cut the wait.
    """
    value = headers.get("Retry-After")
    if value is None:
        return None
    seconds = number(value)
    if seconds is not None:
        return max(0.0, seconds)
    until = http_date(value)
    if until is None:
        return None
    served = http_date(headers.get("Date"))
    return max(0.0, until - (served if served is not None else now))


def backoff_s(strikes: int) -> float:
    """The wait after ``strikes`` 429s in a row that named no wait."""
    return min(MAX_BACKOFF_S, 2.0 ** max(0, strikes - 1))


def number(value: Any) -> float | None:
    """A finite number from a header or a stored field, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def http_date(value: str | None) -> float | None:
    """An HTTP date as a Unix time, else None."""
    parsed = parse_http_date(value)
    return parsed.timestamp() if parsed is not None else None


# -- field checks: each returns the value, or raises ValueError -----------------


def _field(read: Read, raw: Mapping[str, Any], name: str, check: Any) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    try:
        return check(value)
    except (TypeError, ValueError):
        read.bad = True
        return None


def _items(read: Read, raw: Mapping[str, Any], name: str, check: Any) -> list[Any]:
    """The good items of a list field; a bad item is dropped, not the list."""
    value = raw.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        read.bad = True
        return []
    out = []
    for item in value:
        try:
            out.append(check(item))
        except (TypeError, ValueError):
            read.bad = True
    return out


def _count(value: Any) -> int:
    found = number(value)
    if found is None or found < 0:
        raise ValueError(value)
    return int(found)


def _instant(value: Any) -> float:
    found = number(value)
    if found is None:
        raise ValueError(value)
    return found


def _stamps(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(value)
    return {str(k): _instant(v) for k, v in value.items()}


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(value)
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _limit(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(value)
    tokens, window_s = _count(value[0]), _instant(value[1])
    if tokens < 1 or window_s <= 0:
        raise ValueError(value)
    return [tokens, window_s]


def _probe(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(value)
    return [_text(value[0]), _instant(value[1])]


def _entry(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise ValueError(value)
    request_id = value[2] if len(value) == 3 else None
    if request_id is not None:
        request_id = _text(request_id)
    return [_instant(value[0]), _count(value[1]), request_id]
