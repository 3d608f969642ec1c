"""ESI's error budget and rate-limit buckets, tracked for every process at once.

Two limits guard ESI (ESI.md 3.6, 3.7): a fixed-window budget of errors
(``X-ESI-Error-Limit-Remain``/``-Reset``, then 420 on every route) and
floating-window token buckets per route group and caller
(``X-Ratelimit-*``, the spec's ``x-rate-limit``, then 429 with
``Retry-After``). :class:`Limiter` reserves before each request and
settles with the answer's headers, holding a request while it would
overspend. Its state lives in a :class:`MemoryStore` (one process) or a
:class:`RedisStore` (every process sharing one Redis), updated in one
optimistic ``WATCH`` transaction per step so no two processes spend the
same token.

A bucket is keyed as ESI keys it: group plus character on authed calls,
group plus the public caller otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import ConfigurationError, ErrorLimitedError, RateLimitedError
from ..metrics import esi as metrics

if TYPE_CHECKING:
    import redis

    from ..settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "esi-worker:limits:"
ERRORS = "errors"
RESERVED_COST = 2  # what a 2xx costs; a 4xx costs 5 (ESI.md 3.7)
EXPIRY_SLACK_S = 2.0  # ESI starts a cost's window when the request arrives
IN_FLIGHT_STALE_S = 120.0
MAX_HOLD_STEP_S = 5.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

State = dict[str, Any]
Decide = Callable[[list[State]], tuple[Any, list[State | None]]]


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A rate-limit group as the spec or ESI's headers describe it."""

    group: str
    max_tokens: int
    window_s: float

    @classmethod
    def parse(cls, group: str, limit: str) -> Bucket | None:
        """``("status", "600/15m")`` -> a bucket; None if unreadable."""
        tokens, _, window = str(limit).partition("/")
        try:
            size, unit = float(window[:-1]), _UNITS[window[-1:]]
            return cls(group, int(tokens), size * unit)
        except (ValueError, KeyError):
            return None


@dataclasses.dataclass(frozen=True)
class LimitLevels:
    """How close to ESI's limits things stand right now, for the gauges.

    ``remaining`` and ``reset_s`` are ``None`` until ESI has sent its error
    budget; once its window has passed they read the full budget and 0.
    ``shared`` tells a limiter whose state is in Redis.
    """

    remaining: int | None
    reset_s: float | None
    fill: dict[str, float]
    shared: bool


@dataclasses.dataclass
class Permit:
    """A reservation for one request, given back by :meth:`Limiter.settle`."""

    request_id: str
    bucket: Bucket | None
    caller: str
    held_s: float = 0.0


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


