"""ESI's error budget and rate-limit buckets, shared by every process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.clock import FrozenClock
from worker.errors import ErrorLimitedError, RateLimitedError
from worker.esi import MemoryCache, esi_client_factory
from worker.esi.limits import Limiter, MemoryStore, RedisStore, Thresholds

REDIS_URL = "redis://127.0.0.1:6379/0"

# One worker process: builds a client on the shared Redis limiter and calls
# one operation from two threads; prints what it saw as JSON.
WORKER = textwrap.dedent(
    """
    import json, sys, threading
    from worker.esi import MemoryCache, esi_client_factory
    from worker.esi.limits import Limiter, RedisStore, Thresholds
    from worker.errors import HTTPError
    from worker.settings import Settings
    from worker.metrics import esi as metrics

    base, redis_url, prefix, data_dir, calls, kind = sys.argv[1:7]
    settings = Settings(
        esi_base_url=base, sso_base_url=base, data_dir=data_dir,
        contact_email="tests@example.invalid", esi_retries=0,
    )
    limiter = Limiter(
        RedisStore.from_url(redis_url, prefix=prefix), Thresholds(max_wait_s=60)
    )
    client = esi_client_factory(settings=settings, cache=MemoryCache(), limiter=limiter)
    statuses = []

    def hammer():
        for _ in range(int(calls) // 2):
            if kind == "status":
                future = client.Status.get_status()
            else:
                future = client.Universe.get_universe_types_type_id(type_id=999999999)
            try:
                future.result(ignore_cache=True)
                statuses.append(200)
            except HTTPError as exc:
                statuses.append(exc.status)
            except Exception as exc:
                statuses.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    held = {
        s.labels["reason"]: s.value
        for m in metrics.ESI_HELD_SECONDS.collect() for s in m.samples
        if s.name.endswith("_total")
    }
    print(json.dumps({"statuses": statuses, "held": held}))
    """
)


def run_workers(
    emulator, redis_prefix: str, tmp_path: Path, calls: int, kind: str
) -> list[dict]:
    """Four worker processes at once; what each printed."""
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
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def test_four_processes_hammering_one_group_never_get_429_or_420(
    emulator, redis_prefix, tmp_path
) -> None:
    # given a small bucket on the status group, shared by four processes
    emulator.configure(bucket_overrides={"status": "60/2s"}, cache_ttl_s=3600)

    # when each process calls it 16 times from two threads
    outputs = run_workers(emulator, redis_prefix, tmp_path, 16, "status")

    # then every call succeeded, and ESI never had to refuse one
    assert [o["statuses"] for o in outputs] == [[200] * 16] * 4, outputs
    statuses = emulator.stats()["esi_requests_by_status"]
    assert statuses == {200: 64}
    assert sum(o["held"].get("rate_limit", 0) for o in outputs) > 0


def test_burst_of_404s_stops_every_process_before_the_420(
    emulator, redis_prefix, tmp_path
) -> None:
    # given ESI's budget of 100 errors in a short window
    emulator.configure(error_window_s=4)

    # when four processes each make 30 calls that all answer 404
    outputs = run_workers(emulator, redis_prefix, tmp_path, 30, "not_found")

    # then all 120 errors arrived over more than one window, none was a 420
    assert [o["statuses"] for o in outputs] == [[404] * 30] * 4, outputs
    assert emulator.stats()["esi_requests_by_status"] == {404: 120}
    assert sum(o["held"].get("error_limit", 0) for o in outputs) > 0


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
        with pytest.raises(Exception):
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
    with pytest.raises(Exception):
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
