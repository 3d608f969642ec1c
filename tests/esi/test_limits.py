"""ESI's error budget and rate-limit buckets, shared by every process."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
import redis
import requests

from worker.clock import FrozenClock
from worker.errors import ErrorLimitedError, HTTPError, RateLimitedError
from worker.esi import MemoryCache, esi_client_factory
from worker.esi.limits import Limiter, MemoryStore, RedisStore, Thresholds

REDIS_URL = "redis://127.0.0.1:6379/0"

# One worker process, set up as the product sets one up: the limiter comes
# from settings.redis_url (under this test's key prefix). It calls one
# operation from two threads and prints what each call came to as JSON:
# 200, ESI's status, or "refused" when the limiter raised without sending.
WORKER = textwrap.dedent(
    """
    import json, sys, threading
    from worker.esi import MemoryCache, esi_client_factory
    from worker.errors import ErrorLimitedError, HTTPError, RateLimitedError
    from worker.settings import Settings

    base, redis_url, prefix, data_dir, calls, kind, overrides = sys.argv[1:8]
    settings = Settings(
        esi_base_url=base, sso_base_url=base, data_dir=data_dir,
        contact_email="tests@example.invalid", esi_retries=0,
        redis_url=redis_url, esi_redis_prefix=prefix, **json.loads(overrides),
    )
    client = esi_client_factory(settings=settings, cache=MemoryCache())
    statuses = []

    def call():
        if kind == "status":
            return client.Status.get_status()
        if kind == "war_not_found":
            return client.Wars.get_wars_war_id(war_id=999999999)
        return client.Universe.get_universe_types_type_id(type_id=999999999)

    def hammer():
        for _ in range(int(calls) // 2):
            try:
                call().result(ignore_cache=True)
                statuses.append(200)
            except (ErrorLimitedError, RateLimitedError) as exc:
                statuses.append(exc.status if exc.headers else "refused")
            except HTTPError as exc:
                statuses.append(exc.status)
            except Exception as exc:
                statuses.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"statuses": statuses}))
    """
)


def run_workers(
    emulator, redis_prefix: str, tmp_path: Path, calls: int, kind: str, **overrides
) -> list[list]:
    """Four worker processes at once; the outcome of each one's calls."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                emulator.base_url,
                REDIS_URL,
                redis_prefix,
                str(tmp_path / f"data{n}"),
                str(calls),
                kind,
                json.dumps(overrides),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1])["statuses"])
    return outputs


@pytest.mark.parametrize("source", ["auto", "bundled"])
def test_four_processes_hammering_one_group_never_get_429_or_420(
    emulator, redis_prefix, tmp_path, source
) -> None:
    # given a small bucket on the status group, shared by four processes;
    # the bundled Swagger spec names no group, so it is learned and shared
    emulator.configure(bucket_overrides={"status": "60/2s"}, cache_ttl_s=3600)

    # when each process calls it 16 times from two threads
    outputs = run_workers(
        emulator, redis_prefix, tmp_path, 16, "status",
        esi_spec_source=source, esi_limit_max_wait_s=120,
    )

    # then every call succeeded, and ESI never had to refuse one
    assert outputs == [[200] * 16] * 4, outputs
    assert emulator.stats()["esi_requests_by_status"] == {200: 64}


def test_processes_refuse_to_overspend_a_bucket_rather_than_get_429(
    emulator, redis_prefix, tmp_path
) -> None:
    # given a bucket far too small for the calls, refilling only in 10 min
    emulator.configure(bucket_overrides={"status": "40/10m"})

    # when four processes each make 16 calls, waiting at most 2 s
    outputs = run_workers(
        emulator, redis_prefix, tmp_path, 16, "status",
        esi_spec_source="bundled", esi_limit_max_wait_s=2,
    )

    # then the calls that did not fit were refused before they were sent
    seen = [s for statuses in outputs for s in statuses]
    assert set(seen) <= {200, "refused"}, outputs
    answered = emulator.stats()["esi_requests_by_status"]
    assert set(answered) == {200} and answered[200] <= 20
    assert seen.count("refused") == 64 - answered[200]


def test_burst_of_404s_stops_every_process_before_the_420(
    emulator, redis_prefix, tmp_path
) -> None:
    # given a budget of 40 errors in a window far longer than the test
    emulator.configure(error_budget=40, error_window_s=600)

    # when four processes each make 30 calls that all answer 404
    outputs = run_workers(
        emulator, redis_prefix, tmp_path, 30, "not_found",
        esi_error_budget=40, esi_error_limit_threshold=10, esi_limit_max_wait_s=2,
    )

    # then every process stopped at the shared threshold: no 420, ever
    seen = [s for statuses in outputs for s in statuses]
    assert set(seen) <= {404, "refused"}, outputs
    answered = emulator.stats()["esi_requests_by_status"]
    assert set(answered) == {404} and answered[404] <= 30
    assert seen.count("refused") == 120 - answered[404]


@pytest.mark.parametrize("counted", [True, False])
def test_404s_on_a_bucket_route_stop_every_process_before_the_420(
    emulator, redis_prefix, tmp_path, counted
) -> None:
    # given: a bucket-limited route's answers carry no budget headers, and
    # whether its errors spend the budget is unverified (both are served)
    emulator.configure(error_budget=40, error_window_s=600, bucket_errors_count=counted)

    # when four processes each make 30 calls to it that all answer 404
    outputs = run_workers(
        emulator, redis_prefix, tmp_path, 30, "war_not_found",
        esi_error_budget=40, esi_error_limit_threshold=10, esi_limit_max_wait_s=2,
    )

    # then the errors were counted all the same, and none came to a 420
    seen = [s for statuses in outputs for s in statuses]
    assert set(seen) <= {404, "refused"}, outputs
    answered = emulator.stats()["esi_requests_by_status"]
    assert set(answered) == {404} and answered[404] <= 30


# -- one process --------------------------------------------------------------


def limited_client(esi_settings, limiter: Limiter, clock: FrozenClock):
    """A client on its own limiter and frozen clock."""
    return esi_client_factory(
        settings=esi_settings, cache=MemoryCache(clock=clock), clock=clock,
        limiter=limiter,
    )


def test_429_retry_after_holds_the_next_request_of_the_group(
    emulator, esi_settings
) -> None:
    # given a 429 with Retry-After on the status group
    clock = FrozenClock()
    client = limited_client(esi_settings, Limiter(MemoryStore()), clock)
    emulator.configure(
        esi_faults=[{"status": 429, "path_contains": "/status/", "retry_after": 7}]
    )
    with pytest.raises(RateLimitedError):
        client.Status.get_status().result()
    before = clock.time()

    # when the next call is made
    client.Status.get_status().result()

    # then it waited out Retry-After before it was sent
    assert clock.time() - before >= 7
    assert emulator.stats()["esi_requests_by_status"] == {429: 1, 200: 1}


def test_low_error_budget_holds_requests_until_the_reset(emulator, esi_settings):
    # given ESI reports few errors left in its window
    clock = FrozenClock()
    limiter = Limiter(MemoryStore(), Thresholds(error_threshold=20))
    client = limited_client(esi_settings, limiter, clock)
    emulator.configure(error_budget=25)
    for _ in range(5):
        with pytest.raises(HTTPError):
            client.Universe.get_universe_types_type_id(type_id=999999999).result()
    before = clock.time()

    # when
    client.Status.get_status().result()

    # then the call waited for the window to reset before it went out
    assert clock.time() - before >= 30
    assert emulator.stats()["esi_requests_by_status"][404] == 5


def test_hold_longer_than_the_setting_raises_without_sending(
    emulator, esi_settings
) -> None:
    # given a spent budget with a reset far away
    clock = FrozenClock()
    limiter = Limiter(MemoryStore(), Thresholds(error_threshold=20, max_wait_s=5))
    client = limited_client(esi_settings, limiter, clock)
    emulator.configure(error_budget=21)
    with pytest.raises(HTTPError):
        client.Universe.get_universe_types_type_id(type_id=999999999).result()
    sent = emulator.stats()["esi_requests"]

    # when / then
    with pytest.raises(ErrorLimitedError) as caught:
        client.Status.get_status().result()
    assert "not sent" in str(caught.value)
    assert emulator.stats()["esi_requests"] == sent


def test_unreachable_redis_limits_in_process_and_fails_no_call(
    emulator, esi_settings
) -> None:
    # given a limiter on a Redis nobody listens on
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    client = limited_client(esi_settings, Limiter(store), FrozenClock())

    # when / then
    assert "players" in client.Status.get_status().result()


def test_tampered_limiter_state_is_ignored_not_run(
    emulator, esi_settings, redis_prefix
) -> None:
    # given garbage (a pickle) where the shared error state lives
    import pickle

    import redis

    server = redis.Redis.from_url(REDIS_URL)
    server.set(f"{redis_prefix}errors", pickle.dumps(object()))
    store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    client = limited_client(esi_settings, Limiter(store), FrozenClock())

    # when / then
    assert client.Universe.get_universe_types_type_id(type_id=35).result()
    assert json.loads(server.get(f"{redis_prefix}errors"))["remain"] == 100


def test_4xx_answers_on_a_bucket_route_never_overspend_it(emulator, esi_settings):
    # given a 30-token bucket whose route answers only 404 (5 tokens each)
    emulator.configure(
        bucket_overrides={"status": "30/10m"},
        esi_faults=[{"status": 404, "path_contains": "/status/", "count": 1000}],
    )
    settings = esi_settings.replace(esi_spec_source="bundled")
    limiter = Limiter(MemoryStore(), Thresholds(max_wait_s=2))
    client = limited_client(settings, limiter, FrozenClock())

    # when six threads call it three times each, all at once
    outcomes = hammer(lambda: client.Status.get_status().result(ignore_cache=True), 6, 3)

    # then each request held room for the worst case: no 429
    answered = emulator.stats()["esi_requests_by_status"]
    assert set(answered) == {404} and answered[404] <= 5
    assert outcomes["refused"] == 18 - answered[404]


def test_a_group_the_spec_does_not_name_is_learned_before_threads_spend_it(
    emulator, esi_settings
) -> None:
    # given the bundled Swagger spec (no x-rate-limit) and a bucket smaller
    # than one call from each thread
    emulator.configure(bucket_overrides={"status": "10/10m"})
    settings = esi_settings.replace(esi_spec_source="bundled")
    limiter = Limiter(MemoryStore(), Thresholds(max_wait_s=2))
    client = limited_client(settings, limiter, FrozenClock())

    # when eight threads make their first calls at once
    outcomes = hammer(lambda: client.Status.get_status().result(ignore_cache=True), 8, 3)

    # then one request learned the group for all; ESI never refused one
    answered = emulator.stats()["esi_requests_by_status"]
    assert set(answered) == {200}
    assert outcomes[200] == answered[200] and outcomes["refused"] == 24 - answered[200]


def test_a_game_side_429_without_headers_backs_the_operation_off(
    emulator, esi_settings
) -> None:
    # given three 429s from a game-side limiter: no headers, no Retry-After
    emulator.configure(
        esi_faults=[
            {"status": 429, "path_contains": "/types/35/", "count": 3,
             "limit_headers": False}
        ]
    )
    clock = FrozenClock()
    client = limited_client(esi_settings, Limiter(MemoryStore()), clock)
    op = client.Universe.get_universe_types_type_id

    # when the operation is called until it answers
    answered_at = []
    for _ in range(4):
        try:
            op(type_id=35).result(ignore_cache=True)
        except RateLimitedError:
            pass
        answered_at.append(clock.time())

    # then each call after a 429 waited longer than the one before
    gaps = [b - a for a, b in itertools.pairwise(answered_at)]
    assert gaps[0] >= 1 and gaps[1] >= 2 and gaps[2] >= 4
    assert emulator.stats()["esi_requests_by_status"] == {429: 3, 200: 1}


