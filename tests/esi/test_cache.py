"""Response caching: hits, ETag revalidation, lifetimes, memory and Redis backends."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import secrets
from collections.abc import Iterator

import pytest
import redis

from worker import metrics
from worker.clock import FrozenClock
from worker.errors import ConfigurationError, HTTPError
from worker.esi import MemoryCache, RedisCache, cache_from_settings, esi_client_factory
from worker.esi.cache import CachedResponse, cache_key, freshness_s
from worker.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
ASSETS_SCOPE = "esi-assets.read_assets.v1"
NOW = dt.datetime(2026, 1, 2, 12, 0, 0, tzinfo=dt.UTC)
DATE = "Fri, 02 Jan 2026 12:00:00 GMT"


def entry(body: str = "[]", expires_at: float = 0.0) -> CachedResponse:
    return CachedResponse(
        200, {"Content-Type": "application/json"}, body, expires_at, '"etag"'
    )


ALLIANCE = 99005443  # recorded with an ETag of its own, stable across generations


def max_age_s(response, clock: FrozenClock | None = None) -> float:
    """The lifetime ESI gave an answer."""
    now = clock.now() if clock is not None else dt.datetime.now(dt.UTC)
    return freshness_s(response.headers, now) or 0.0


@pytest.fixture(autouse=True)
def long_lived_answers(emulator) -> None:
    """An hour of life for every answer.

    Status answers live 30 s, so one may otherwise arrive with max-age=0
    at the end of its cache generation and, rightly, not be cached.
    """
    emulator.configure(cache_ttl_s=3600)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards."""
    prefix = f"esi-worker-test:{secrets.token_hex(4)}:"
    yield prefix
    server = redis.Redis.from_url(REDIS_URL)
    for key in server.scan_iter(f"{prefix}*"):
        server.delete(key)
    server.close()


# -- through the client ------------------------------------------------------


def test_fresh_answer_comes_from_cache_without_a_request(
    esi_requests, client, emulator
) -> None:
    # given one answered call
    client.Universe.get_universe_types_type_id(type_id=35).result()
    hits = metrics.CACHE_HITS.labels("get_universe_types_type_id")
    before = hits._value.get()

    # when the same call is made again
    future = client.Universe.get_universe_types_type_id(type_id=35)
    data = future.result()

    # then
    assert data["name"] == "Pyerite"
    assert future.from_cache is True
    assert esi_requests() == 1
    assert hits._value.get() - before == 1


def test_ignore_cache_asks_esi_again(esi_requests, client, emulator) -> None:
    # given
    client.Status.get_status().result()

    # when
    future = client.Status.get_status()
    future.result(ignore_cache=True)

    # then
    assert future.from_cache is False
    assert esi_requests() == 2


def test_stale_answer_is_revalidated_with_its_etag(
    clocked_client, clocked_emulator, clock: FrozenClock
) -> None:
    # given a cached answer whose lifetime has run out (for ESI as well),
    # of a route whose recorded ETag outlives ESI's cache generations
    op = clocked_client.Alliance.get_alliances_alliance_id
    first, response = op(
        alliance_id=ALLIANCE, _request_options={"also_return_response": True}
    ).result()
    clock.advance(max_age_s(response, clock) + 1)

    # when
    future = op(alliance_id=ALLIANCE, _request_options={"also_return_response": True})
    data, response = future.result()

    # then
    assert data == first
    assert future.not_modified is True and response.not_modified is True
    assert clocked_emulator.stats()["esi_requests_by_status"] == {200: 1, 304: 1}


def test_revalidated_answer_is_fresh_again(
    clocked_client, clocked_emulator, clock: FrozenClock
) -> None:
    # given an answer revalidated by a 304 once ESI's copy went stale
    op = clocked_client.Alliance.get_alliances_alliance_id
    _data, response = op(
        alliance_id=ALLIANCE, _request_options={"also_return_response": True}
    ).result()
    clock.advance(max_age_s(response, clock) + 1)
    op(alliance_id=ALLIANCE).result()

    # when
    future = op(alliance_id=ALLIANCE)
    future.result()

    # then
    assert future.from_cache is True
    assert clocked_emulator.stats()["esi_requests_by_status"] == {200: 1, 304: 1}


