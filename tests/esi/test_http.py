"""What goes over the wire: headers, the access token, bodies ESI should not send."""

from __future__ import annotations

import logging

import pytest

from worker import metrics
from worker.clock import FrozenClock
from worker.errors import (
    ConfigurationError,
    ESIError,
    ESITransientError,
    HTTPError,
    InvalidParameterError,
)
from worker.esi import MemoryCache, esi_client_factory

PILOT_ID = 2112000001
ACCESS_TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LWFjY2Vzcy10b2tlbg.c2lnbmF0dXJl"


@pytest.fixture
def wire_client(esi_settings, recording_server, static_token):
    """A client with a token, talking to the header-recording server."""
    token = static_token(PILOT_ID, ("esi-assets.read_assets.v1",), ACCESS_TOKEN)
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled")
    recording_server.reply = (200, "application/json", b"[]")
    return esi_client_factory(
        token,
        app_info_text="my-app/2.0 (ops@example.invalid)",
        settings=settings,
        cache=MemoryCache(),
    )


def test_every_request_says_who_sends_it(
    wire_client, recording_server, esi_settings
) -> None:
    # given / when
    wire_client.Universe.get_universe_types().result()

    # then
    headers = recording_server.requests[0]["headers"]
    assert headers["User-Agent"] == (
        f"my-app/2.0 (ops@example.invalid) {esi_settings.user_agent}"
    )
    assert headers["X-Compatibility-Date"] == esi_settings.esi_compatibility_date
    assert headers["X-Tenant"] == "tranquility"


def test_the_compatibility_date_reaches_esi(client, esi_settings) -> None:
    # given the emulator echoes the date it applied (the oldest one if none is sent)
    future = client.Status.get_status(_request_options={"also_return_response": True})

    # when
    _data, response = future.result()

    # then
    assert (
        response.headers["X-Compatibility-Date"] == esi_settings.esi_compatibility_date
    )