def test_a_game_side_429_with_retry_after_holds_that_long(emulator, esi_settings):
    # given
    emulator.configure(
        esi_faults=[
            {"status": 429, "path_contains": "/types/35/", "retry_after": 7,
             "limit_headers": False}
        ]
    )
    clock = FrozenClock()
    client = limited_client(esi_settings, Limiter(MemoryStore()), clock)
    with pytest.raises(RateLimitedError):
        client.Universe.get_universe_types_type_id(type_id=35).result()
    before = clock.time()

    # when
    client.Universe.get_universe_types_type_id(type_id=35).result()

    # then
    assert clock.time() - before >= 7


def test_retry_after_as_an_http_date_is_honoured(emulator, esi_settings) -> None:
    # given a 429 whose Retry-After is a date 30 s ahead
    emulator.configure(
        retry_after_format="http-date",
        esi_faults=[{"status": 429, "path_contains": "/status/", "retry_after": 30}],
    )
    clock = FrozenClock()
    client = limited_client(esi_settings, Limiter(MemoryStore()), clock)
    with pytest.raises(RateLimitedError) as caught:
        client.Status.get_status().result()
    before = clock.time()

    # when
    client.Status.get_status().result()

    # then
    assert caught.value.retry_after_s == pytest.approx(30, abs=1.5)
    assert clock.time() - before >= 29


def test_a_reset_rounded_down_is_waited_out_all_the_same(
    clocked_emulator, clock, esi_settings
) -> None:
    # given an ESI rounding its reset down, with few errors left
    clocked_emulator.configure(error_budget=25, error_window_s=10, reset_rounding="down")
    settings = esi_settings.replace(
        esi_base_url=clocked_emulator.base_url, esi_spec_source="bundled"
    )
    limiter = Limiter(MemoryStore(), Thresholds(error_budget=25, error_threshold=20))
    client = limited_client(settings, limiter, clock)
    # ESI's window started half a second before the client's first answer,
    # so every reset it reports is 9.5 s rounded down to "9"
    requests.get(f"{clocked_emulator.base_url}/latest/universe/types/35/", timeout=5)
    clock.advance(0.5)
    for _ in range(5):
        with pytest.raises(HTTPError):
            client.Universe.get_universe_types_type_id(type_id=999999999).result()

    # when the next call has been held
    _data, response = client.Universe.get_universe_types_type_id(
        type_id=35, _request_options={"also_return_response": True}
    ).result()

    # then the held call reached ESI after the window had really ended
    assert int(response.headers["X-Esi-Error-Limit-Remain"]) >= 24
    assert 420 not in clocked_emulator.stats()["esi_requests_by_status"]


@pytest.mark.parametrize("counted", ["after", "before"])
def test_remaining_counted_either_way_never_leads_to_a_429(
    emulator, esi_settings, counted
) -> None:
    # given: whether X-Ratelimit-Remaining includes the answer is unverified
    emulator.configure(bucket_overrides={"status": "20/10m"}, ratelimit_remaining=counted)
    limiter = Limiter(MemoryStore(), Thresholds(max_wait_s=2))
    client = limited_client(esi_settings, limiter, FrozenClock())

    # when one caller goes on until the limiter refuses
    successes = 0
    with pytest.raises(RateLimitedError) as caught:
        for _ in range(20):
            client.Status.get_status().result(ignore_cache=True)
            successes += 1

    # then it stopped short of ESI's 429, without wasting the bucket
    assert not caught.value.headers
    assert emulator.stats()["esi_requests_by_status"] == {200: successes}
    assert successes >= 5


