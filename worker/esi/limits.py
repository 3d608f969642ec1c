"""ESI's error budget and rate-limit buckets, tracked for every process at once.

Two limits guard ESI (ESI.md 3.6, 3.7): a fixed-window budget of errors
(``X-ESI-Error-Limit-Remain``/``-Reset``, then 420 on every route) and
floating-window token buckets per route group and caller
(``X-Ratelimit-*``, the spec's ``x-rate-limit``, then 429 with
``Retry-After``). :class:`Limiter` reserves before each request and
settles with the answer's headers, holding a request while it would
overspend. Its state (see :mod:`.limitstate`) lives in a
:class:`MemoryStore` (one process) or a :class:`RedisStore` (every process
sharing one Redis), updated in one optimistic ``WATCH`` transaction per
step so no two processes spend the same token.

Where ESI leaves a fact unverified, the limiter assumes the costlier
answer: errors on bucket-limited routes (which carry no budget headers)
count against the budget; ``Remaining`` may not include the request's own
cost; ``Retry-After`` and the budget reset may be rounded down; a request
costs 5 tokens until its answer says less. The rate-limit group of an
operation the spec does not name is learned from ESI's answers and shared;
until it is known, one request of that operation is in flight at a time.

A bucket is keyed as ESI keys it: group plus character on authed calls,
group plus the public caller otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import ConfigurationError, ErrorLimitedError, RateLimitedError
from ..metrics import esi as metrics
from .limitstate import (
    ERROR_WINDOW_S,
    EXPIRY_SLACK_S,
    IN_FLIGHT_STALE_S,
    RESERVED_COST,
    RESET_SLACK_S,
    Bucket,
    State,
    answer_cost,
    backoff_s,
    bucket_from_headers,
    effective,
    error_headers,
    number,
    operation_bucket,
    read_bucket,
    read_errors,
    read_operation,
    retry_after_s,
    spent,
)
from .limitstores import KEY_PREFIX, Decide, MemoryStore, RedisStore

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "KEY_PREFIX",
    "RESERVED_COST",
    "Bucket",
    "LimitLevels",
    "Limiter",
    "MemoryStore",
    "Permit",
    "RedisStore",
    "Thresholds",
    "check_thresholds",
    "declared_bucket",
    "limiter_from_settings",
    "shared_limiters",
]

ERRORS = "errors"
ERRORS_TTL_S = IN_FLIGHT_STALE_S + ERROR_WINDOW_S
OPERATION_TTL_S = 86400.0
MAX_HOLD_STEP_S = 5.0
PROBE_POLL_S = 0.02
PROBE_PATIENCE_S = 60.0
"""Real seconds a request waits for another's probe before probing itself."""


@dataclasses.dataclass(frozen=True)
class LimitLevels:
    """How close to ESI's limits things stand right now, for the gauges.

    ``remaining`` and ``reset_s`` are ``None`` until ESI has sent its error
    budget or this process has seen an error counted against it; once the
    window has passed they read the full budget and 0. ``shared`` tells a
    limiter whose state is in Redis.
    """

    remaining: int | None
    reset_s: float | None
    fill: dict[str, float]
    shared: bool


