"""Response caches for ESI answers: in-process LRU and Redis.

An entry outlives its freshness so that a stale answer can still be
revalidated with ``If-None-Match``; the caller decides freshness from
:attr:`CachedResponse.expires_at`, the backend only enforces ``ttl_s``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..httpdate import parse_http_date
from ..metrics import esi as metrics

if TYPE_CHECKING:
    import redis

    from ..settings import Settings
    from .copies import JsonCopier

log = logging.getLogger(__name__)

KEY_PREFIX = "esi-worker:esi:"
STALE_KEEP_S = 86400.0
"""How long an entry with an ETag is kept past its expiry for revalidation."""
DAY_S = 86400.0

_DECODED = "decoded:"
_PARSED = "parsed"

KEPT_HEADERS = (
    "Cache-Control",
    "Content-Language",
    "Content-Type",
    "Date",
    "ETag",
    "Expires",
    "Last-Modified",
    "X-Compatibility-Date",
    "X-Pages",
)


@dataclasses.dataclass(frozen=True)
class CachedResponse:
    """One cached ESI answer: status, the headers worth keeping, body text."""

    status: int
    headers: dict[str, str]
    body: str
    expires_at: float
    etag: str | None = None
    kept: dict[str, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """What an in-process cache keeps beside the entry; never stored."""

    def decoded(self, kind: str = "formats") -> JsonCopier | None:
        """The parsed answer an in-process cache keeps beside the entry.

        :param kind: how it was parsed (dates as objects or as text), so
            clients parsing differently never share one.
        """
        return self.kept.get(_DECODED + kind)

    def parsed(self) -> Any:
        """The body parsed when the entry was read and checked, handed out once."""
        return self.kept.pop(_PARSED, None)

    def is_fresh(self, now: float) -> bool:
        """Whether the entry may be served without asking ESI."""
        return now < self.expires_at

    @property
    def size(self) -> int:
        """Approximate bytes held, for the memory cache's budget."""
        head = sum(len(k) + len(v) for k, v in self.headers.items())
        return len(self.body) + head + 64

    def to_json(self) -> bytes:
        """The entry as JSON (never pickle: a shared cache is untrusted)."""
        return orjson.dumps(
            {
                "status": self.status,
                "headers": self.headers,
                "body": self.body,
                "expires_at": self.expires_at,
                "etag": self.etag,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CachedResponse:
        """Rebuild an entry written by :meth:`to_json`, checking every field.

        A shared cache may hold anything: only a 2xx answer with text
        headers, a JSON body and a finite expiry comes back, its body
        already parsed (see :meth:`parsed`).

        :raises ValueError: when the text is not such an entry.
        :raises TypeError: when a field has the wrong type.
        """
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(data, dict):
            raise TypeError("cached entry is not a JSON object")
        status, headers, body = data["status"], data["headers"], data["body"]
        if type(status) is not int or not 200 <= status < 300:
            raise ValueError(f"cached entry has status {status!r}, not a 2xx")
        if not isinstance(headers, dict) or not all(
            isinstance(v, str) for v in headers.values()
        ):
            raise TypeError("cached entry headers are not text")
        if not isinstance(body, str):
            raise TypeError("cached entry body is not text")
        expires_at = data["expires_at"]
        if type(expires_at) not in (int, float) or not math.isfinite(expires_at):
            raise TypeError(f"cached entry expires_at is {expires_at!r}")
        etag = data.get("etag")
        if etag is not None and not isinstance(etag, str):
            raise TypeError("cached entry etag is not text")

        entry = cls(status, dict(headers), body, float(expires_at), etag)
        entry.kept[_PARSED] = _parse_body(body)
        return entry


class ResponseCache(Protocol):
    """What the ESI client asks of a cache backend.

    An in-process backend may also offer ``keep_decoded(key, entry,
    copier)``, as :class:`MemoryCache` does: the client then keeps the
    parsed answer beside the entry rather than parsing it on every hit.
    """

    def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or ``None``."""

    def set(self, key: str, entry: CachedResponse, ttl_s: float) -> None:
        """Keep ``entry`` under ``key`` for at most ``ttl_s`` seconds."""

    def delete(self, key: str) -> None:
        """Forget ``key``."""


class MemoryCache:
    """A thread-safe in-process LRU, bounded by entries and by bytes."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 1:
            raise ConfigurationError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[CachedResponse, float]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key`` if it has not outlived its ``ttl_s``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= self._clock.time():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def keep_decoded(
        self, key: str, entry: CachedResponse, copier: JsonCopier, kind: str = "formats"
    ) -> None:
        """Keep the parsed answer of ``entry`` with it, counted in the budget.

        Nothing is kept when ``key`` no longer holds that very entry.

        :param kind: how the answer was parsed (see
            :meth:`CachedResponse.decoded`).
        """
        with self._lock:
            item = self._items.get(key)
            slot = _DECODED + kind
            if item is None or item[0] is not entry or slot in entry.kept:
                return
            entry.kept[slot] = copier
            self._bytes += copier.size
            self._evict()

    def set(self, key: str, entry: CachedResponse, ttl_s: float) -> None:
        """Keep ``entry``; the least recently used entries make room."""
        if ttl_s <= 0 or entry.size > self.max_bytes:
            self.delete(key)
            return
        with self._lock:
            self._drop(key)
            self._items[key] = (entry, self._clock.time() + ttl_s)
            self._bytes += entry.size
            self._evict()

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_used(self) -> int:
        """Approximate bytes held by the entries."""
        return self._bytes

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= _held(item[0])

    def _evict(self) -> None:
        while self._items and (
            len(self._items) > self.max_entries or self._bytes > self.max_bytes
        ):
            _key, (entry, _deadline) = self._items.popitem(last=False)
            self._bytes -= _held(entry)


class RedisCache:
    """Entries in Redis as JSON text, expiring with Redis' own TTL.

    The connection is opened on first use, so a Redis outage shows up as an
    error of :meth:`get`/:meth:`set`, which the ESI client logs and skips.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        timeout_s: float = 2.0,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ConfigurationError(
                f"redis URL must start with redis://, rediss:// or unix://, "
                f"got scheme {scheme!r}"
            )
        self._url = url
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, or ``None`` (also for an unreadable one).

        An unreadable entry (not ours, tampered with, another Redis type)
        is logged, counted and deleted, so it is fetched anew once.
        """
        import redis

        name = self._prefix + key
        try:
            raw = self._redis().get(name)
        except redis.ResponseError as exc:  # WRONGTYPE: a hash, a list...
            self._drop_unreadable(key, exc)
            return None
        if raw is None:
            return None
        try:
            return CachedResponse.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            self._drop_unreadable(key, exc)
            return None

    def set(self, key: str, entry: CachedResponse, ttl_s: float) -> None:
        """Store ``entry`` as JSON with a Redis expiry of ``ttl_s``."""
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms <= 0:
            self.delete(key)
            return
        self._redis().set(self._prefix + key, entry.to_json(), px=ttl_ms)

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        self._redis().delete(self._prefix + key)

    def usage(self, max_keys: int = 100_000) -> tuple[int, int] | None:
        """``(entries, bytes)`` under this cache's prefix, for the gauges.

        Walks the keys with ``SCAN`` and sums their lengths in pipelined
        batches; ``None`` past ``max_keys`` rather than a count too low.
        """
        client = self._redis()
        keys = client.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000)
        entries = size = 0
        for batch in _batches(keys, 1000):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.strlen(key)
            entries, size = entries + len(batch), size + sum(pipe.execute())
            if entries > max_keys:
                return None
        return entries, size

    def _drop_unreadable(self, key: str, exc: Exception) -> None:
        metrics.CACHE_ERRORS.labels(type(self).__name__).inc()
        log.warning(
            "dropping unreadable cache entry %r: %s: %s",
            key,
            type(exc).__name__,
            str(exc)[:120],
        )
        self.delete(key)

    def close(self) -> None:
        """Close the connection pool, if one was opened."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self._prefix!r})"

    def _redis(self) -> redis.Redis:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout_s,
                    socket_connect_timeout=self._timeout_s,
                )
            return self._client


_shared: dict[tuple[str | None, str], ResponseCache] = {}
_shared_lock = threading.Lock()


def cache_from_settings(settings: Settings) -> ResponseCache:
    """The process-wide cache: Redis when ``redis_url`` is set, else memory.

    :raises ConfigurationError: when ``redis_url`` is not a Redis URL.
    """
    url = settings.redis_url or None
    prefix = settings.esi_redis_prefix + "esi:"
    with _shared_lock:
        cache = _shared.get((url, prefix))
        if cache is None:
            cache = RedisCache(url, prefix=prefix) if url else MemoryCache()
            _shared[(url, prefix)] = cache
        return cache


def shared_caches() -> list[ResponseCache]:
    """The process-wide caches made so far, for the cache gauges."""
    with _shared_lock:
        return list(_shared.values())


def cache_key(
    method: str,
    url: str,
    query: Mapping[str, Any],
    *,
    body: bytes | str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    character_id: int | None = None,
) -> str:
    """A hash naming one request; the access token never takes part.

    :param headers: the request headers that change the answer (language,
        tenant, compatibility date).
    :param character_id: the token's character on authed operations.
    """
    parts = (
        method.upper(),
        url.split("?", 1)[0],
        sorted([(k, _text(v)) for k, v in query.items() if k != "token"]),
        body.decode() if isinstance(body, bytes) else body,
        sorted([(k.lower(), v) for k, v in headers]),
        character_id,
    )
    return hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()


def freshness_s(
    headers: Mapping[str, str], now: dt.datetime, *, cap_s: float = DAY_S
) -> float | None:
    """Seconds an answer stays fresh, or ``None`` when it must not be cached.

    ``Cache-Control: max-age`` wins, else ``Expires``, each less the
    answer's age (``Age``, and for ``Expires`` however long ago ``Date``
    was): an answer relayed late or replayed is not fresh for its whole
    original life. Never more than ``cap_s`` (the route's own cache time),
    so a bogus far-off ``Expires`` cannot pin an answer for years.
    """
    directives = _cache_control(headers.get("Cache-Control", ""))
    if "no-store" in directives or "no-cache" in directives:
        return None
    served = parse_http_date(headers.get("Date")) or now
    # RFC 9111 4.2.3: the larger of what Age says and how long ago Date
    # was. A Date far behind our clock means an old answer (or a clock
    # running ahead of ESI's); either way less of its life is left.
    age = max(
        0.0,
        _number(headers.get("Age")) or 0.0,
        (now - served).total_seconds(),
    )
    if "max-age" in directives:
        lifetime = _positive(directives["max-age"])
        if lifetime is None:
            return None
        return _capped(lifetime - age, cap_s)

    expires = parse_http_date(headers.get("Expires"))
    if expires is None:
        return None
    return _capped((expires - served).total_seconds() - age, cap_s)


def _held(entry: CachedResponse) -> int:
    kept = [v for k, v in entry.kept.items() if k.startswith(_DECODED)]
    return entry.size + sum(copier.size for copier in kept)


def _parse_body(body: str) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"cached entry body is not JSON: {exc}") from None


def _glob_escape(text: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _cache_control(value: str) -> dict[str, str]:
    directives = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.lower()] = arg.strip().strip('"')
    return directives


def _capped(seconds: float, cap_s: float) -> float | None:
    seconds = min(seconds, cap_s)
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _positive(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