class MemoryStore:
    """Limiter state in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, State] = {}

    def transact(self, keys: list[str], decide: Decide, ttl_s: float) -> Any:
        """Run ``decide`` on the states of ``keys`` and keep what it returns."""
        with self._lock:
            result, states = decide([dict(self._states.get(k, {})) for k in keys])
            for key, state in zip(keys, states, strict=True):
                if state is not None:
                    self._states[key] = state
            return result


class RedisStore:
    """Limiter state in Redis, shared by every process using it.

    Each step reads the states under ``WATCH`` and writes them back in one
    ``MULTI``; a concurrent write makes it start over. Values are JSON; an
    unreadable one is treated as empty, never executed.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str = KEY_PREFIX) -> RedisStore:
        """A store on the Redis at ``url``; connects on first use."""
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        return cls(client, prefix=prefix)

    def transact(self, keys: list[str], decide: Decide, ttl_s: float) -> Any:
        """Run ``decide`` atomically on the states of ``keys``."""
        import redis

        names = [self._prefix + k for k in keys]
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*names)
                    states = [_state(raw) for raw in pipe.mget(names)]
                    result, updated = decide(states)
                    pipe.multi()
                    for name, state in zip(names, updated, strict=True):
                        if state is not None:
                            pipe.set(name, json.dumps(state), px=int(ttl_s * 1000))
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue


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
        self._learned: dict[str, Bucket] = {}
        # For levels(): the buckets this process spent from, and when.
        self._touched: dict[str, tuple[Bucket, float]] = {}
        self._budget_told = False

    def bucket_for(self, operation: str, declared: Bucket | None) -> Bucket | None:
        """The operation's bucket: as ESI's headers last named it, else the spec's."""
        return self._learned.get(operation) or declared

    def acquire(
        self, operation: str, bucket: Bucket | None, caller: str, clock: Clock
    ) -> Permit:
        """Reserve room for one request, holding until there is some.

        :raises ErrorLimitedError: the error budget would stay spent for
            longer than ``max_wait_s``; nothing was sent.
        :raises RateLimitedError: the bucket stays full longer than that.
        """
        permit = Permit(uuid.uuid4().hex, bucket, caller)
        while True:
            now = clock.time()
            verdict = self._run(
                permit, functools.partial(self._reserve, permit=permit, now=now)
            )
            if verdict is None:
                return permit
            reason, wait_s = verdict
            self._hold(permit, operation, reason, wait_s, clock)

    def settle(
        self,
        permit: Permit,
        status: int | None,
        headers: Mapping[str, str],
        operation: str,
        clock: Clock,
    ) -> None:
        """Record an answer (``status`` None: no answer) against the limits."""
        learned = _bucket_from_headers(headers)
        if learned is not None:
            self._learned[operation] = learned
            if permit.bucket is None:
                permit.bucket = learned
        if status in (420, 429):
            metrics.ESI_LIMITED.labels(str(status)).inc()
        if status == 420 or "X-ESI-Error-Limit-Remain" in headers:
            self._budget_told = True
        now = clock.time()
        self._run(permit, lambda s: self._record(s, permit, status, headers, now))
        if permit.bucket is not None:
            until = now + permit.bucket.window_s + EXPIRY_SLACK_S
            self._touched[_bucket_key(permit)] = (permit.bucket, until)

    def levels(self, clock: Clock) -> LimitLevels:
        """The error budget and the fill of every bucket this process used.

        Read from the store as of ``clock``'s now, so values decay while no
        answer arrives: spending leaves a bucket with its window, and the
        error budget is whole again once ESI's window has reset.
        """
        now = clock.time()
        touched = self._recent_buckets(now)
        keys = [ERRORS, *touched]
        errors, fill = self._read(keys, lambda s: self._levels(s, touched, now))
        remaining, reset_s = None, None
        if errors["remain"] is not None:
            remaining, reset_at = errors["remain"], errors["reset_at"] or now
            reset_s = max(0.0, reset_at - now)
        elif self._budget_told:
            remaining, reset_s = self.thresholds.error_budget, 0.0
        return LimitLevels(remaining, reset_s, fill, isinstance(self.store, RedisStore))

    # -- the two steps, pure functions of the stored states ----------------

    def _reserve(
        self, states: list[State], permit: Permit, now: float
    ) -> tuple[tuple[str, float] | None, list[State | None]]:
        errors = _errors(states[0], now)
        limits = self.thresholds
        known = errors["remain"] if errors["remain"] is not None else limits.error_budget
        if known - len(errors["in_flight"]) <= limits.error_threshold:
            reset_at = errors["reset_at"]
            wait_s = reset_at - now if reset_at is not None else 0.25
            return ("error_limit", max(0.05, wait_s)), [None] * len(states)

        bucket_state = None
        if permit.bucket is not None:
            bucket_state = _bucket(states[1], now, permit.bucket)
            wait_s = self._bucket_wait(bucket_state, _effective(bucket_state, permit), now)
            if wait_s > 0:
                return ("rate_limit", wait_s), [None] * len(states)
            bucket_state["entries"].append([now, RESERVED_COST])
        errors["in_flight"][permit.request_id] = now
        return None, [errors, bucket_state] if permit.bucket else [errors]

    def _record(
        self,
        states: list[State],
        permit: Permit,
        status: int | None,
        headers: Mapping[str, str],
        now: float,
    ) -> tuple[None, list[State | None]]:
        errors = _errors(states[0], now)
        errors["in_flight"].pop(permit.request_id, None)
        _note_error_headers(errors, status, headers, now)
        if permit.bucket is None:
            return None, [errors]

        bucket_state = _bucket(states[1], now, permit.bucket)
        told = _bucket_from_headers(headers)
        if told is not None:
            bucket_state["limit"] = [told.max_tokens, told.window_s]
        bucket = _effective(bucket_state, permit)
        _note_bucket_headers(bucket_state, bucket, status, headers, now)
        return None, [errors, bucket_state]

    def _levels(
        self, states: list[State], touched: dict[str, Bucket], now: float
    ) -> tuple[tuple[State, dict[str, float]], list[State | None]]:
        fill: dict[str, float] = {}
        for state, declared in zip(states[1:], touched.values(), strict=True):
            bucket = _limit_of(state, declared)
            used = sum(c for _, c in _bucket(state, now, bucket)["entries"])
            share = min(1.0, used / max(1, bucket.max_tokens))
            fill[bucket.group] = max(fill.get(bucket.group, 0.0), share)
        return (_errors(states[0], now), fill), [None] * len(states)

    def _bucket_wait(self, state: State, bucket: Bucket, now: float) -> float:
        if state["blocked_until"] > now:
            return state["blocked_until"] - now
        usable = bucket.max_tokens - math.ceil(bucket.max_tokens * self.thresholds.margin)
        usable = max(RESERVED_COST, usable)
        used = sum(cost for _, cost in state["entries"])
        if used + RESERVED_COST <= usable:
            return 0.0
        for at, cost in state["entries"]:
            used -= cost
            if used + RESERVED_COST <= usable:
                return max(0.05, at + bucket.window_s + EXPIRY_SLACK_S - now)
        return bucket.window_s

    # -- plumbing ------------------------------------------------------------

    def _run(self, permit: Permit, decide: Decide) -> Any:
        keys = [ERRORS]
        ttl_s = IN_FLIGHT_STALE_S + 60.0
        if permit.bucket is not None:
            keys.append(_bucket_key(permit))
            ttl_s = max(ttl_s, permit.bucket.window_s + 60.0)
        try:
            return self.store.transact(keys, decide, ttl_s)
        except Exception as exc:
            if self.store is self.fallback:
                raise
            metrics.CACHE_ERRORS.labels("limits").inc()
            log.warning(
                "shared ESI limits unavailable (%s); limiting in this process",
                type(exc).__name__,
            )
            return self.fallback.transact(keys, decide, ttl_s)

    def _read(self, keys: list[str], decide: Decide) -> Any:
        try:
            return self.store.transact(keys, decide, 0.0)
        except Exception:  # noqa: BLE001 (Redis down: what this process knows)
            return self.fallback.transact(keys, decide, 0.0)

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

    def _hold(
        self, permit: Permit, operation: str, reason: str, wait_s: float, clock: Clock
    ) -> None:
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


