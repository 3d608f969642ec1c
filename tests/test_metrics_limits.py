"""The limit gauges: read from the limiter's state, so they decay and start absent."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from worker.clock import FrozenClock
from worker.esi.limits import Bucket, Limiter, MemoryStore, RedisStore
from worker.esi.limitstate import RESET_SLACK_S

REDIS_URL = "redis://127.0.0.1:6379/9"
START = dt.datetime(2026, 3, 2, 14, 0, 0, tzinfo=dt.UTC)
BUCKET = Bucket("char-asset", 100, 60.0)


def _answer(limiter: Limiter, clock: FrozenClock, headers: dict[str, str],
            bucket: Bucket | None = None, status: int = 200) -> None:
    permit = limiter.acquire("get_op", bucket, "character:1", clock)
    limiter.settle(permit, status, headers, "get_op", clock)


def _budget(remain: int, reset_s: int) -> dict[str, str]:
    return {"X-ESI-Error-Limit-Remain": str(remain),
            "X-ESI-Error-Limit-Reset": str(reset_s)}


def _bucket_headers(remaining: int) -> dict[str, str]:
    return {"X-Ratelimit-Group": "char-asset", "X-Ratelimit-Limit": "100/1m",
            "X-Ratelimit-Remaining": str(remaining), "X-Ratelimit-Used": "2"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def test_nothing_is_known_before_esi_has_answered(clock: FrozenClock) -> None:
    # given a limiter that has sent nothing
    limiter = Limiter(MemoryStore())

    # when its levels are read, then neither budget nor any bucket shows
    levels = limiter.levels(clock)
    assert (levels.remaining, levels.reset_s, levels.fill) == (None, None, {})


def test_the_error_budget_counts_down_to_its_reset_and_is_whole_after(
    clock: FrozenClock,
) -> None:
    # given ESI's word: 15 errors left, the window resets in 30 s
    limiter = Limiter(MemoryStore())
    _answer(limiter, clock, _budget(15, 30))

    # when time passes without any answer
    at_once = limiter.levels(clock)
    clock.advance(20)
    later = limiter.levels(clock)
    clock.advance(15)
    after_reset = limiter.levels(clock)

    # then the reset counts down, and once ESI's window has passed the
    # budget reads whole again instead of the stale 15
    # (the limiter waits RESET_SLACK_S past ESI's reset, which may be
    # rounded down, and so does the gauge)
    assert (at_once.remaining, at_once.reset_s) == (15, 30.0 + RESET_SLACK_S)
    assert (later.remaining, later.reset_s) == (15, 10.0 + RESET_SLACK_S)
    assert (after_reset.remaining, after_reset.reset_s) == (100, 0.0)


def test_a_bucket_shows_only_what_was_spent_within_its_window(
    clock: FrozenClock,
) -> None:
    # given an answer saying 60 of the bucket's 100 tokens are left
    limiter = Limiter(MemoryStore())
    _answer(limiter, clock, _bucket_headers(60), BUCKET)

    # when read at once, and again after the bucket's window has passed
    now = limiter.levels(clock)
    clock.advance(BUCKET.window_s + 5)
    later = limiter.levels(clock)

    # then the fill is 40 % at first (42 % if ESI's Remaining left out this
    # answer's own cost, which the limiter assumes), nothing once aged out
    assert set(now.fill) == {"char-asset"}
    assert 0.4 <= now.fill["char-asset"] <= 0.42
    assert later.fill.get("char-asset", 0.0) == 0.0


def test_a_second_process_sees_the_budget_in_the_shared_store(
    clock: FrozenClock,
) -> None:
    # given two limiters on one Redis, only the first told by ESI
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"esi-worker-test:{uuid.uuid4().hex}:"
    told = Limiter(RedisStore(client, prefix=prefix))
    other = Limiter(RedisStore(client, prefix=prefix))
    try:
        _answer(told, clock, _budget(42, 50))

        # when the second one's levels are read
        levels = other.levels(clock)
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)

    # then it reports ESI's budget too, as a shared limiter
    assert (levels.remaining, levels.reset_s, levels.shared) == (
        42, 50.0 + RESET_SLACK_S, True)


def test_levels_come_from_the_fallback_while_redis_is_down(clock: FrozenClock) -> None:
    # given a limiter whose Redis cannot be reached, told by ESI through
    # its fallback
    store = RedisStore(redis.Redis.from_url("redis://127.0.0.1:1/0",
                                            socket_connect_timeout=0.2))
    limiter = Limiter(store)
    _answer(limiter, clock, _budget(33, 40))

    # when its levels are read, then the scrape gets what this process knows
    assert limiter.levels(clock).remaining == 33


def test_a_process_that_called_esi_exports_the_limit_gauges(
    settings: Any, emulator: Any
) -> None:
    # given one ESI call through the process-wide limiter, on a route
    # outside any rate-limit group (ESI sends its error budget there)
    from worker.esi import esi_client_factory
    from worker.metrics.server import process_registry

    clock = FrozenClock(dt.datetime.now(dt.UTC))
    client = esi_client_factory(settings=settings, clock=clock)
    client.Universe.get_universe_types_type_id(type_id=35).result()

    # when the process's endpoint is scraped
    remaining = _samples(process_registry(), "esi_worker_error_limit_remaining")

    # then the budget is shown, for a limiter of this process alone (the
    # value is the lowest of the process's limiters: other tests' too)
    assert ("process",) in remaining


def _samples(registry: Any, name: str) -> dict[tuple[str, ...], float]:
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {
        tuple(s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }
