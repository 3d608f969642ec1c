"""Fetched ESI spec documents, kept on disk and in Redis as plain JSON.

What is kept is the spec already turned into Swagger 2.0 together with
the ``ETag``/``Last-Modified`` it was served with, so a process starting
later neither converts it again nor downloads it while it is young, and
revalidates it with a conditional request once it is old. Redis is shared
by every worker: a value there is parsed as JSON and checked, never
unpickled, so a tampered entry is dropped instead of run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import esi as metrics

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

REDIS_PREFIX = "esi-worker:spec:"
FORMAT = 2
"""Raised whenever the conversion changes: entries of another format are
fetched and converted anew (2: top-level security, anyOf parameters,
``requestBody`` references)."""


@dataclasses.dataclass(frozen=True)
class StoredSpec:
    """One converted spec document and where and when it came from."""

    source: str
    compatibility_date: str
    swagger: dict[str, Any] = dataclasses.field(repr=False)
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None

    def to_json(self) -> str:
        """The entry as JSON text."""
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredSpec:
        """Rebuild an entry written by :meth:`to_json`.

        :raises ValueError: the text is not JSON or not such an entry.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a stored ESI spec entry")
        swagger = data.get("swagger")
        if not isinstance(swagger, dict) or swagger.get("swagger") != "2.0":
            raise ValueError("stored entry does not hold a Swagger 2.0 spec")
        return cls(
            source=str(data["source"]),
            compatibility_date=str(data["compatibility_date"]),
            swagger=swagger,
            fetched_at=float(data["fetched_at"]),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
        )


class SpecStore:
    """Converted specs on disk (``data_dir/spec-cache``) and in Redis.

    :param directory: where entries are written; ``None`` keeps none on disk.
    :param redis_client: a shared Redis; ``None`` keeps none there.
    :param redis_prefix: the namespace of its keys there.
    """

    def __init__(
        self,
        directory: Path | None,
        redis_client: redis.Redis | None = None,
        *,
        redis_prefix: str = REDIS_PREFIX,
    ) -> None:
        self.directory = directory
        self.redis = redis_client
        self.redis_prefix = redis_prefix

    def get(self, source: str, compatibility_date: str) -> StoredSpec | None:
        """The newest stored entry for the source and date, if any."""
        key = entry_key(source, compatibility_date)
        found = [e for e in (self._from_disk(key), self._from_redis(key)) if e]
        found = [
            e
            for e in found
            if e.source == source and e.compatibility_date == compatibility_date
        ]
        return max(found, key=lambda e: e.fetched_at, default=None)

    def put(self, entry: StoredSpec) -> None:
        """Keep ``entry`` everywhere configured; failures are logged, not raised."""
        key = entry_key(entry.source, entry.compatibility_date)
        text = entry.to_json()
        if self.directory is not None:
            self._to_disk(key, text)
        if self.redis is not None:
            try:
                self.redis.set(self.redis_prefix + key, text)
            except Exception as exc:  # noqa: BLE001 (a cache never fails a call)
                _failed("redis", "write", exc)

    def _from_disk(self, key: str) -> StoredSpec | None:
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            return StoredSpec.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _failed("disk", "read", exc)
            return None

    def _from_redis(self, key: str) -> StoredSpec | None:
        if self.redis is None:
            return None
        try:
            raw = self.redis.get(self.redis_prefix + key)
        except Exception as exc:  # noqa: BLE001 (a cache never fails a call)
            _failed("redis", "read", exc)
            return None
        if raw is None:
            return None
        try:
            return StoredSpec.from_json(raw)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            _failed("redis", "read", exc)
            return None

    def _to_disk(self, key: str, text: str) -> None:
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temp, self.directory / f"{key}.json")
        except OSError as exc:
            _failed("disk", "write", exc)


def entry_key(source: str, compatibility_date: str) -> str:
    """The file and Redis name of a source's spec at a compatibility date."""
    digest = hashlib.sha256(f"{source}\n{compatibility_date}".encode()).hexdigest()
    return digest[:32]


def _failed(backend: str, action: str, exc: Exception) -> None:
    metrics.CACHE_ERRORS.labels(f"spec-{backend}").inc()
    log.warning(
        "ESI spec cache (%s) %s failed, going on without it: %s: %s",
        backend,
        action,
        type(exc).__name__,
        str(exc)[:200],
    )