_shared: dict[tuple[str | None, int], Limiter] = {}
_shared_clocks: dict[tuple[str | None, int], Clock] = {}
_shared_lock = threading.Lock()


def limiter_from_settings(settings: Settings, clock: Clock) -> Limiter:
    """The process-wide limiter: in Redis when ``redis_url`` is set.

    One per clock as well, since the in-process state counts that clock's
    seconds.
    """
    key = (settings.redis_url or None, id(clock))
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            thresholds = Thresholds.from_settings(settings)
            check_thresholds(thresholds)
            store = (
                RedisStore.from_url(settings.redis_url)
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


# -- state documents -----------------------------------------------------------


def _state(raw: bytes | str | None) -> State:
    if raw is None:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        log.warning("dropping an unreadable shared limiter state")
        return {}
    return state if isinstance(state, dict) else {}


def _errors(state: State, now: float) -> State:
    """The error-budget state, its window rolled over once it has reset."""
    remain, reset_at = state.get("remain"), state.get("reset_at")
    if reset_at is not None and now >= reset_at:
        remain, reset_at = None, None
    in_flight = {
        k: v
        for k, v in (state.get("in_flight") or {}).items()
        if now - v < IN_FLIGHT_STALE_S
    }
    return {"remain": remain, "reset_at": reset_at, "in_flight": in_flight}


def _bucket(state: State, now: float, bucket: Bucket) -> State:
    limit = state.get("limit")
    window_s = float(limit[1]) if limit else bucket.window_s
    horizon = now - window_s - EXPIRY_SLACK_S
    entries = [e for e in state.get("entries") or () if e[0] > horizon]
    out = {"entries": entries, "blocked_until": state.get("blocked_until") or 0.0}
    if limit:
        out["limit"] = limit
    return out


def _bucket_key(permit: Permit) -> str:
    assert permit.bucket is not None
    return f"bucket:{permit.bucket.group}:{permit.caller}"


def _limit_of(state: State, declared: Bucket) -> Bucket:
    """The bucket as ESI's headers last described it, else as declared."""
    limit = state.get("limit")
    if not limit:
        return declared
    return Bucket(declared.group, int(limit[0]), float(limit[1]))


def _effective(state: State, permit: Permit) -> Bucket:
    """The bucket as ESI's headers last described it to any process."""
    assert permit.bucket is not None
    return _limit_of(state, permit.bucket)


def _note_error_headers(
    errors: State, status: int | None, headers: Mapping[str, str], now: float
) -> None:
    remain = _number(headers.get("X-ESI-Error-Limit-Remain"))
    reset_s = _number(headers.get("X-ESI-Error-Limit-Reset"))
    if remain is not None and reset_s is not None:
        reset_at = now + reset_s
        current = errors["reset_at"]
        # Answers arrive out of order; inside one window the lowest wins.
        if current is None or reset_at > current + 1.5:
            errors["remain"], errors["reset_at"] = int(remain), reset_at
        else:
            known = errors["remain"]
            errors["remain"] = int(remain) if known is None else min(known, int(remain))
    elif status is not None and status >= 400 and errors["remain"] is not None:
        errors["remain"] -= 1  # an error where ESI sent no budget headers
    if status == 420 and remain is None:
        errors["remain"] = 0
        errors["reset_at"] = now + (reset_s if reset_s is not None else 60.0)


def _note_bucket_headers(
    state: State,
    bucket: Bucket,
    status: int | None,
    headers: Mapping[str, str],
    now: float,
) -> None:
    cost = _number(headers.get("X-Ratelimit-Used"))
    if cost is not None and cost > RESERVED_COST:
        state["entries"].append([now, cost - RESERVED_COST])
    remaining = _number(headers.get("X-Ratelimit-Remaining"))
    if remaining is not None:
        # Spending we did not see (other hosts, earlier runs) shows here.
        unseen = bucket.max_tokens - remaining - sum(c for _, c in state["entries"])
        if unseen > 0:
            state["entries"].append([now, unseen])
    if status == 429:
        retry_after = _number(headers.get("Retry-After"))
        state["blocked_until"] = now + (retry_after if retry_after else 1.0)


def _bucket_from_headers(headers: Mapping[str, str]) -> Bucket | None:
    group, limit = headers.get("X-Ratelimit-Group"), headers.get("X-Ratelimit-Limit")
    if not group or not limit:
        return None
    return Bucket.parse(group, limit)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