@pytest.mark.parametrize("counted", [True, False])
def test_429s_counted_as_errors_or_not_never_lead_to_a_420(
    clocked_emulator, clock, esi_settings, counted
) -> None:
    # given a small error budget and a route answering only bare 429s
    clocked_emulator.configure(
        error_budget=10,
        errors_count_429=counted,
        esi_faults=[{"status": 429, "path_contains": "/types/35/", "count": 100,
                     "limit_headers": False}],
    )
    settings = esi_settings.replace(
        esi_base_url=clocked_emulator.base_url, esi_spec_source="bundled"
    )
    limiter = Limiter(MemoryStore(), Thresholds(error_budget=10, error_threshold=3))
    client = limited_client(settings, limiter, clock)

    # when it is called over and over
    for _ in range(25):
        with pytest.raises(RateLimitedError):
            client.Universe.get_universe_types_type_id(type_id=35).result()

    # then ESI never had to answer 420
    assert clocked_emulator.stats()["esi_requests_by_status"] == {429: 25}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("errors", '{"in_flight": [1]}'),
        ("errors", '{"remain": 50, "reset_at": "x"}'),
        ("errors", '{"remain": "x", "seen": [1, "y", null]}'),
        ("op:get_universe_types_type_id", '{"learned": "yes", "probe": 7}'),
        ("op:get_status", '{"learned": true, "group": 5, "blocked_until": "soon"}'),
        ("bucket:status:public", '{"entries": [[1, 2, 3], "x"], "limit": "big"}'),
    ],
)
def test_wrongly_typed_shared_state_is_repaired_not_obeyed(
    emulator, esi_settings, redis_prefix, caplog, key, value
) -> None:
    # given well-formed JSON with fields of the wrong types in Redis
    server = redis.Redis.from_url(REDIS_URL)
    server.set(f"{redis_prefix}{key}", value)
    store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    client = limited_client(esi_settings, Limiter(store), FrozenClock())

    # when
    for _ in range(3):
        assert client.Universe.get_universe_types_type_id(type_id=35).result()
        assert client.Status.get_status().result(ignore_cache=True)

    # then Redis stayed the shared store, and the value was rewritten
    assert "limiting in this process" not in caplog.text
    assert server.ttl(f"{redis_prefix}{key}") > 0
    assert json.loads(server.get(f"{redis_prefix}{key}")) != json.loads(value)


def hammer(call, threads: int, calls: int) -> Counter:
    """``calls`` calls from each of ``threads`` threads started together."""
    outcomes: Counter = Counter()
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        for _ in range(calls):
            try:
                call()
                outcomes[200] += 1
            except (ErrorLimitedError, RateLimitedError) as exc:
                outcomes[exc.status if exc.headers else "refused"] += 1
            except HTTPError as exc:
                outcomes[exc.status] += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def test_a_420_does_not_make_a_bucket_route_forget_its_group(emulator, esi_settings):
    # given a group learned from ESI's answers, then a 420 (which carries
    # the budget headers on every route, bucket-limited or not)
    emulator.configure(bucket_overrides={"status": "12/10m"})
    settings = esi_settings.replace(esi_spec_source="bundled")
    clock = FrozenClock()
    limiter = Limiter(MemoryStore(), Thresholds(max_wait_s=2))
    client = limited_client(settings, limiter, clock)
    client.Status.get_status().result(ignore_cache=True)
    emulator.configure(error_budget=0)
    with pytest.raises(ErrorLimitedError):
        client.Status.get_status().result(ignore_cache=True)
    emulator.configure(error_budget=100)
    clock.advance(62)  # the 420's window is over

    # when six threads call at once, more than the 10 tokens left allow
    outcomes = hammer(lambda: client.Status.get_status().result(ignore_cache=True), 6, 1)

    # then it was still treated as bucket-limited: no 429
    assert 429 not in emulator.stats()["esi_requests_by_status"]
    assert outcomes["refused"] > 0