def test_each_language_is_cached_apart(esi_requests, client, emulator) -> None:
    # given the French answer cached
    client.Universe.get_universe_types_type_id(type_id=35).result(language="fr")

    # when
    data = client.Universe.get_universe_types_type_id(type_id=35).result(
        language="en-us"
    )

    # then
    assert data["name"] == "Pyerite"
    assert esi_requests() == 2


def test_redis_cache_stores_entries_as_json(
    esi_requests, emulator, esi_settings, redis_prefix
) -> None:
    # given a client caching in Redis
    cache = RedisCache(REDIS_URL, prefix=redis_prefix)
    client = esi_client_factory(settings=esi_settings, cache=cache)

    # when
    client.Status.get_status().result()
    again = client.Status.get_status()
    again.result()

    # then
    server = redis.Redis.from_url(REDIS_URL)
    keys = list(server.scan_iter(f"{redis_prefix}*"))
    stored = json.loads(server.get(keys[0]))
    server.close()
    cache.close()
    assert len(keys) == 1
    assert json.loads(stored["body"])["players"] >= 0
    assert stored["etag"] and stored["status"] == 200
    assert again.from_cache is True and esi_requests() == 1


def test_unreachable_redis_does_not_fail_the_call(emulator, esi_settings) -> None:
    # given a Redis URL where nothing listens
    cache = RedisCache("redis://127.0.0.1:1/0", timeout_s=0.5)
    client = esi_client_factory(settings=esi_settings, cache=cache)
    errors = metrics.CACHE_ERRORS.labels("RedisCache")
    before = errors._value.get()

    # when
    status = client.Status.get_status().result()

    # then
    assert "players" in status
    assert errors._value.get() - before == 2  # the read and the write
    cache.close()


# -- lifetimes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Cache-Control": "public, max-age=300"}, 300.0),
        ({"Expires": "Fri, 02 Jan 2026 12:05:00 GMT", "Date": DATE}, 300.0),
        ({"Expires": "Fri, 02 Jan 2026 12:01:00 GMT"}, 60.0),
    ],
)
def test_lifetime_comes_from_max_age_or_expires(headers, expected) -> None:
    # given / when / then
    assert freshness_s(headers, NOW) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Cache-Control": "max-age=0"},
        {"Cache-Control": "max-age=-5"},
        {"Cache-Control": "max-age=soon"},
        {"Cache-Control": "no-store, max-age=300"},
        {"Expires": "Fri, 02 Jan 2026 11:00:00 GMT", "Date": DATE},
        {"Expires": DATE, "Date": DATE},
        {"Expires": "0"},
        {"Expires": "-1", "Date": DATE},
        {"Expires": "tomorrow", "Date": DATE},
    ],
)
def test_lifetimes_that_must_not_cache(headers) -> None:
    # given / when / then
    assert freshness_s(headers, NOW) is None


HOUR_AGO = "Fri, 02 Jan 2026 11:00:00 GMT"
DAY_AGO = "Thu, 01 Jan 2026 12:00:00 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # an old Date: only what is left until Expires counts
        ({"Expires": "Fri, 02 Jan 2026 11:59:00 GMT", "Date": HOUR_AGO}, None),
        ({"Expires": "Fri, 02 Jan 2026 12:05:00 GMT", "Date": DAY_AGO}, 300.0),
        ({"Cache-Control": "max-age=3900", "Date": HOUR_AGO}, 300.0),
        # Age: relayed by a cache that held it that long
        ({"Cache-Control": "max-age=300", "Age": "299", "Date": DATE}, 1.0),
        ({"Cache-Control": "max-age=300", "Age": "3000", "Date": DATE}, None),
        ({"Expires": "Fri, 02 Jan 2026 12:05:00 GMT", "Age": "60", "Date": DATE}, 240.0),
        ({"Cache-Control": "max-age=300", "Age": "junk"}, 300.0),
        # far-off lifetimes end at the cap (one day, or the route's own)
        ({"Cache-Control": "max-age=1e9"}, 86400.0),
        ({"Expires": "Fri, 31 Dec 9999 23:59:59 GMT", "Date": DATE}, 86400.0),
        ({"Cache-Control": "max-age=inf"}, None),
    ],
)
def test_old_relayed_or_far_off_answers_are_not_fresh_for_long(headers, expected):
    # given / when / then
    assert freshness_s(headers, NOW) == expected


