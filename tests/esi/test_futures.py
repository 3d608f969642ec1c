"""CachingHttpFuture against the emulator: result, pages, languages, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker import metrics
from worker.errors import (
    ErrorLimitedError,
    ESITransientError,
    HTTPError,
    InvalidLanguageError,
    RateLimitedError,
    ScopeMissingError,
)
from worker.esi import CachingHttpFuture, MemoryCache, esi_client_factory

REGION = 10000070
PILOT_ID = 2112000001


def plain(value: Any) -> Any:
    """Datetimes back to ESI's text form, to compare with recorded bodies."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def test_result_returns_the_data_of_one_call(esi_requests, client, emulator) -> None:
    # given
    future = client.Universe.get_universe_types_type_id(type_id=35)

    # when
    data = future.result()

    # then
    assert isinstance(future, CachingHttpFuture)
    assert data["type_id"] == 35 and data["name"] == "Pyerite"
    assert esi_requests() == 1


def test_calling_an_operation_sends_nothing_until_asked(
    esi_requests, client, emulator
) -> None:
    # given / when
    client.Status.get_status()

    # then
    assert esi_requests() == 0


def test_also_return_response_gives_data_and_response(client) -> None:
    # given
    future = client.Status.get_status(_request_options={"also_return_response": True})

    # when
    data, response = future.result()

    # then
    assert "players" in data
    assert response.status_code == 200
    assert response.headers["ETag"]
    assert response.from_cache is False


def test_results_concatenates_every_page_in_page_order(
    esi_requests, recorded, client, emulator
) -> None:
    # given the three recorded pages of a region's orders
    expected = [
        order
        for page in recorded("get_markets_region_id_orders", region_id=str(REGION))
        for order in page
    ]

    # when
    orders = client.Market.get_markets_region_id_orders(
        region_id=REGION, order_type="all"
    ).results()

    # then
    assert plain(orders) == expected
    assert esi_requests() == 3


def test_results_with_one_page_in_flight_keeps_the_order(
    recorded, emulator, esi_settings
) -> None:
    # given a client fetching pages one at a time
    settings = esi_settings.replace(esi_page_concurrency=1)
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # when
    orders, first = client.Market.get_markets_region_id_orders(
        region_id=REGION,
        order_type="all",
        _request_options={"also_return_response": True},
    ).results()

    # then
    pages = recorded("get_markets_region_id_orders", region_id=str(REGION))
    assert [o["order_id"] for o in orders] == [o["order_id"] for p in pages for o in p]
    assert first.headers["X-Pages"] == "3"


def test_results_of_an_unpaged_route_is_its_result(
    esi_requests, client, emulator
) -> None:
    # given / when
    status = client.Status.get_status().results()

    # then
    assert "players" in status
    assert esi_requests() == 1


def test_results_localized_keys_each_language(esi_requests, client, emulator) -> None:
    # given
    future = client.Universe.get_universe_types_type_id(type_id=35)

    # when
    names = future.results_localized(["en-us", "fr"])

    # then
    assert {lang: data["name"] for lang, data in names.items()} == {
        "en-us": "Pyerite",
        "fr": "Pyérite",
    }
    assert esi_requests() == 2


def test_results_localized_defaults_to_every_allowed_language(client) -> None:
    # given
    future = client.Universe.get_universe_types_type_id(type_id=35)

    # when
    names = future.results_localized()

    # then
    assert list(names) == ["en", "de", "fr", "ja", "ru", "zh", "ko", "es"]


@pytest.mark.parametrize("esi_answers", ["400", "en"])
def test_unknown_language_is_refused_before_any_request(
    esi_requests, client, emulator, esi_answers
) -> None:
    # given: whether ESI refuses an unknown language or falls back to
    # English is unverified; either way it is never asked
    emulator.configure(unknown_language=esi_answers)
    future = client.Universe.get_universe_types_type_id(type_id=35)

    # when
    with pytest.raises(InvalidLanguageError) as caught:
        future.results_localized(["fr", "klingon"])

    # then
    assert "'klingon'" in str(caught.value) and "en, de" in str(caught.value)
    assert esi_requests() == 0


def test_result_in_one_language(client) -> None:
    # given / when
    data, response = client.Universe.get_universe_types_type_id(
        type_id=35, _request_options={"also_return_response": True}
    ).result(language="fr")

    # then
    assert data["name"] == "Pyérite"
    assert response.headers["Content-Language"] == "fr"


