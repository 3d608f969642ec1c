"""HTTP dates (``Date``, ``Expires``, ``Retry-After``...), read leniently."""

from __future__ import annotations

import datetime as dt
import email.utils


def parse_http_date(value: str | None) -> dt.datetime | None:
    """An HTTP date as an aware datetime (UTC when it names no zone); None
    for a missing or unreadable value, which callers treat as absent."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