@dataclasses.dataclass
class Permit:
    """A reservation for one request, given back by :meth:`Limiter.settle`.

    ``probe`` is true for the one request of an operation whose rate-limit
    group is still unknown.
    """

    request_id: str
    bucket: Bucket | None
    caller: str
    operation: str = "unknown"
    held_s: float = 0.0
    probe: bool = False


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """How close to each limit the limiter lets requests go."""

    error_budget: int = 100
    error_threshold: int = 20
    margin: float = 0.05
    max_wait_s: float = 900.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The thresholds the settings name."""
        return cls(
            settings.esi_error_budget,
            settings.esi_error_limit_threshold,
            settings.esi_rate_limit_margin,
            settings.esi_limit_max_wait_s,
        )


class Limiter:
    """Holds requests back before ESI's limits are hit; shared via its store.

    :param store: where the state lives (:class:`MemoryStore`,
        :class:`RedisStore`).
    :param fallback: used while ``store`` fails (Redis down), so a broken
        shared store slows nothing down to a halt and fails no call.
    """

    def __init__(
        self,
        store: MemoryStore | RedisStore,
        thresholds: Thresholds | None = None,
        *,
        fallback: MemoryStore | None = None,
    ) -> None:
        self.store = store
        self.thresholds = thresholds or Thresholds()
        self.fallback = fallback or MemoryStore()
        # What the shared operation documents said last, so the first
        # attempt of a reservation usually names the right bucket key.
        self._groups: dict[str, Bucket | None] = {}
        self._settled = threading.Condition()
        # For levels(): the buckets this process spent from, and until when
        # that spending can still show; and whether any budget was told.
        self._touched: dict[str, tuple[Bucket, float]] = {}
        self._budget_told = False

    def acquire(
        self,
        operation: str,
        declared: Bucket | None,
        caller: str,
        clock: Clock,
    ) -> Permit:
        """Reserve room for one request, holding until there is some.

        :param declared: the bucket the spec's ``x-rate-limit`` names, if
            any; what ESI's answers said wins over it.
        :raises ErrorLimitedError: the error budget would stay spent for
            longer than ``max_wait_s``; nothing was sent.
        :raises RateLimitedError: the bucket stays full longer than that.
        """
        guess = self._groups.get(operation, declared)
        permit = Permit(uuid.uuid4().hex, guess, caller, operation)
        waited_s = 0.0
        while True:
            reserve = functools.partial(
                self._reserve,
                permit=permit,
                declared=declared,
                now=clock.time(),
                patient=waited_s < PROBE_PATIENCE_S,
            )
            verdict = self._run(permit, [permit.bucket], reserve)
            if verdict is None:
                return permit
            reason, value = verdict
            if reason == "regroup":
                permit.bucket, learned = value
                self._remember_group(operation, permit.bucket, learned)
            elif reason == "probe":
                waited_s += self._await_probe()
            else:
                self._hold(permit, reason, value, clock)

    def bucket_for(self, operation: str, declared: Bucket | None) -> Bucket | None:
        """The operation's bucket: as ESI's answers last named it, else the spec's."""
        return self._groups.get(operation, declared)

    def settle(
        self,
        permit: Permit,
        status: int | None,
        headers: Mapping[str, str],
        operation: str,
        clock: Clock,
    ) -> None:
        """Record an answer (``status`` None: no answer) against the limits.

        :param operation: as given to :meth:`acquire` (the permit keeps it).
        """
        told = bucket_from_headers(headers)
        if status in (420, 429):
            metrics.ESI_LIMITED.labels(str(status)).inc()
        if status is not None and (status == 420 or status >= 400 or (
            "X-ESI-Error-Limit-Remain" in headers
        )):
            self._budget_told = True
        buckets = [permit.bucket] if permit.bucket is not None else []
        if told is not None and all(b.group != told.group for b in buckets):
            buckets.append(told)

        now = clock.time()
        record = functools.partial(
            self._record,
            permit=permit,
            status=status,
            headers=headers,
            buckets=buckets,
            now=now,
        )
        self._run(permit, buckets, record)
        self._remember(permit.operation, told, status, headers)
        for bucket in buckets:
            until = now + bucket.window_s + EXPIRY_SLACK_S
            self._touched[f"bucket:{bucket.group}:{permit.caller}"] = (bucket, until)
        if permit.probe:
            with self._settled:
                self._settled.notify_all()

    def levels(self, clock: Clock) -> LimitLevels:
        """The error budget and the fill of every bucket this process used.

        Read from the store as of ``clock``'s now, so values decay while no
        answer arrives: spending leaves a bucket with its window, and the
        error budget is whole again once ESI's window has reset.
        """
        now = clock.time()
        touched = self._recent_buckets(now)
        keys = [ERRORS, *touched]
        errors, fill = self._read(keys, functools.partial(
            self._levels, touched=touched, now=now))
        remaining, reset_s = None, None
        budget = self.thresholds.error_budget
        seen = sorted(errors["seen"])
        if errors["remain"] is not None:
            remaining = errors["remain"]
            reset_s = max(0.0, (errors["reset_at"] or now) - now)
        elif self._budget_told or seen:
            # Errors counted without budget headers, in a sliding window.
            remaining = max(0, budget - len(seen))
            reset_s = max(0.0, seen[0] + ERROR_WINDOW_S - now) if seen else 0.0
        return LimitLevels(remaining, reset_s, fill, isinstance(self.store, RedisStore))

    # -- the two steps, pure functions of the stored states ----------------

    def _reserve(
        self,
        states: list[State],
        permit: Permit,
        declared: Bucket | None,
        now: float,
        patient: bool,
    ) -> tuple[tuple[str, Any] | None, list[State | None]]:
        errors, op = read_errors(states[0], now), read_operation(states[1], now)
        repairs: list[State | None] = [
            errors.state if errors.bad else None,
            op.state if op.bad else None,
        ]
        repairs += [None] * (len(states) - 2)
        permit.probe = False

        hold = self._error_wait(errors.state, now)
        if hold is not None:
            return ("error_limit", hold), repairs
        if op.state["blocked_until"] > now:
            return ("rate_limit", op.state["blocked_until"] - now), repairs
        learned = op.state["learned"]
        shared = operation_bucket(op.state) if learned else declared
        if _group(shared) != _group(permit.bucket):
            return ("regroup", (shared, learned)), repairs

        if not learned and declared is None:
            holder = op.state["probe"]
            if holder is not None and holder[0] != permit.request_id and patient:
                return ("probe", None), repairs
            op.state["probe"] = [permit.request_id, now]
            repairs[1], permit.probe = op.state, True

        if permit.bucket is not None:
            bucket = read_bucket(states[2], now, permit.bucket)
            wait_s = self._bucket_wait(
                bucket.state, effective(bucket.state, permit.bucket), now
            )
            if wait_s > 0:
                repairs[2] = bucket.state if bucket.bad else None
                permit.probe = False
                return ("rate_limit", wait_s), repairs
            bucket.state["entries"].append([now, RESERVED_COST, permit.request_id])
            repairs[2] = bucket.state
        errors.state["in_flight"][permit.request_id] = now
        repairs[0] = errors.state
        return None, repairs

    def _record(
        self,
        states: list[State],
        permit: Permit,
        status: int | None,
        headers: Mapping[str, str],
        buckets: list[Bucket],
        now: float,
    ) -> tuple[None, list[State | None]]:
        errors = read_errors(states[0], now).state
        errors["in_flight"].pop(permit.request_id, None)
        budget = error_headers(headers)
        _note_errors(errors, status, budget, now)

        op = read_operation(states[1], now)
        before = dict(op.state)
        told = bucket_from_headers(headers)
        _note_operation(op.state, permit, status, headers, told, budget, now)
        out: list[State | None] = [errors]
        out.append(op.state if op.bad or op.state != before else None)

        for bucket, raw in zip(buckets, states[2:], strict=True):
            state = read_bucket(raw, now, bucket).state
            _note_bucket(state, bucket, permit, status, headers, told, now)
            if told is not None and told.group == bucket.group:
                _block_bucket(state, status, headers, op.state["strikes"], now)
            out.append(state)
        return None, out

    def _levels(
        self, states: list[State], touched: dict[str, Bucket], now: float
    ) -> tuple[tuple[State, dict[str, float]], list[State | None]]:
        fill: dict[str, float] = {}
        for raw, declared in zip(states[1:], touched.values(), strict=True):
            state = read_bucket(raw, now, declared).state
            bucket = effective(state, declared)
            share = min(1.0, spent(state) / max(1, bucket.max_tokens))
            fill[bucket.group] = max(fill.get(bucket.group, 0.0), share)
        errors = read_errors(states[0], now).state
        return (errors, fill), [None] * len(states)

    def _error_wait(self, errors: State, now: float) -> float | None:
        """Seconds to hold for the error budget, or None when there is room."""
        limits = self.thresholds
        in_flight = len(errors["in_flight"])
        remain = errors["remain"]
        if remain is not None and remain - in_flight <= limits.error_threshold:
            reset_at = errors["reset_at"]
            return max(0.05, reset_at - now) if reset_at is not None else 0.25

        # Errors seen without budget headers, in a sliding window: every
        # fixed window of ESI's that ends later holds no more of them.
        seen = sorted(errors["seen"])
        room = limits.error_budget - len(seen) - in_flight
        if room > limits.error_threshold:
            return None
        excess = limits.error_threshold - room + 1
        if excess > len(seen):
            return 0.25  # requests in flight alone fill it; they end soon
        return max(0.05, seen[excess - 1] + ERROR_WINDOW_S - now)

    def _bucket_wait(self, state: State, bucket: Bucket, now: float) -> float:
        if state["blocked_until"] > now:
            return float(state["blocked_until"] - now)
        margin = math.ceil(bucket.max_tokens * self.thresholds.margin)
        usable = max(RESERVED_COST, bucket.max_tokens - margin)
        used = spent(state)
        if used + RESERVED_COST <= usable:
            return 0.0
        pending = False
        for at, cost, request_id in sorted(state["entries"], key=lambda e: e[0]):
            if request_id is not None:
                pending = True  # a reservation frees only when settled
                continue
            used -= cost
            if used + RESERVED_COST <= usable:
                return max(0.05, at + bucket.window_s + EXPIRY_SLACK_S - now)
        return 0.25 if pending else bucket.window_s

    # -- plumbing ------------------------------------------------------------

    def _run(
        self, permit: Permit, buckets: Sequence[Bucket | None], decide: Decide
    ) -> Any:
        keys = [ERRORS, f"op:{permit.operation}"]
        ttls_s = [ERRORS_TTL_S, OPERATION_TTL_S]
        for bucket in buckets:
            if bucket is not None:
                keys.append(f"bucket:{bucket.group}:{permit.caller}")
                ttls_s.append(bucket.window_s + IN_FLIGHT_STALE_S + 60.0)
        try:
            return self.store.transact(keys, decide, ttls_s)
        except Exception as exc:
            if self.store is self.fallback:
                raise
            metrics.CACHE_ERRORS.labels("limits").inc()
            log.warning(
                "shared ESI limits unavailable (%s); limiting in this process",
                type(exc).__name__,
            )
            return self.fallback.transact(keys, decide, ttls_s)

    def _read(self, keys: list[str], decide: Decide) -> Any:
        ttls_s = [0.0] * len(keys)  # nothing is written
        try:
            return self.store.transact(keys, decide, ttls_s)
        except Exception:  # noqa: BLE001 (Redis down: what this process knows)
            return self.fallback.transact(keys, decide, ttls_s)

    def _recent_buckets(self, now: float) -> dict[str, Bucket]:
        # Once a window has passed since this process last spent from a
        # bucket, nothing of its spending is left there to show. dict()
        # copies in one step, while page threads may be settling.
        recent = {}
        for key, (bucket, until) in dict(self._touched).items():
            if until < now:
                self._touched.pop(key, None)
            else:
                recent[key] = bucket
        return recent

    def _remember(
        self,
        operation: str,
        told: Bucket | None,
        status: int | None,
        headers: Mapping[str, str],
    ) -> None:
        if told is not None:
            self._groups[operation] = told
        elif _no_bucket(status, error_headers(headers)):
            self._groups[operation] = None

    def _remember_group(
        self, operation: str, bucket: Bucket | None, learned: bool
    ) -> None:
        if learned:
            self._groups[operation] = bucket
        else:
            self._groups.pop(operation, None)

    def _await_probe(self) -> float:
        """Wait (real time) for the probe of another request to settle.

        Not the injected clock: this waits for an answer on the wire, not
        for a limit to run out, and a frozen clock would never see it.
        """
        started = time.monotonic()
        with self._settled:
            self._settled.wait(PROBE_POLL_S)
        return time.monotonic() - started

    def _hold(self, permit: Permit, reason: str, wait_s: float, clock: Clock) -> None:
        operation = permit.operation
        if permit.held_s + wait_s > self.thresholds.max_wait_s:
            message = (
                f"{operation} not sent: ESI's {reason.replace('_', ' ')} would hold "
                f"it {wait_s:.0f} s more, past esi_limit_max_wait_s"
            )
            if reason == "error_limit":
                raise ErrorLimitedError(message, reset_s=wait_s, operation=operation)
            group = permit.bucket.group if permit.bucket else None
            raise RateLimitedError(
                message, retry_after_s=wait_s, group=group, operation=operation
            )
        step = min(wait_s, MAX_HOLD_STEP_S)
        if permit.held_s == 0:
            log.info(
                "holding %s for %s (%.2f s)",
                operation,
                reason,
                wait_s,
                extra={"operation": operation, "reason": reason},
            )
        clock.sleep(step)
        permit.held_s += step
        metrics.ESI_HELD_SECONDS.labels(reason).inc(step)


