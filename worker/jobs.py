"""The job API: what a plugin declares, how it is found and what a run receives.

A job is a function taking a :class:`JobContext`, declared with :func:`job`
and registered under the ``esi_worker.jobs`` entry-point group::

    @job(scopes=["esi-assets.read_assets.v1"], every=3600)
    def assets(ctx):
        ...
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .errors import JobDefinitionError, JobError, ScopeError, UnknownJobError
from .scopes import normalize_scopes

if TYPE_CHECKING:
    import psycopg

    from .clock import Clock
    from .runtime import Runtime
    from .tokens import Token

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "esi_worker.jobs"


class FanOut(enum.StrEnum):
    """How one scheduled tick becomes runs."""

    ONCE = "once"
    PER_TOKEN = "per_token"
    PER_CHARACTER = "per_character"


@dataclass(frozen=True)
class Job:
    """A job's declaration: what it needs, when it runs, how it fans out."""

    name: str
    func: Callable[[JobContext], Any]
    scopes: tuple[str, ...] = ()
    fan_out: FanOut = FanOut.ONCE
    interval_s: float = 3600.0
    jitter_s: float = 0.0
    timeout_s: float = 600.0
    max_retries: int = 0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace(".", "").isalnum():
            raise JobDefinitionError(f"job name {self.name!r} is not a plain identifier")
        if self.interval_s <= 0:
            raise JobDefinitionError(f"job {self.name!r}: interval must be positive")
        if not 0 <= self.jitter_s <= self.interval_s:
            raise JobDefinitionError(
                f"job {self.name!r}: jitter must be between 0 and the interval"
            )
        if self.timeout_s <= 0:
            raise JobDefinitionError(f"job {self.name!r}: timeout must be positive")
        if self.fan_out is not FanOut.ONCE and not self.scopes:
            raise JobDefinitionError(
                f"job {self.name!r}: fan-out {self.fan_out} needs scopes to select tokens"
            )

    def __call__(self, ctx: JobContext) -> Any:
        return self.func(ctx)


def job(
    name: str | None = None,
    *,
    scopes: str | Iterable[str] | None = None,
    fan_out: FanOut | str = FanOut.ONCE,
    every: float | dt.timedelta = 3600.0,
    jitter: float | dt.timedelta = 0.0,
    timeout: float | dt.timedelta = 600.0,
    retries: int = 0,
) -> Callable[[Callable[[JobContext], Any]], Job]:
    """Declare a job; the decorated function receives a :class:`JobContext`.

    :raises JobDefinitionError: for an invalid schedule, fan-out or scope.
    """

    def decorate(func: Callable[[JobContext], Any]) -> Job:
        try:
            scope_names = normalize_scopes(scopes)
            mode = FanOut(fan_out)
        except (ScopeError, ValueError) as exc:
            raise JobDefinitionError(f"job {name or func.__name__!r}: {exc}") from None
        return Job(
            name=name or func.__name__,
            func=func,
            scopes=scope_names,
            fan_out=mode,
            interval_s=_seconds(every),
            jitter_s=_seconds(jitter),
            timeout_s=_seconds(timeout),
            max_retries=retries,
            description=(func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else "",
            source=func.__module__,
        )

    return decorate


def _seconds(value: float | dt.timedelta) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


@dataclass
class RunStats:
    """What a run did, recorded with it."""

    pages: int = 0
    items: int = 0
    esi_calls: int = 0
    cache_hits: int = 0


@dataclass
class JobContext:
    """Everything a run gets: ESI client, token, database, logger, clock."""

    job: Job
    runtime: Runtime
    character_id: int | None = None
    token: Token | None = None
    stats: RunStats = field(default_factory=RunStats)
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)

    def __post_init__(self) -> None:
        extra = {"job": self.job.name, "character_id": self.character_id}
        self.log = logging.LoggerAdapter(logging.getLogger(f"jobs.{self.job.name}"), extra)

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def esi(self) -> Any:
        """The shared ESI client, authenticated as the run's token if it has one."""
        if self.token is not None:
            return self.token.get_esi_client()
        return self.runtime.esi.client

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled database connection; committed when the block succeeds."""
        with self.runtime.pool.connection() as conn:
            yield conn


class JobRegistry:
    """Jobs found through entry points, loaded lazily by name.

    A plugin that fails to load is reported with its name and the reason;
    the other plugins are not affected.
    """

    def __init__(self, group: str = ENTRY_POINT_GROUP, extra: Iterable[Job] = ()) -> None:
        self._group = group
        self._lock = threading.Lock()
        self._loaded: dict[str, Job] = {job.name: job for job in extra}
        self._failures: dict[str, str] = {}

    def names(self) -> list[str]:
        """Every registered job name, loaded or not."""
        return sorted(set(self._entry_points()) | set(self._loaded))

    def get(self, name: str) -> Job:
        """The job registered as ``name``.

        :raises UnknownJobError: when no such job is registered.
        :raises JobError: when the plugin fails to load.
        """
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        entry = self._entry_points().get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownJobError(f"no job named {name!r} (registered: {known})")
        loaded = self._load(entry)
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def load_all(self) -> tuple[dict[str, Job], dict[str, str]]:
        """Load every job; returns the jobs and, per failed plugin, the reason."""
        jobs: dict[str, Job] = {}
        failures: dict[str, str] = {}
        for name in self.names():
            try:
                jobs[name] = self.get(name)
            except JobError as exc:
                failures[name] = str(exc)
                log.error("job plugin %r is broken: %s", name, exc, extra={"job": name})
        return jobs, failures

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self._group)}

    def _load(self, entry: EntryPoint) -> Job:
        try:
            obj = entry.load()
        except JobDefinitionError as exc:
            raise JobDefinitionError(f"job plugin {entry.name!r}: {exc}") from exc
        except Exception as exc:  # a plugin may fail in any way; report it by name
            raise JobError(
                f"job plugin {entry.name!r} ({entry.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(obj, Job):
            raise JobDefinitionError(
                f"job plugin {entry.name!r} ({entry.value}) is a "
                f"{type(obj).__name__}, not a Job made with @job"
            )
        if obj.name != entry.name:
            # The entry-point name is the one operators see and configure.
            obj = Job(**{**obj.__dict__, "name": entry.name})
        return obj
