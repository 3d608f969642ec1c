"""What a run did, counted while it runs: pages, items, ESI calls, cache hits.

The counter of the current run lives in a context variable set by
``execute_job``, so the ESI layer can count without being handed the run:
its HTTP client counts every request it sends (failures and retries too,
and for any client, ``token.get_esi_client()`` included), and the run's
``ctx.esi`` counts the pages it read and those the cache answered.

``esi_calls`` is every call the run made: requests sent to ESI plus the
answers the cache gave without one. ``cache_hits`` are the latter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..httpdate import parse_http_date


@dataclass
class RunStats:
    """Counters of one run, recorded with it."""

    pages: int = 0
    items: int = 0
    esi_calls: int = 0
    cache_hits: int = 0
    expires: dt.datetime | None = None
    # Page threads of one call count at once.
    _lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def note_response(
        self, from_cache: bool, headers: Mapping[str, str] | None
    ) -> None:
        """Count one ESI call answered (one page) and when its data expires."""
        with self._lock:
            self.pages += 1
            self.esi_calls += 1
            self.cache_hits += int(from_cache)
            self._note_expiry(headers)

    def note_request(self, headers: Mapping[str, str] | None = None) -> None:
        """Count one request sent to ESI, whatever came of it (HTTP layer)."""
        with self._lock:
            self.esi_calls += 1
            self._note_expiry(headers)

    def note_page(self, from_cache: bool, headers: Mapping[str, str] | None) -> None:
        """Count one page read; a cache answer was a call that sent no request."""
        with self._lock:
            self.pages += 1
            self.esi_calls += int(from_cache)
            self.cache_hits += int(from_cache)
            self._note_expiry(headers)

    def _note_expiry(self, headers: Mapping[str, str] | None) -> None:
        expires = _expires(headers)
        if expires is not None and (self.expires is None or expires > self.expires):
            self.expires = expires


_current: ContextVar[RunStats | None] = ContextVar("esi_worker_run_stats", default=None)


def record_esi_call(from_cache: bool, headers: Mapping[str, str] | None = None) -> None:
    """Count one ESI call for the run in progress; does nothing outside a run.

    For calls made some other way than through the ESI client (which
    counts its own).
    """
    stats = _current.get()
    if stats is not None:
        stats.note_response(from_cache, headers)


def current_stats() -> RunStats | None:
    """The counters of the run in progress in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def counting(stats: RunStats) -> Iterator[RunStats]:
    """Make ``stats`` the counter of the current run inside the block."""
    token = _current.set(stats)
    try:
        yield stats
    finally:
        _current.reset(token)


def _expires(headers: Mapping[str, str] | None) -> dt.datetime | None:
    return parse_http_date((headers or {}).get("Expires"))
