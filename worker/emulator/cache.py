"""ESI's cache in front of the recordings: generations, cache headers, 304s.

ESI fills its cache on a miss and serves that copy until ``Expires``;
every page of one result shares ``Last-Modified``. The emulator mimics
this: the first request of a resource starts a generation at "now" that
lasts the route's lifetime, and later requests inside it see the same
``Last-Modified``/``Expires``/``ETag``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import threading
from collections.abc import Hashable

from ..clock import Clock
from .messages import http_date

DEFAULT_LIFETIME_S = 300.0


@dataclasses.dataclass(frozen=True)
class Generation:
    """One cache generation of a resource: when it began and ends, its number."""

    now: float
    start: float
    end: float
    number: int


class CacheGenerations:
    """The current generation (start, lifetime, number) of every resource served."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._generations: dict[Hashable, tuple[float, float, int]] = {}
        self._served: dict[Hashable, int] = {}
        self._bumped: dict[Hashable, int] = {}

    def clear(self) -> None:
        """Forget every generation: the next request of each starts one."""
        with self._lock:
            self._generations.clear()
            self._served.clear()
            self._bumped.clear()

    def current(self, key: Hashable, lifetime_s: float) -> Generation:
        """The generation of ``key`` in force now, starting one if it ended."""
        now = math.floor(self._clock.time())
        with self._lock:
            start, length, number = self._generations.get(key, (0.0, 0.0, -1))
            if now >= start + length or length == 0:
                # A new generation never shares its Last-Modified second with
                # the one before, even when a bump ends that one early.
                start = float(max(now, start + 1))
                length = float(math.ceil(lifetime_s))
                number += 1
                self._generations[key] = (start, length, number)
                self._served[key] = 0
        return Generation(float(now), start, start + length, number)

    def served(self, key: Hashable, bump_after: int | None, bumps: int = 1) -> None:
        """Count an answer of ``key``; end its generation after ``bump_after``.

        At most ``bumps`` generations of ``key`` are ended this way.
        """
        with self._lock:
            self._served[key] = self._served.get(key, 0) + 1
            done = self._bumped.get(key, 0)
            if bump_after is None or done >= bumps:
                return
            if self._served[key] >= bump_after:
                start, _length, number = self._generations[key]
                self._generations[key] = (start, 0.0, number)
                self._bumped[key] = done + 1


def cache_headers(
    now: float, start: float, end: float, etag: str, private: bool
) -> list[tuple[str, str]]:
    """The headers a cacheable answer (200 or 304) carries."""
    scope = "private" if private else "public"
    max_age = max(0, int(end - now))
    return [
        ("Date", http_date(now)),
        ("Cache-Control", f"{scope}, max-age={max_age}"),
        ("ETag", etag),
        ("Expires", http_date(end)),
        ("Last-Modified", http_date(start)),
    ]


def make_etag(recorded: str | None, body: bytes, generation_start: float) -> str:
    """The recorded ETag, else a hash of the body and generation."""
    if recorded:
        return recorded
    return _digest(body, generation_start)


@functools.lru_cache(maxsize=4096)
def _digest(body: bytes, generation_start: float) -> str:
    # bytes cache their own hash, so a hit costs no pass over a large page.
    digest = hashlib.sha256(body + str(generation_start).encode("ascii")).hexdigest()
    return f'"{digest[:56]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """True when an ``If-None-Match`` value names ``etag`` (weak or strong)."""
    if not if_none_match:
        return False
    # Some clients drop the quotes; compare the opaque part only.
    wanted = etag.removeprefix("W/").strip('"')
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"') == wanted:
            return True
    return False


def mutate(body: bytes, generation: int, stable: bool) -> tuple[bytes, str]:
    """``body`` with every object stamped ``emulator_generation``, and its ETag.

    A stable page keeps the ETag of its unstamped body across generations,
    so it answers 304 to an old ETag although its stamp moved on: the trap
    of one page "unchanged" while the pages around it changed.
    """
    data = json.loads(body) if body else None
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict):
            item["emulator_generation"] = generation
    stamped = json.dumps(data, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(body if stable else stamped).hexdigest()
    return stamped, f'"{digest[:56]}"'