_shared: dict[tuple[Any, ...], Limiter] = {}
_shared_clocks: dict[tuple[Any, ...], Clock] = {}
_shared_lock = threading.Lock()


def limiter_from_settings(settings: Settings, clock: Clock) -> Limiter:
    """The process-wide limiter: in Redis when ``redis_url`` is set.

    One per clock and thresholds as well, since the in-process state counts
    that clock's seconds.
    """
    thresholds = Thresholds.from_settings(settings)
    prefix = settings.esi_redis_prefix + "limits:"
    key = (settings.redis_url or None, prefix, thresholds, id(clock))
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            check_thresholds(thresholds)
            store = (
                RedisStore.from_url(settings.redis_url, prefix=prefix)
                if settings.redis_url
                else MemoryStore()
            )
            limiter = Limiter(store, thresholds)
            _shared[key], _shared_clocks[key] = limiter, clock
        return limiter


def shared_limiters() -> list[tuple[Limiter, Clock]]:
    """This process's limiters with their clocks, for the limit gauges."""
    with _shared_lock:
        return [(limiter, _shared_clocks[key]) for key, limiter in _shared.items()]


def declared_bucket(op_spec: Mapping[str, Any]) -> Bucket | None:
    """The ``x-rate-limit`` of an operation's spec, if it has a usable one."""
    limit = op_spec.get("x-rate-limit")
    if not isinstance(limit, Mapping):
        return None
    try:
        return Bucket.parse(
            str(limit["group"]), f"{int(limit['max-tokens'])}/{limit['window-size']}"
        )
    except (KeyError, TypeError, ValueError):
        return None


