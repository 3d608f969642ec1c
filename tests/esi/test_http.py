"""What goes over the wire: headers, the access token, bodies ESI should not send."""

from __future__ import annotations

import logging

import pytest

from worker import metrics
from worker.clock import FrozenClock
from worker.errors import ConfigurationError, ESIError, ESITransientError, HTTPError
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
