"""The runtime: one place that wires settings to the pool, SSO, tokens and ESI.

django-esi users call ``Token.objects`` and ``esi_client_factory()`` without
passing a database or settings around; those calls find the runtime made
current with :meth:`Runtime.activate`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError
from .settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from .esi.cache import ResponseCache
    from .esi.client import EsiClientProvider
    from .sso import SSOClient
    from .tokens import TokenStore

log = logging.getLogger(__name__)

_current: Runtime | None = None
_current_lock = threading.Lock()


class Runtime:
    """Settings plus the long-lived objects built from them.

    Parts are built lazily, on first use, so a process that only talks to
    ESI never opens an SSO session and vice versa.
    """

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool | None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        owns_pool: bool = False,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self.clock = clock
        self._owns_pool = owns_pool

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        pool: ConnectionPool | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Runtime:
        """Build a runtime; opens a pool on the configured database if none given.

        With no ``database_url`` the embedded PostgreSQL in the data folder
        is started (or reused) and brought to the schema's head, as
        ``esi-worker run`` does.

        :raises DatabaseUnavailableError: the database cannot be reached.
        :raises ConfigurationError: a configured database is not migrated.
        """
        if pool is not None:
            return cls(settings, pool, clock=clock)

        from .db import create_pool, ensure_schema, resolve_database_url

        url = resolve_database_url(settings)
        ensure_schema(url, migrate_if_behind=not settings.database_url)
        pool = create_pool(url, max_size=settings.db_pool_max)
        return cls(settings.replace(database_url=url), pool, clock=clock,
                   owns_pool=True)

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise ConfigurationError(
                "no database configured: set ESI_WORKER_DATABASE_URL "
                "or start through 'esi-worker run'"
            )
        return self._pool

    @cached_property
    def sso(self) -> SSOClient:
        from .sso import SSOClient

        return SSOClient(self.settings, clock=self.clock)

    @cached_property
    def tokens(self) -> TokenStore:
        from .tokens import TokenStore

        return TokenStore(self.pool, self.sso, self.settings, clock=self.clock)

    @cached_property
    def cache(self) -> ResponseCache:
        from .esi.cache import cache_from_settings

        return cache_from_settings(self.settings)

    @cached_property
    def esi(self) -> EsiClientProvider:
        from .esi.client import EsiClientProvider

        return EsiClientProvider(runtime=self)

    def activate(self) -> None:
        """Make this the runtime that ``Token.objects`` and friends use."""
        global _current
        with _current_lock:
            _current = self

    @contextlib.contextmanager
    def activated(self) -> Iterator[Runtime]:
        """Make this runtime current inside the block, then restore the last."""
        global _current
        with _current_lock:
            previous, _current = _current, self
        try:
            yield self
        finally:
            with _current_lock:
                _current = previous

    def close(self) -> None:
        """Release what this runtime opened (a pool it did not receive)."""
        if "tokens" in self.__dict__:
            self.tokens.close()
        if self._owns_pool and self._pool is not None:
            self._pool.close()


def current() -> Runtime:
    """The active runtime.

    :raises ConfigurationError: when none is active.
    """
    runtime = _current
    if runtime is None:
        raise ConfigurationError(
            "no esi-worker runtime is active: call "
            "Runtime.from_settings(Settings.from_env()).activate() first"
        )
    return runtime


def current_or_none() -> Runtime | None:
    """The active runtime, or ``None``."""
    return _current
