"""What a run did, counted while it runs: pages, items, ESI calls, cache hits.

The counter of the current run lives in a context variable set by
``execute_job``, so the ESI layer can count without being handed the run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RunStats:
    """Counters of one run, recorded with it."""

    pages: int = 0
    items: int = 0
    esi_calls: int = 0
    cache_hits: int = 0
    expires: dt.datetime | None = None

    def note_response(
        self, from_cache: bool, headers: Mapping[str, str] | None
    ) -> None:
        """Count one ESI response (one page) and remember when its data expires."""
        self.pages += 1
        self.esi_calls += 1
        self.cache_hits += int(from_cache)
        expires = _expires(headers)
        if expires is not None and (self.expires is None or expires > self.expires):
            self.expires = expires


_current: ContextVar[RunStats | None] = ContextVar("esi_worker_run_stats", default=None)


def record_esi_call(from_cache: bool, headers: Mapping[str, str] | None = None) -> None:
    """Count one ESI call for the run in progress; does nothing outside a run."""
    stats = _current.get()
    if stats is not None:
        stats.note_response(from_cache, headers)


@contextlib.contextmanager
def counting(stats: RunStats) -> Iterator[RunStats]:
    """Make ``stats`` the counter of the current run inside the block."""
    token = _current.set(stats)
    try:
        yield stats
    finally:
        _current.reset(token)


def _expires(headers: Mapping[str, str] | None) -> dt.datetime | None:
    value = (headers or {}).get("Expires")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # ESI sends RFC 7231 dates; anything else is ignored
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