def test_a_lifetime_never_outlasts_the_cap_it_is_given() -> None:
    # given / when / then
    assert freshness_s({"Cache-Control": "max-age=3600"}, NOW, cap_s=30) == 30.0


def test_an_answer_outliving_its_routes_cache_time_is_asked_again(
    clocked_client, clocked_emulator, clock: FrozenClock
) -> None:
    # given an ESI answering with an hour of life on a route cached for 30 s
    op = clocked_client.Status.get_status
    op().result()

    # when
    clock.advance(31)
    future = op()
    future.result()

    # then it was not served from the cache
    assert future.from_cache is False
    assert clocked_emulator.stats()["esi_requests"] == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Expires": "Fri, 02 Jan 2026 11:59:00 GMT", "Date": HOUR_AGO},
        {"Cache-Control": "max-age=300", "Age": "301"},
    ],
)
def test_an_answer_already_stale_on_arrival_is_not_cached(
    esi_settings, recording_server, headers
) -> None:
    # given a server relaying an old answer
    recording_server.reply = (200, "application/json", STATUS_BODY)
    recording_server.headers = _relative(headers)
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled"
    )
    cache = MemoryCache()
    client = esi_client_factory(settings=settings, cache=cache)

    # when
    client.Status.get_status().result()
    client.Status.get_status().result()

    # then
    assert len(recording_server.requests) == 2


STATUS_BODY = b'{"players": 1, "server_version": "1", "start_time": "2020-01-01T00:00:00Z"}'


def _relative(headers: dict[str, str]) -> dict[str, str]:
    """The case's headers moved from NOW to the real now (the server's Date)."""
    shift = dt.datetime.now(dt.UTC) - NOW
    out = {}
    for name, value in headers.items():
        if name in ("Expires", "Date"):
            moved = email.utils.parsedate_to_datetime(value) + shift
            value = email.utils.format_datetime(moved, usegmt=True)
        out[name] = value
    return out


def test_answer_without_lifetime_is_not_cached(esi_settings, recording_server) -> None:
    # given a server answering without any cache header
    recording_server.reply = (
        200,
        "application/json",
        b'{"players": 1, "server_version": "1", "start_time": "2020-01-01T00:00:00Z"}',
    )
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled")
    cache = MemoryCache()
    client = esi_client_factory(settings=settings, cache=cache)

    # when
    client.Status.get_status().result()
    client.Status.get_status().result()

    # then
    assert len(recording_server.requests) == 2
    assert len(cache) == 0


# -- the backends ----------------------------------------------------------------


def test_memory_cache_evicts_least_recently_used_beyond_its_entries() -> None:
    # given a cache of two entries, "a" used last
    cache = MemoryCache(max_entries=2)
    cache.set("a", entry(), 60)
    cache.set("b", entry(), 60)
    cache.get("a")

    # when
    cache.set("c", entry(), 60)

    # then
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_memory_cache_stays_within_its_bytes() -> None:
    # given a cache of about two bodies of 1000 bytes
    cache = MemoryCache(max_bytes=2300)

    # when
    for key in "abc":
        cache.set(key, entry("x" * 1000), 60)

    # then
    assert cache.bytes_used <= 2300
    assert cache.get("a") is None and cache.get("c") is not None


def test_memory_cache_forgets_entries_after_their_ttl() -> None:
    # given
    clock = FrozenClock()
    cache = MemoryCache(clock=clock)
    cache.set("a", entry(), 60)

    # when
    clock.advance(61)

    # then
    assert cache.get("a") is None and len(cache) == 0


