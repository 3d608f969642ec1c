"""The recorded ESI exchanges, grouped into consistent snapshots to replay.

Several projects recorded the same route in different years; mixing their
pages would hand a client page 1 of 2019 and page 2 of 2026. Recordings
are therefore grouped by where they came from (repository, commit,
recording day) and the newest group that holds every page is served.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Collection
from importlib import resources
from importlib.abc import Traversable
from typing import Any

from .messages import parse_http_date

log = logging.getLogger(__name__)

ENGLISH = "en"


@dataclasses.dataclass
class Recording:
    """One recorded exchange; its file is read on first use and kept as bytes."""

    file: str
    status: int
    page: int
    x_pages: int | None
    recorded_s: float
    _root: Traversable = dataclasses.field(repr=False)
    _loaded: tuple[bytes, dict[str, str], Any] | None = dataclasses.field(
        default=None, repr=False
    )
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False
    )

    @property
    def body(self) -> bytes:
        """The response body, serialised once."""
        return self._load()[0]

    @property
    def headers(self) -> dict[str, str]:
        """Recorded response headers, lower-cased names, first values."""
        return self._load()[1]

    @property
    def request_body(self) -> Any:
        """The recorded request's body (parsed JSON), for POST routes."""
        return self._load()[2]

    def _load(self) -> tuple[bytes, dict[str, str], Any]:
        with self._lock:
            if self._loaded is None:
                raw = json.loads(self._root.joinpath(self.file).read_text("utf-8"))
                response = raw["response"]
                headers = {
                    k.lower(): v[0] for k, v in (response["headers"] or {}).items() if v
                }
                body = (raw.get("request") or {}).get("body")
                self._loaded = (_serialise(response), headers, body)
            return self._loaded


@dataclasses.dataclass
class Snapshot:
    """The pages of one route + parameters + language from one source."""

    pages: dict[int, Recording]
    x_pages: int | None
    recorded_s: float

    @property
    def complete(self) -> bool:
        """True when every page up to ``X-Pages`` is present."""
        last = self.x_pages or max(self.pages)
        return all(p in self.pages for p in range(1, last + 1))

    @property
    def page_count(self) -> int:
        """The ``X-Pages`` value to send."""
        return self.x_pages or max(self.pages)

    def lifetime_s(self) -> float | None:
        """The longest recorded cache lifetime among the pages, if any."""
        lifetimes = []
        for recording in self.pages.values():
            # Expires - Last-Modified is the route's whole lifetime; Date
            # fell somewhere inside it when the recording was made.
            headers = recording.headers
            expires = parse_http_date(headers.get("expires"))
            start = parse_http_date(headers.get("last-modified") or headers.get("date"))
            if expires is not None and start is not None and expires > start:
                lifetimes.append(expires - start)
        return max(lifetimes) if lifetimes else None


class RecordingLibrary:
    """Finds the snapshot to serve for an operation, parameters and language."""

    def __init__(self, root: Traversable, localized: Collection[str]) -> None:
        self._root = root
        self._by_operation: dict[str, list[Recording]] = {}
        self._snapshots: dict[
            tuple[str, tuple[tuple[str, str], ...], str | None], Snapshot
        ] = {}
        self._unmatched: dict[str, list[Recording]] = {}
        self._build(
            json.loads(root.joinpath("index.json").read_text("utf-8")), set(localized)
        )

    def find(
        self, operation_id: str, path_params: dict[str, str], language: str | None
    ) -> tuple[Snapshot, str | None] | None:
        """The snapshot and the language it is in; English when ``language`` is missing.

        :param language: a normalised language for localized operations, else None.
        """
        params = _param_key(path_params)
        snapshot = self._snapshots.get((operation_id, params, language))
        if snapshot is not None:
            return snapshot, language
        if language is not None and language != ENGLISH:
            snapshot = self._snapshots.get((operation_id, params, ENGLISH))
            if snapshot is not None:
                return snapshot, ENGLISH
        return None

    def by_route(self, route: str) -> list[Recording]:
        """The recordings of a route no operation of the bundled spec names.

        :param route: as the index writes it, e.g. ``POST /route/1/2/``.
        """
        return list(self._unmatched.get(route, ()))

    def rate_limit(self, operation_id: str) -> tuple[str, str] | None:
        """(group, ``"600/15m"``) if any recording of the operation carries one."""
        for recording in self._by_operation.get(operation_id, ()):
            group = recording.headers.get("x-ratelimit-group")
            limit = recording.headers.get("x-ratelimit-limit")
            if group and limit:
                return group, limit
        return None

    def _build(self, index: list[dict[str, Any]], localized: set[str]) -> None:
        groups: dict[tuple[Any, ...], dict[tuple[Any, ...], list[Recording]]] = {}
        for entry in index:
            operation_id = entry.get("operationId")
            if not operation_id and entry["status"] != 304 and entry.get("route"):
                # Routes newer than the bundled spec (ESI.md 3.1b), kept apart.
                self._unmatched.setdefault(entry["route"], []).append(
                    _recording(entry, self._root)
                )
            if not operation_id or entry["status"] == 304:
                continue
            recording = _recording(entry, self._root)
            self._by_operation.setdefault(operation_id, []).append(recording)

            language = normalize_language(entry.get("language")) or ENGLISH
            key = (
                operation_id,
                _param_key(entry["path_params"]),
                language if operation_id in localized else None,
            )
            source = (
                entry["source_repo"],
                entry["source_commit"],
                (entry.get("recorded_at") or "")[:16],
            )
            groups.setdefault(key, {}).setdefault(source, []).append(recording)

        for key, sources in groups.items():
            snapshots = [_snapshot(recordings) for recordings in sources.values()]
            snapshots.sort(key=lambda s: (s.complete, s.recorded_s), reverse=True)
            self._snapshots[key] = snapshots[0]


@functools.lru_cache(maxsize=1)
def load_library(localized: frozenset[str]) -> RecordingLibrary:
    """The bundled recordings, indexed once per process."""
    root = resources.files("worker.emulator").joinpath("data", "recorded")
    return RecordingLibrary(root, localized)


def normalize_language(text: str | None) -> str | None:
    """``en-us``/``EN`` -> ``en``; other tags lower-cased; None stays None."""
    if not text:
        return None
    tag = text.strip().lower()
    return ENGLISH if tag in ("en", "en-us") else tag


def _recording(entry: dict[str, Any], root: Traversable) -> Recording:
    page = int(entry["query"].get("page", 1) or 1)
    recorded = parse_http_date(entry.get("recorded_at")) or 0.0
    x_pages = int(entry["x_pages"]) if entry.get("x_pages") else None
    return Recording(entry["file"], entry["status"], page, x_pages, recorded, root)


def _snapshot(recordings: list[Recording]) -> Snapshot:
    pages: dict[int, Recording] = {}
    for recording in sorted(recordings, key=lambda r: r.recorded_s):
        pages[recording.page] = recording
    x_pages = max((r.x_pages for r in recordings if r.x_pages), default=None)
    return Snapshot(pages, x_pages, max(r.recorded_s for r in recordings))


def _param_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in params.items():
        text = str(value)
        out.append((name, str(int(text)) if text.isdigit() else text))
    return tuple(sorted(out))


def _serialise(response: dict[str, Any]) -> bytes:
    body = response.get("body")
    if response.get("body_kind") == "empty" or body is None or body == "":
        return b""
    if isinstance(body, str) and response.get("body_kind") != "json":
        return body.encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
