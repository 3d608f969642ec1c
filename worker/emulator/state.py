"""Shared run-time state: the live switches, the fault queues and the counters."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..clock import Clock
from .config import EmulatorConfig
from .grants import GrantBook
from .keys import SigningKeys


class Stats:
    """Counters of what the emulator was asked, for tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._sso_total = 0
            self._in_flight = 0
            self._max_in_flight = 0
            self._refreshes: collections.Counter[int] = collections.Counter()
            self._esi_total = 0
            self._by_status: collections.Counter[int] = collections.Counter()
            self._by_path: collections.Counter[str] = collections.Counter()
            self._spec_documents: collections.Counter[str] = collections.Counter()

    @contextmanager
    def sso_token_request(self) -> Iterator[int]:
        """Count one token request while it runs; yields the in-flight count."""
        with self._lock:
            self._sso_total += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            in_flight = self._in_flight
        try:
            yield in_flight
        finally:
            with self._lock:
                self._in_flight -= 1

    def sso_refresh(self, character_id: int) -> None:
        """Count a successful refresh for ``character_id``."""
        with self._lock:
            self._refreshes[character_id] += 1

    def esi_request(self, path: str, status: int) -> None:
        """Count one ESI answer."""
        with self._lock:
            self._esi_total += 1
            self._by_status[status] += 1
            self._by_path[path] += 1

    def spec_request(self, path: str, status: int) -> None:
        """Count one spec or meta document served (not an ESI route call)."""
        with self._lock:
            self._spec_documents[f"{path} {status}"] += 1

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter."""
        with self._lock:
            return {
                "sso_token_requests": self._sso_total,
                "sso_refreshes_by_character": dict(self._refreshes),
                "sso_max_in_flight": self._max_in_flight,
                "esi_requests": self._esi_total,
                "esi_requests_by_status": dict(self._by_status),
                "esi_requests_by_path": dict(self._by_path),
                "spec_requests": dict(self._spec_documents),
            }


class EmulatorState:
    """The config in force plus the consumable parts of it.

    Faults and owner changes are used up as requests arrive, so they live
    here rather than in the frozen config; ``config`` reports what is left.
    """

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.defaults = config
        self.clock = clock
        self.keys = SigningKeys()
        self.grants = GrantBook(self.keys, clock)
        self.stats = Stats()
        self.base_url = ""
        self._lock = threading.Lock()
        self._apply(config)

    @property
    def config(self) -> EmulatorConfig:
        """The switches in force, with the faults not yet consumed."""
        with self._lock:
            return self._config.replace(
                sso_faults=list(self._sso_faults),
                esi_faults=list(self._esi_faults),
                owner_changes=set(self._owner_changes),
            )

    @property
    def switches(self) -> EmulatorConfig:
        """The switches in force (cheap; fault lists as last configured)."""
        return self._config

    def configure(self, switches: Mapping[str, Any]) -> EmulatorConfig:
        """Change switches at run time.

        :raises ConfigurationError: an unknown switch or a bad value.
        """
        updated = self.config.replace(**dict(switches))
        if updated.signing_kid is not None:
            # A new kid means a new key pair, made now rather than mid-request.
            self.keys.ensure(updated.signing_kid, updated.sign_alg)
        self._apply(updated)
        return updated

    def reset(self) -> None:
        """Back to the start: defaults, no grants, no counters, no faults."""
        self._apply(self.defaults)
        self.keys.forget_added()
        self.grants.clear()
        self.stats.clear()

    def next_sso_fault(self, grant_type: str | None = None) -> Mapping[str, Any] | None:
        """The next injected SSO answer for a ``grant_type`` request, consumed
        (one of its ``count``); None when none is queued for it."""
        with self._lock:
            for index, fault in enumerate(self._sso_faults):
                wanted = fault.get("grant_type")
                if wanted is not None and wanted != grant_type:
                    continue
                remaining = int(fault.get("count", 1)) - 1
                if remaining > 0:
                    self._sso_faults[index] = {**fault, "count": remaining}
                else:
                    del self._sso_faults[index]
                return fault
        return None

    def take_owner_change(self, character_id: int) -> bool:
        """True once if the character's next refresh must change owner."""
        with self._lock:
            if character_id not in self._owner_changes:
                return False
            self._owner_changes.discard(character_id)
            return True

    def take_esi_fault(self, path: str, page: int = 1) -> Mapping[str, Any] | None:
        """The injected answer for ``path`` (and ``page``, when the fault
        names one), if any; its count goes down."""
        with self._lock:
            for index, fault in enumerate(self._esi_faults):
                if fault.get("page") not in (None, page):
                    continue
                if str(fault.get("path_contains", "")) in path:
                    remaining = int(fault.get("count", 1)) - 1
                    if remaining > 0:
                        self._esi_faults[index] = {**fault, "count": remaining}
                    else:
                        del self._esi_faults[index]
                    return fault
        return None

    def _apply(self, config: EmulatorConfig) -> None:
        with self._lock:
            self._config = config
            self._sso_faults = collections.deque(dict(f) for f in config.sso_faults)
            self._esi_faults = [dict(f) for f in config.esi_faults]
            self._owner_changes = set(config.owner_changes)
