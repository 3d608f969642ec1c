"""What a run receives: ESI client, token, database, logger and clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .stats import RunStats, current_stats

if TYPE_CHECKING:
    import datetime as dt

    import psycopg

    from ..clock import Clock
    from ..runtime import Runtime
    from ..settings import Settings
    from ..tokens import Token
    from .declaration import Job


@dataclass
class JobContext:
    """Everything a run gets; the token is looked up when the run starts.

    ``token`` is the run's token (per token, per character, per
    corporation fan-out); ``corporation_id`` is set for per-corporation
    runs; ``due`` is the slot the run was planned for. ``log`` names the
    job, character and run in every record (and keeps a call's own
    ``extra=`` as well).
    """

    job: Job
    runtime: Runtime
    character_id: int | None = None
    token: Token | None = None
    corporation_id: int | None = None
    due: dt.datetime | None = None
    run_id: int | None = None
    stats: RunStats = field(default_factory=RunStats)
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)
    _secrets: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        extra = {
            "job": self.job.name,
            "character_id": self.character_id,
            "corporation_id": self.corporation_id,
            "run_id": self.run_id,
        }
        self.log = RunLogger(logging.getLogger(f"jobs.{self.job.name}"), extra)

    @property
    def clock(self) -> Clock:
        """The runtime's clock; tests move it instead of sleeping."""
        return self.runtime.clock

    @property
    def settings(self) -> Settings:
        """The worker's settings."""
        return self.runtime.settings

    @property
    def esi(self) -> Any:
        """The ESI client, authenticated as the run's token if it has one.

        Calls made through it are counted in the run's record.
        """
        if self.token is not None:
            return self.esi_for(self.token)
        return CountingClient(self.runtime.esi.client)

    def esi_for(self, token: Token) -> Any:
        """An ESI client authenticated as ``token``, counted like :attr:`esi`."""
        return CountingClient(token.get_esi_client())

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled database connection; committed when the block succeeds."""
        with self.runtime.pool.connection() as conn:
            yield conn

    def remember(self, *tokens: Token | None) -> None:
        """Note the secrets of tokens the run holds, to keep them out of its error."""
        for token in tokens:
            if token is not None:
                self._secrets.update(
                    s for s in (token.access_token, token.refresh_token) if s
                )

    def secrets(self) -> set[str]:
        """Every secret the run held: its tokens', now and when first seen."""
        self.remember(self.token)
        return set(self._secrets)


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that adds the run's fields to a call's own ``extra``.

    The standard adapter replaces a call's ``extra`` (before Python 3.13).
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class CountingClient:
    """An ESI client whose calls count into the current run's statistics.

    The HTTP client counts the requests; this counts the pages read and
    the answers the cache gave without a request.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return _CountingResource(getattr(self._client, name))

    def __dir__(self) -> list[str]:
        return dir(self._client)

    def __repr__(self) -> str:
        return f"CountingClient({self._client!r})"


class _CountingResource:
    def __init__(self, resource: Any) -> None:
        self._resource = resource

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._resource, name)
        return _CountingOperation(value) if callable(value) else value


class _CountingOperation:
    def __init__(self, operation: Any) -> None:
        self._operation = operation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._operation, name)

    def __call__(self, **kwargs: Any) -> Any:
        return _CountingFuture(self._operation(**kwargs))


class _CountingFuture:
    """Counts each response of the call once the data has been read."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future, name)

    def result(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(self._future.result(*args, **kwargs))

    def results(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(self._future.results(*args, **kwargs))

    def results_localized(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(self._future.results_localized(*args, **kwargs))

    def _counted(self, value: Any) -> Any:
        stats = current_stats()
        for response in getattr(self._future, "responses", None) or ():
            if stats is not None:
                stats.note_page(
                    bool(getattr(response, "from_cache", False)),
                    getattr(response, "headers", None),
                )
        return value