def test_access_token_goes_only_in_the_authorization_header(
    wire_client, recording_server
) -> None:
    # given / when
    wire_client.Assets.get_characters_character_id_assets(
        character_id=PILOT_ID
    ).result()

    # then
    sent = recording_server.requests[0]
    assert sent["headers"]["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert ACCESS_TOKEN not in sent["path"]


def test_public_routes_get_no_authorization_header(
    wire_client, recording_server
) -> None:
    # given / when
    wire_client.Universe.get_universe_types().result()

    # then
    assert "Authorization" not in recording_server.requests[0]["headers"]


def test_language_is_sent_as_header_and_query(wire_client, recording_server) -> None:
    # given
    recording_server.reply = (
        200,
        "application/json",
        (
            b'{"type_id": 35, "name": "x", "description": "",'
            b' "published": true, "group_id": 18}'
        ),
    )

    # when
    wire_client.Universe.get_universe_types_type_id(type_id=35).result(language="fr")

    # then
    sent = recording_server.requests[0]
    assert sent["headers"]["Accept-Language"] == "fr"
    assert "language=fr" in sent["path"]


def test_no_log_line_holds_the_access_token(wire_client, caplog) -> None:
    # given every logger at debug level (bravado, urllib3, ours), and a caller
    # who even passes the header through bravado's request options
    caplog.set_level(logging.DEBUG)
    options = {"headers": {"Authorization": f"Bearer {ACCESS_TOKEN}"}}

    # when
    future = wire_client.Assets.get_characters_character_id_assets(
        character_id=PILOT_ID, _request_options=options
    )
    future.result()

    # then
    assert any("redacted" in r.getMessage() for r in caplog.records)
    assert all(ACCESS_TOKEN not in r.getMessage() for r in caplog.records)
    assert ACCESS_TOKEN not in repr(wire_client.http_client)


def test_non_json_body_raises_esi_error_naming_the_operation(
    wire_client, recording_server
) -> None:
    # given a server answering HTML on a JSON route
    recording_server.reply = (200, "text/html", b"<html>maintenance</html>")

    # when
    with pytest.raises(ESIError) as caught:
        wire_client.Status.get_status().result()

    # then
    assert "get_status" in str(caught.value) and "not JSON" in str(caught.value)
    assert caught.value.__cause__ is None


def test_non_json_error_body_is_kept_as_text(wire_client, recording_server) -> None:
    # given
    recording_server.reply = (404, "text/plain", b"404 page not found")

    # when
    with pytest.raises(HTTPError) as caught:
        wire_client.Status.get_status().result()

    # then
    assert caught.value.status == 404 and caught.value.body == "404 page not found"


def test_connection_errors_are_retried_then_raised(esi_settings) -> None:
    # given ESI where nothing listens, and a clock that takes the backoff instantly
    settings = esi_settings.replace(
        esi_base_url="http://127.0.0.1:1", esi_retries=2, esi_spec_source="bundled"
    )
    clock = FrozenClock()
    client = esi_client_factory(settings=settings, cache=MemoryCache(), clock=clock)
    start = clock.time()

    # when
    with pytest.raises(ESITransientError) as caught:
        client.Status.get_status().result()

    # then
    assert "3 attempts" in str(caught.value)
    assert clock.time() - start == pytest.approx(1.0 + 2.0)
    assert (
        metrics.ESI_REQUESTS.labels("get_status", "ConnectionError")._value.get() >= 3
    )


def test_app_info_text_over_several_lines_is_refused(esi_settings) -> None:
    # given / when / then
    with pytest.raises(ConfigurationError, match="app_info_text"):
        esi_client_factory(app_info_text="a\r\nX-Evil: 1", settings=esi_settings)


def test_paged_route_without_x_pages_gives_one_page(wire_client, recording_server):
    # given a paged route answered without X-Pages
    recording_server.reply = (200, "application/json", b"[1, 2]")

    # when
    type_ids = wire_client.Universe.get_universe_types().results()

    # then
    assert type_ids == [1, 2]
    assert len(recording_server.requests) == 1


def test_pages_in_flight_never_exceed_the_setting(esi_settings, recording_server):
    # given six pages, served slowly enough for requests to overlap
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url,
        esi_page_concurrency=2,
        esi_spec_source="bundled",
    )
    recording_server.reply = (200, "application/json", b"[7]")
    recording_server.headers = {"X-Pages": "6"}
    recording_server.delay_s = 0.05
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when
    type_ids = client.Universe.get_universe_types().results()

    # then
    assert type_ids == [7] * 6
    pages = sorted(
        r["path"].split("page=")[1].split("&")[0] for r in recording_server.requests
    )
    assert pages == ["1", "2", "3", "4", "5", "6"]
    assert recording_server.max_in_flight == 2


# -- answers that break on the way (issue-2 audit A) ---------------------------


def test_a_body_cut_off_mid_way_is_retried(client, emulator) -> None:
    # given one answer whose connection breaks halfway through the body
    emulator.configure(
        esi_faults=[{"status": 200, "path_contains": "/status/", "cut_body": True}]
    )

    # when
    data = client.Status.get_status().result()

    # then it was sent again, like any broken connection
    assert "players" in data
    assert emulator.stats()["esi_requests"] == 2


def test_bodies_that_keep_breaking_raise_ours_and_give_the_permit_back(
    emulator, esi_settings
) -> None:
    # given every answer cut off, and a limiter we can look into
    from worker.esi.limits import Limiter, MemoryStore

    emulator.configure(
        esi_faults=[{"status": 200, "path_contains": "/status/", "cut_body": True,
                     "count": 10}]
    )
    store = MemoryStore()
    client = esi_client_factory(
        settings=esi_settings.replace(esi_retries=1), cache=MemoryCache(),
        clock=FrozenClock(), limiter=Limiter(store),
    )

    # when / then
    with pytest.raises(ESITransientError) as caught:
        client.Status.get_status().result()
    assert "ChunkedEncodingError" in str(caught.value)
    assert store._states["errors"]["in_flight"] == {}


def test_a_body_that_cannot_be_decoded_raises_ours(client, emulator) -> None:
    # given an answer claiming gzip that is not
    emulator.configure(
        esi_faults=[{"status": 200, "path_contains": "/status/", "garbled_gzip": True}]
    )

    # when / then: an ESIError naming the operation, never requests' error
    with pytest.raises(ESIError) as caught:
        client.Status.get_status().result()
    assert type(caught.value).__module__ == "worker.errors"
    assert "get_status" in str(caught.value)


