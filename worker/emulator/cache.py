"""ESI's cache in front of the recordings: generations, cache headers, 304s.

ESI fills its cache on a miss and serves that copy until ``Expires``;
every page of one result shares ``Last-Modified``. The emulator mimics
this: the first request of a resource starts a generation at "now" that
lasts the route's lifetime, and later requests inside it see the same
``Last-Modified``/``Expires``/``ETag``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Hashable

from ..clock import Clock
from .messages import http_date

DEFAULT_LIFETIME_S = 300.0


class CacheGenerations:
    """The current generation (start, lifetime) of every resource served."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._generations: dict[Hashable, tuple[float, float]] = {}

    def clear(self) -> None:
        """Forget every generation: the next request of each starts one."""
        with self._lock:
            self._generations.clear()

    def current(self, key: Hashable, lifetime_s: float) -> tuple[float, float, float]:
        """(now, generation start, generation end) for ``key``, all whole seconds."""
        now = math.floor(self._clock.time())
        with self._lock:
            start, length = self._generations.get(key, (0.0, 0.0))
            if now >= start + length:
                start, length = float(now), float(math.ceil(lifetime_s))
                self._generations[key] = (start, length)
        return float(now), start, start + length


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
