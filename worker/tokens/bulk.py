"""What the refreshes of one bulk run share: its claim, its lease, its stop."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator

from .token import Token

# The outcome of a claimed token the run left without an SSO call; not a
# refresh, so no metric counts it.
NOT_ATTEMPTED = "not_attempted"


class RunStopped(Exception):
    """The run stopped while a refresh waited for an SSO slot (internal)."""


@dataclasses.dataclass
class RefreshRun:
    """What the refreshes of one bulk run share.

    ``claimed_at`` and ``lease_until`` come from the batch claim: a token
    whose lease changed since (another run took it over after the lease ran
    out, or another holder's failure set a back-off) is passed over. Once
    :meth:`stop` is called (the SSO refused our client credentials), every
    refresh of the run that has not called the SSO yet is passed over too.
    """

    claimed_at: dt.datetime | None = None
    lease_until: dt.datetime | None = None
    # At most this many SSO calls of the run at once; None: no bound here.
    sso_slots: threading.Semaphore | None = None
    _stopped: threading.Event = dataclasses.field(default_factory=threading.Event)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def stopped(self) -> bool:
        """Whether the run was told to stop."""
        return self._stopped.is_set()

    def stop(self) -> bool:
        """Tell the run to stop; ``True`` for the first caller only."""
        with self._lock:
            first = not self._stopped.is_set()
            self._stopped.set()
        return first

    @contextlib.contextmanager
    def sso_call(self) -> Iterator[None]:
        """Hold one of the run's SSO slots for the length of a call.

        Raises :class:`RunStopped` instead of calling when the run stopped
        while the refresh waited for its slot.
        """
        if self.sso_slots is None:
            yield
            return
        with self.sso_slots:
            if self.stopped:
                raise RunStopped
            yield

    def for_batch(
        self, claimed_at: dt.datetime, lease_until: dt.datetime
    ) -> RefreshRun:
        """This run (same stop) for one claimed batch."""
        return dataclasses.replace(self, claimed_at=claimed_at, lease_until=lease_until)

    def passes_over(self, current: Token) -> bool:
        """Whether this run must leave ``current`` (locked) alone."""
        if self.stopped:
            return True
        lease = self.lease_until
        return lease is not None and current.next_refresh_attempt != lease
