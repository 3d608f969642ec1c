"""Job timeouts: a watchdog thread stops runs that outlive their timeout.

dramatiq's own time limit only starts when its CLI boots the broker, and
it covers only actors; the worker builds its workers itself and also runs
jobs outside dramatiq (``esi-worker jobs run``). So every run is watched
here, on the runtime's clock (tests move it instead of waiting).

At the deadline the watchdog first records the run as timed out, then
raises :class:`TimeLimitExceeded` in the run's thread. CPython delivers
such an exception only between bytecodes: a thread blocked in a call
that never returns to Python (a socket read without a timeout, a lock
wait) keeps running until the call returns, but its record already says
it timed out, and its subject stays taken, so no second run of it starts.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from dramatiq.middleware.time_limit import TimeLimitExceeded

if TYPE_CHECKING:
    from ..clock import Clock

log = logging.getLogger(__name__)

__all__ = ["POLL_S", "RunWatch", "TimeLimitExceeded", "Watchdog", "watchdog"]

POLL_S = 0.05


class RunWatch:
    """One run under watch: its thread, its deadline, what to do at the deadline.

    Use it as a context manager around the job call, in the run's thread.
    """

    def __init__(
        self,
        owner: Watchdog,
        clock: Clock,
        timeout_s: float,
        on_timeout: Callable[[], None],
    ) -> None:
        self.timeout_s = timeout_s
        self.fired = False
        self._owner = owner
        self._clock = clock
        self._deadline = clock.monotonic() + timeout_s
        self._on_timeout = on_timeout
        self._thread_id = threading.get_ident()
        self._done = False
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._thread_id = threading.get_ident()
        self._owner.add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._owner.remove(self)
        with self._lock:
            self._done = True
            if self.fired:
                # Fired but maybe not delivered yet: it must not land in
                # the code that records the run.
                _set_async_exception(self._thread_id, None)

    def expired(self) -> bool:
        """Whether the deadline has passed on the run's clock."""
        return self._clock.monotonic() >= self._deadline

    def fire(self) -> bool:
        """Interrupt the run's thread once; ``False`` if it finished meanwhile."""
        with self._lock:
            if self._done or self.fired:
                return False
            self.fired = True
            _set_async_exception(self._thread_id, TimeLimitExceeded)
        try:
            self._on_timeout()
        except Exception:  # a failed record must not stop the watchdog
            log.exception("recording a timed-out run failed")
        return True


class Watchdog:
    """The thread that checks every watched run's deadline, started on first use."""

    def __init__(self, poll_s: float = POLL_S) -> None:
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._watches: set[RunWatch] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self, clock: Clock, timeout_s: float, on_timeout: Callable[[], None]
    ) -> RunWatch:
        """A watch for a run of ``timeout_s`` seconds, armed when entered."""
        return RunWatch(self, clock, timeout_s, on_timeout)

    def add(self, watch: RunWatch) -> None:
        """Start watching ``watch``."""
        with self._lock:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="esi-worker-watchdog", daemon=True
                )
                self._thread.start()

    def remove(self, watch: RunWatch) -> None:
        """Stop watching ``watch`` (its run is over)."""
        with self._lock:
            self._watches.discard(watch)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._poll_s)
            with self._lock:
                due = [watch for watch in self._watches if watch.expired()]
                self._watches.difference_update(due)
            for watch in due:
                if watch.fire():
                    log.warning(
                        "a run passed its timeout of %g s and was interrupted",
                        watch.timeout_s,
                    )


def _set_async_exception(thread_id: int, exception: type | None) -> None:
    # CPython's documented hook (used by dramatiq's TimeLimit too); None
    # clears an exception that was set but not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id),
        ctypes.py_object(exception) if exception is not None else None,
    )


watchdog = Watchdog()