# -- the tenant of one call (finding 17) -----------------------------------------


def test_a_per_call_datasource_is_the_tenant_of_that_call(
    esi_settings, recording_server
) -> None:
    # given a client for Singularity
    settings = esi_settings.replace(
        esi_base_url=recording_server.base_url, esi_spec_source="bundled"
    )
    recording_server.reply = (200, "application/json", b"[]")
    client = esi_client_factory(
        datasource="singularity", settings=settings, cache=MemoryCache()
    )

    # when one call asks for Tranquility
    client.Universe.get_universe_types(datasource="tranquility").result()
    client.Universe.get_universe_types().result()

    # then that call said so in its query and its X-Tenant, the other not
    first, second = recording_server.requests
    assert "datasource=tranquility" in first["path"]
    assert first["headers"]["X-Tenant"] == "tranquility"
    assert "datasource=singularity" in second["path"]
    assert second["headers"]["X-Tenant"] == "singularity"


def test_a_per_call_datasource_works_on_todays_spec_too(client, emulator) -> None:
    # given the live OpenAPI spec, which has no datasource parameter
    op = client.Status.get_status

    # when / then: it becomes X-Tenant; the answers are cached apart
    assert "players" in op(datasource="tranquility").result()
    assert "players" in op(datasource="singularity").result()
    assert emulator.stats()["esi_requests"] == 2


# -- arguments the spec does not accept (issue-2 audit C) ------------------------


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda c: c.Universe.get_universe_types_type_id(), "type_id"),
        (lambda c: c.Universe.get_universe_types_type_id(type_id="abc"), "type_id"),
        (lambda c: c.Universe.get_universe_types_type_id(type_id=34, bogus=1), "bogus"),
        (
            lambda c: c.Market.get_markets_region_id_orders(
                region_id=10000070, order_type="nope"
            ),
            "order_type",
        ),
        (lambda c: c.Universe.post_universe_names(ids="not a list"), "ids"),
    ],
)
def test_arguments_the_spec_refuses_raise_ours_naming_the_parameter(
    client, esi_requests, call, parameter
) -> None:
    # when / then
    with pytest.raises(InvalidParameterError) as caught:
        call(client)
    assert isinstance(caught.value, ValueError)
    assert caught.value.parameter == parameter
    assert parameter in str(caught.value)
    assert esi_requests() == 0


def test_many_threads_calling_a_fresh_spec_at_once_all_succeed(esi_settings) -> None:
    # given: bravado-core memoizes per spec without a lock; a race between
    # first calls used to raise RecursiveCallException
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from worker.esi.spec import forget_built_specs

    settings = esi_settings.replace(esi_spec_source="bundled")
    failures = []
    for _ in range(5):
        forget_built_specs()
        client = esi_client_factory(settings=settings, cache=MemoryCache())
        barrier = Barrier(16)

        def first_call(n: int, client=client, barrier=barrier) -> None:
            barrier.wait()
            try:
                client.Universe.get_universe_types_type_id(type_id=34 + n % 3)
                client.Market.get_markets_region_id_orders(
                    region_id=10000070, order_type="all", page=1 + n % 2
                )
            except Exception as exc:  # noqa: BLE001 (what the test looks for)
                failures.append(exc)

        # when
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(first_call, range(16)))

    # then
    assert failures == []


def test_a_warning_header_is_logged_once_per_operation(
    emulator, esi_settings, caplog
) -> None:
    # given an ESI sending Warning on old route versions
    emulator.configure(warning_headers=True)
    client = esi_client_factory(
        version="legacy", settings=esi_settings, cache=MemoryCache()
    )

    # when
    with caplog.at_level(logging.WARNING, logger="worker.esi.http"):
        for _ in range(3):
            client.Status.get_status().result(ignore_cache=True)

    # then
    warnings = [r for r in caplog.records if "ESI warns about" in r.getMessage()]
    assert len(warnings) == 1
    assert "get_status" in warnings[0].getMessage() and "299" in warnings[0].getMessage()