def check_thresholds(thresholds: Thresholds) -> None:
    """:raises ConfigurationError: the threshold leaves no budget to spend."""
    if thresholds.error_threshold >= thresholds.error_budget:
        raise ConfigurationError(
            "esi_error_limit_threshold must be below esi_error_budget, got "
            f"{thresholds.error_threshold} >= {thresholds.error_budget}"
        )




# -- what an answer changes -----------------------------------------------------


def _note_errors(
    errors: State,
    status: int | None,
    budget: tuple[int, float] | None,
    now: float,
) -> None:
    failed = status is None or status >= 400
    if budget is not None:
        remain, reset_s = budget
        if failed:
            remain = max(0, remain - 1)  # Remain may not count this error yet
        reset_at = now + reset_s + RESET_SLACK_S
        current = errors["reset_at"]
        # Answers arrive out of order; inside one window the lowest wins.
        if current is None or reset_at > current + 1.5:
            errors["remain"], errors["reset_at"] = remain, reset_at
        else:
            known = errors["remain"]
            errors["remain"] = remain if known is None else min(known, remain)
    elif failed:
        # No budget headers (a bucket-limited route, no answer at all): the
        # error may still count, so it is counted here.
        errors["seen"].append(now)
        if errors["remain"] is not None:
            errors["remain"] = max(0, errors["remain"] - 1)
    if status == 420:
        errors["remain"] = 0
        if budget is None or errors["reset_at"] is None:
            reset_s = budget[1] if budget is not None else ERROR_WINDOW_S
            errors["reset_at"] = now + reset_s + RESET_SLACK_S


