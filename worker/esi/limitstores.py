"""Where the ESI limiter keeps its documents: this process, or a shared Redis."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

KEY_PREFIX = "esi-worker:limits:"

State = dict[str, Any]
Decide = Callable[[list[State]], tuple[Any, list[State | None]]]


class MemoryStore:
    """Limiter state in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, State] = {}

    def transact(self, keys: list[str], decide: Decide, ttls_s: Sequence[float]) -> Any:
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

    def transact(self, keys: list[str], decide: Decide, ttls_s: Sequence[float]) -> Any:
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
                    for name, state, ttl_s in zip(names, updated, ttls_s, strict=True):
                        if state is not None:
                            pipe.set(name, json.dumps(state), px=int(ttl_s * 1000))
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue


def _state(raw: bytes | str | None) -> State:
    if raw is None:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        log.warning("dropping an unreadable shared limiter state")
        return {"_unreadable": True}
    return state if isinstance(state, dict) else {"_unreadable": True}