def test_transient_503_is_retried_then_succeeds(client, emulator) -> None:
    # given two injected 503s on the status route
    emulator.configure(
        esi_faults=[{"status": 503, "count": 2, "path_contains": "/status/"}]
    )
    retries = metrics.ESI_RETRIES.labels("get_status", "transient")
    before = retries._value.get()

    # when
    status = client.Status.get_status().result()

    # then
    assert "players" in status
    assert emulator.stats()["esi_requests_by_status"] == {503: 2, 200: 1}
    assert retries._value.get() - before == 2


def test_transient_errors_outlasting_the_retries_raise(
    esi_requests, client, emulator
) -> None:
    # given more 503s than the retries allowed
    emulator.configure(
        esi_faults=[{"status": 503, "count": 5, "path_contains": "/status/"}]
    )

    # when
    with pytest.raises(ESITransientError) as caught:
        client.Status.get_status().result(retries=1)

    # then
    assert caught.value.status == 503
    assert caught.value.operation == "get_status"
    assert esi_requests() == 2


def test_not_found_raises_http_error_with_status(client) -> None:
    # given a type the emulator has no recording of
    future = client.Universe.get_universe_types_type_id(type_id=999999999)

    # when
    with pytest.raises(HTTPError) as caught:
        future.result()

    # then
    assert caught.value.status == 404
    assert caught.value.operation == "get_universe_types_type_id"
    assert "error" in caught.value.body


def test_420_and_429_raise_their_own_errors(client, emulator) -> None:
    # given an injected 420 then a 429 with Retry-After
    emulator.configure(
        esi_faults=[
            {"status": 420, "count": 1, "path_contains": "/status/"},
            {"status": 429, "count": 1, "path_contains": "/status/", "retry_after": 7},
        ]
    )

    # when
    with pytest.raises(ErrorLimitedError):
        client.Status.get_status().result()
    with pytest.raises(RateLimitedError) as limited:
        client.Status.get_status().result()

    # then
    assert limited.value.status == 429 and limited.value.retry_after_s == 7


def test_authed_call_without_token_fails_before_any_request(
    esi_requests, client, emulator
) -> None:
    # given a client built without a token
    future = client.Assets.get_characters_character_id_assets(character_id=PILOT_ID)

    # when
    with pytest.raises(ScopeMissingError) as caught:
        future.results()

    # then
    assert caught.value.scope == "esi-assets.read_assets.v1"
    assert esi_requests() == 0


def test_authed_call_with_token_lacking_scope_fails_before_any_request(
    esi_requests, token_with, emulator, esi_settings
) -> None:
    # given a token without the assets scope
    token = token_with(["esi-skills.read_skills.v1"])
    client = esi_client_factory(token, settings=esi_settings, cache=MemoryCache())
    requests_before = esi_requests()

    # when
    with pytest.raises(ScopeMissingError) as caught:
        client.Assets.get_characters_character_id_assets(character_id=PILOT_ID).result()

    # then
    assert caught.value.character_id == PILOT_ID
    assert "esi-assets.read_assets.v1" in str(caught.value)
    assert esi_requests() == requests_before


def test_authed_paged_call_with_token_reads_every_page(
    emulator, esi_settings, assets_token
) -> None:
    # given
    client = esi_client_factory(
        assets_token, settings=esi_settings, cache=MemoryCache()
    )

    # when
    assets = client.Assets.get_characters_character_id_assets(
        character_id=PILOT_ID
    ).results()

    # then
    assert len(assets) > 0
    assert emulator.stats()["esi_requests_by_status"] == {200: 2}


def test_passing_the_token_as_a_query_parameter_is_refused(client) -> None:
    # given / when / then
    with pytest.raises(Exception, match="do not pass 'token'"):
        client.Assets.get_characters_character_id_assets(
            character_id=PILOT_ID, token="secret"
        )


def test_bravado_response_method_still_works(client) -> None:
    # given
    future = client.Status.get_status()

    # when
    response = future.response()

    # then
    assert "players" in response.result
    assert response.metadata.status_code == 200


def test_stored_token_refreshes_and_reads_assets(emulator, runtime) -> None:
    # given a grant stored in the token store (its access token already expired)
    grant = emulator.create_grant(
        character_id=PILOT_ID,
        character_name="Test Pilot One",
        scopes=["esi-assets.read_assets.v1"],
    )
    token = runtime.tokens.import_grant(grant)
    client = esi_client_factory(token, settings=runtime.settings, cache=MemoryCache())

    # when
    assets = client.Assets.get_characters_character_id_assets(
        character_id=PILOT_ID
    ).results()

    # then
    assert len(assets) > 0
    assert emulator.stats()["sso_token_requests"] == 1