def _note_operation(
    op: State,
    permit: Permit,
    status: int | None,
    headers: Mapping[str, str],
    told: Bucket | None,
    budget: tuple[int, float] | None,
    now: float,
) -> None:
    if op["probe"] is not None and op["probe"][0] == permit.request_id:
        op["probe"] = None
    if told is not None:
        limit = [told.max_tokens, told.window_s]
        op.update(learned=True, group=told.group, limit=limit)
    elif _no_bucket(status, budget):
        op.update(learned=True, group=None, limit=None)

    if status == 429:
        op["strikes"] += 1
        if told is None:
            # A game-side limiter's 429 (ESI.md 3.7): the operation waits.
            op["blocked_until"] = max(
                op["blocked_until"], now + _wait_after_429(headers, op["strikes"], now)
            )
    elif status is not None and status < 400:
        op["strikes"] = 0


def _note_bucket(
    state: State,
    bucket: Bucket,
    permit: Permit,
    status: int | None,
    headers: Mapping[str, str],
    told: Bucket | None,
    now: float,
) -> None:
    """Turn the reservation into the answer's cost, then trust ESI's count."""
    cost = answer_cost(headers, status)
    is_told = told is not None and told.group == bucket.group
    own = next((e for e in state["entries"] if e[2] == permit.request_id), None)
    if own is not None and told is not None and not is_told:
        state["entries"].remove(own)  # ESI named another group
    elif own is not None:
        # Timed at the answer: ESI charged it no earlier, so it returns no
        # earlier than a window from now, however slow the request was.
        own[:] = [now, cost, None]
    elif is_told:
        state["entries"].append([now, cost, None])
    if told is None or not is_told:
        return

    state["limit"] = [told.max_tokens, told.window_s]
    remaining = number(headers.get("X-Ratelimit-Remaining"))
    if remaining is not None:
        # Spending we did not see (other hosts, earlier runs) shows here.
        # Whether Remaining already counts this answer is unverified
        # (ESI.md 3.7); assuming not over-counts by one cost at most.
        unseen = told.max_tokens - remaining + cost - spent(state)
        if unseen > 0:
            state["entries"].append([now, math.ceil(unseen), None])


def _block_bucket(
    state: State,
    status: int | None,
    headers: Mapping[str, str],
    strikes: int,
    now: float,
) -> None:
    if status == 429:
        wait_s = _wait_after_429(headers, strikes, now)
        state["blocked_until"] = max(state["blocked_until"], now + wait_s)


def _wait_after_429(headers: Mapping[str, str], strikes: int, now: float) -> float:
    retry_after = retry_after_s(headers, now)
    if retry_after is None:
        return backoff_s(strikes)
    return retry_after + RESET_SLACK_S


def _no_bucket(status: int | None, budget: tuple[int, float] | None) -> bool:
    """Whether an answer without bucket headers says its route has none.

    The two header sets never come together (ESI.md 3.3) and a limited
    route sends its set on every answer it makes itself, so a 2xx-4xx
    without one says so. A 420 does not: ESI sends it on every route,
    with the budget headers; nor a 429 (maybe a game-side limiter), a 5xx
    (maybe a gateway), or no answer at all.
    """
    if status is None or status in (420, 429) or status >= 500:
        return False
    return budget is not None or status < 400


def _group(bucket: Bucket | None) -> str | None:
    return bucket.group if bucket is not None else None