def test_redis_cache_round_trips_an_entry(redis_prefix) -> None:
    # given
    cache = RedisCache(REDIS_URL, prefix=redis_prefix)
    stored = entry('{"a": "é"}', expires_at=123.5)

    # when
    cache.set("k", stored, 60)
    found = cache.get("k")
    cache.delete("k")

    # then
    assert found == stored
    assert cache.get("k") is None
    cache.close()


def test_redis_cache_refuses_a_url_that_is_not_redis() -> None:
    # given / when / then
    with pytest.raises(ConfigurationError, match="'http'"):
        RedisCache("http://127.0.0.1:6379")


def test_cache_from_settings_shares_one_instance_per_backend() -> None:
    # given
    memory = Settings()
    shared = Settings(redis_url=REDIS_URL)

    # when / then
    assert isinstance(cache_from_settings(memory), MemoryCache)
    assert cache_from_settings(memory) is cache_from_settings(Settings())
    assert isinstance(cache_from_settings(shared), RedisCache)


def test_cache_key_never_holds_the_token_and_separates_characters() -> None:
    # given the same request with different token parameters and characters
    def key(**kwargs):
        query = {"page": 1, **kwargs.pop("query", {})}
        return cache_key("GET", "http://esi/latest/x/", query, **kwargs)

    # when / then
    assert key(query={"token": "secret-1"}) == key(query={"token": "secret-2"}) == key()
    assert "secret" not in key(query={"token": "secret"})
    assert key(character_id=1) != key(character_id=2)
    assert key(headers=[("Accept-Language", "fr")]) != key()



def test_cached_authed_answer_is_never_given_to_another_character(
    emulator, esi_settings, token_of
) -> None:
    # given one character's assets in a shared cache
    cache = MemoryCache()
    first = token_of(2112000001, [ASSETS_SCOPE])
    other = token_of(2112000002, [ASSETS_SCOPE])
    mine = esi_client_factory(first, settings=esi_settings, cache=cache)
    mine.Assets.get_characters_character_id_assets(
        character_id=first.character_id
    ).results()
    sent = emulator.stats()["esi_requests"]

    # when another character asks for that character's assets
    theirs = esi_client_factory(other, settings=esi_settings, cache=cache)
    with pytest.raises(HTTPError) as caught:
        theirs.Assets.get_characters_character_id_assets(
            character_id=first.character_id
        ).results()

    # then ESI was asked (and refused), the cache answered nothing
    assert caught.value.status == 403
    assert emulator.stats()["esi_requests"] == sent + 1


# -- kept answers of the in-process cache ----------------------------------------


def test_a_caller_changing_its_cached_data_changes_no_other_callers_data(
    esi_requests, client
) -> None:
    # given an answer and a page, each cached and already served from the cache
    def pyerite():
        return client.Universe.get_universe_types_type_id(type_id=35).result()

    def orders():
        return client.Market.get_markets_region_id_orders(
            region_id=19000001, order_type="all", page=1
        ).result()

    pyerite(), orders()
    mine, my_orders = pyerite(), orders()

    # when one caller changes what it was given
    mine["name"] = "changed"
    my_orders[0]["price"] = -1.0
    my_orders.reverse()
    my_orders.append({"order_id": 0})

    # then the next hits are untouched, and no request was sent again
    theirs, their_orders = pyerite(), orders()
    assert theirs["name"] == "Pyerite"
    assert len(their_orders) == 1000 and their_orders[0]["price"] != -1.0
    assert their_orders[0]["order_id"] == min(o["order_id"] for o in their_orders)
    assert esi_requests() == 2


def test_a_kept_answer_counts_in_the_memory_cache_bytes(client, cache) -> None:
    # given one page cached
    future = client.Market.get_markets_region_id_orders(
        region_id=19000001, order_type="all", page=1
    )
    future.result()
    stored = cache.bytes_used

    # when it is served from the cache (and its parsed answer kept)
    future.result()

    # then the kept answer is counted, and freed with its entry
    assert cache.bytes_used > 3 * stored
    cache.clear()
    assert cache.bytes_used == 0


def test_a_failing_keep_decoded_does_not_fail_the_call(
    emulator, esi_settings, clock
) -> None:
    # given an in-process cache whose keep_decoded breaks
    class BrokenKeeping(MemoryCache):
        def keep_decoded(self, *args) -> None:
            raise RuntimeError("broken")

    client = esi_client_factory(
        settings=esi_settings, cache=BrokenKeeping(clock=clock), clock=clock
    )
    errors = metrics.CACHE_ERRORS.labels("BrokenKeeping")
    before = errors._value.get()
    client.Universe.get_universe_types_type_id(type_id=35).result()

    # when
    data = client.Universe.get_universe_types_type_id(type_id=35).result()

    # then
    assert data["name"] == "Pyerite"
    assert errors._value.get() - before == 1


# -- what a shared cache may hold (finding 11) -----------------------------------

FAR = 4_000_000_000.0


@pytest.mark.parametrize(
    "plant",
    [
        lambda r, k: r.set(k, b"\x80\x81 not json"),
        lambda r, k: r.set(k, b"[1,2,3]"),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": [], "body": "{}", "expires_at": FAR})),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": {}, "body": "garbage{", "expires_at": FAR})),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": {}, "body": 12345, "expires_at": FAR})),
        lambda r, k: r.set(k, json.dumps(
            {"status": 500, "headers": {}, "body": '{"error":"x"}', "expires_at": FAR})),
        lambda r, k: r.set(k, json.dumps(
            {"status": "abc", "headers": {}, "body": "{}", "expires_at": FAR})),
        lambda r, k: r.set(
            k, b'{"status":200,"headers":{},"body":"{}","expires_at":NaN}'),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": {}, "body": "{}", "expires_at": "x"})),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": {}, "body": '{"start_time": "noon"}',
             "expires_at": FAR})),
        lambda r, k: r.set(k, json.dumps(
            {"status": 200, "headers": {}, "body": "[1, 2]", "expires_at": FAR})),
        lambda r, k: (r.delete(k), r.hset(k, "a", "b")),
        lambda r, k: (r.delete(k), r.rpush(k, "a")),
    ],
    ids=[
        "not-json", "json-list", "headers-a-list", "body-not-json", "body-a-number",
        "status-500", "status-text", "expires-nan", "expires-text", "bad-date",
        "wrong-shape", "a-hash", "a-list",
    ],
)
def test_garbage_in_the_shared_cache_is_counted_dropped_and_fetched_anew(
    emulator, esi_settings, redis_prefix, caplog, plant
) -> None:
    # given an entry of the status call replaced by garbage
    cache = RedisCache(REDIS_URL, prefix=redis_prefix)
    client = esi_client_factory(settings=esi_settings, cache=cache)
    client.Status.get_status().result()
    server = redis.Redis.from_url(REDIS_URL)
    (key,) = list(server.scan_iter(f"{redis_prefix}*"))
    plant(server, key)
    errors = metrics.CACHE_ERRORS.labels("RedisCache")
    before = errors._value.get()

    # when
    data = client.Status.get_status().result()

    # then the call got real data, the garbage was counted and replaced
    assert isinstance(data["players"], int) and "start_time" in data
    assert errors._value.get() - before >= 1
    assert "cache" in caplog.text
    assert json.loads(server.get(key))["status"] == 200
    assert emulator.stats()["esi_requests"] == 2
    server.close()
    cache.close()


def test_clients_parsing_dates_differently_never_share_a_parsed_answer(
    emulator, esi_settings
) -> None:
    # given one in-process cache shared by a client parsing dates and one not
    from worker.esi.spec import forget_built_specs

    cache = MemoryCache()
    forget_built_specs()
    parsing = esi_client_factory(settings=esi_settings, cache=cache)
    plain = esi_client_factory(
        settings=esi_settings.replace(esi_parse_formats=False), cache=cache
    )
    parsing.Status.get_status().result()
    parsing.Status.get_status().result()  # the parsed answer is kept

    # when
    text = plain.Status.get_status().result()
    again = parsing.Status.get_status().result()

    # then each gets its own kind, from the one cached answer
    assert isinstance(text["start_time"], str)
    assert isinstance(again["start_time"], dt.datetime)
    assert emulator.stats()["esi_requests"] == 1
