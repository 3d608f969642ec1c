"""Spec sources: OpenAPI 3 and Swagger 2.0 drive the same calls; the spec cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import redis

from worker.errors import ConfigurationError, SpecError
from worker.esi import MemoryCache, esi_client_factory
from worker.esi.openapi import pascal_case, snake_case, to_swagger
from worker.esi.spec import BUNDLED_SPEC, forget_built_specs
from worker.esi.specstore import REDIS_PREFIX, entry_key

SPECS = BUNDLED_SPEC.parent
SAMPLE = SPECS / "openapi-sample.json"
CONVERTED = SPECS / "swagger-openapi3.json"
REDIS_URL = "redis://127.0.0.1:6379/0"
REGION = 10000070


def client_from(esi_settings, spec_file: Path | None = None, token=None, **changes):
    """A client on the given spec file (or settings' sources), uncached."""
    settings = esi_settings.replace(**changes) if changes else esi_settings
    return esi_client_factory(
        token, spec_file=spec_file, settings=settings, cache=MemoryCache()
    )


@pytest.mark.parametrize("spec_file", [SAMPLE, CONVERTED, BUNDLED_SPEC])
def test_openapi_and_swagger_specs_drive_the_same_calls(
    esi_settings, assets_token, spec_file
) -> None:
    # given a client on each kind of spec
    client = client_from(esi_settings, spec_file, assets_token)

    # when the calls django-esi users make are made
    status = client.Status.get_status().result()
    types = client.Universe.get_universe_types().result()
    assets = client.Assets.get_characters_character_id_assets(
        character_id=assets_token.character_id
    ).results()

    # then they answer the same as through the bundled Swagger spec
    reference = client_from(esi_settings, BUNDLED_SPEC, assets_token)
    assert status.keys() == reference.Status.get_status().result().keys()
    assert types == reference.Universe.get_universe_types().result()
    assert assets == reference.Assets.get_characters_character_id_assets(
        character_id=assets_token.character_id
    ).results()


def test_converted_bundled_spec_keeps_every_operation_and_body_name(
    esi_settings,
) -> None:
    # given the bundled spec and its swagger2openapi conversion
    swagger = client_from(esi_settings, BUNDLED_SPEC)
    openapi = client_from(esi_settings, CONVERTED)

    # when
    def operations(client):
        return {
            (tag, op_id, tuple(sorted(op.params)))
            for tag, resource in client.swagger_spec.resources.items()
            for op_id, op in resource.operations.items()
        }

    # then the same operations take the same keyword arguments
    assert operations(openapi) == operations(swagger)
    future = openapi.Universe.post_universe_names(ids=[35, 34])
    assert json.loads(future.request_params["data"]) == [35, 34]


def test_pascal_case_names_are_aliases_of_the_snake_case_ones(client) -> None:
    # given / when
    snake = client.Market.get_markets_region_id_orders(region_id=REGION, order_type="all")
    pascal = client.Market.GetMarketsRegionIdOrders(region_id=REGION, order_type="all")

    # then
    assert pascal.results() == snake.results()
    assert "GetMarketsRegionIdOrders" in dir(client.Market)


def test_operation_names_round_trip_between_cases() -> None:
    # given every operation id of the bundled spec
    spec = json.loads(BUNDLED_SPEC.read_text())
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]

    # when / then
    assert all(snake_case(pascal_case(i)) == i for i in ids)
    assert snake_case("GetCharactersCharacterIdAssets") == (
        "get_characters_character_id_assets"
    )


def test_openapi_conversion_rewrites_refs_scopes_headers_and_limits() -> None:
    # given the OpenAPI 3.1 sample
    sample = json.loads(SAMPLE.read_text())

    # when
    swagger = to_swagger(sample, source="sample")

    # then
    op = swagger["paths"]["/characters/{character_id}/notifications"]["get"]
    assert op["operationId"] == "get_characters_character_id_notifications"
    assert op["x-operation-alias"] == "GetCharactersCharacterIdNotifications"
    assert op["security"] == [{"OAuth2": ["esi-characters.read_notifications.v1"]}]
    assert op["x-rate-limit"]["group"] == "char-notification"
    assert "#/components" not in json.dumps(swagger)
    headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
    assert headers["X-Compatibility-Date"]["required"] is False
    assert "ETag" in op["responses"]["200"]["headers"]


def test_resource_versions_use_a_source_that_has_versions(emulator, esi_settings):
    # given default sources, whose first (live OpenAPI) has no versions
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache(), Status="v1")

    # when
    client.Status.get_status().result()

    # then
    assert list(emulator.stats()["esi_requests_by_path"]) == ["/v1/status/"]


def test_versions_asked_of_an_openapi_file_are_refused(esi_settings) -> None:
    with pytest.raises(ConfigurationError, match="no versions"):
        esi_client_factory(spec_file=SAMPLE, settings=esi_settings, Status="v1")


def test_legacy_swagger_gone_falls_back_to_the_bundled_spec(
    emulator, esi_settings, tmp_path
) -> None:
    # given today's ESI: no swagger.json, and no OpenAPI either
    emulator.configure(legacy_swagger=False)
    settings = esi_settings.replace(
        esi_spec_source="swagger", data_dir=tmp_path
    )

    # when / then the swagger source alone names its problem
    forget_built_specs()
    with pytest.raises(SpecError, match="swagger.json answered 404"):
        esi_client_factory(settings=settings)


def test_spec_is_read_from_the_disk_cache_at_the_next_start(
    emulator, esi_settings, tmp_path
) -> None:
    # given a first process that fetched the live spec
    settings = esi_settings.replace(data_dir=tmp_path)
    forget_built_specs()
    esi_client_factory(settings=settings, cache=MemoryCache())
    fetched = sum(emulator.stats()["spec_requests"].values())

    # when a new process starts
    forget_built_specs()
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # then it built the spec from disk without asking ESI
    assert fetched == 1
    assert sum(emulator.stats()["spec_requests"].values()) == 1
    assert list((tmp_path / "spec-cache").glob("*.json"))
    assert client.Status.get_status().result()


def test_old_spec_is_revalidated_and_refreshed_when_esi_publishes_a_new_one(
    emulator, esi_settings, tmp_path
) -> None:
    # given a stored spec older than its max age
    settings = esi_settings.replace(data_dir=tmp_path, esi_spec_max_age_s=0)
    forget_built_specs()
    esi_client_factory(settings=settings, cache=MemoryCache())

    # when ESI has not changed it, then publishes a new compatibility date
    forget_built_specs()
    esi_client_factory(settings=settings, cache=MemoryCache())
    emulator.configure(compatibility_dates=["2025-12-16", "2025-08-26", "2020-01-01", "2019-01-01"])
    forget_built_specs()
    esi_client_factory(settings=settings, cache=MemoryCache())

    # then: downloaded, revalidated with 304, downloaded again
    statuses = [k.rsplit(" ", 1)[1] for k in emulator.stats()["spec_requests"]]
    counts = emulator.stats()["spec_requests"]
    assert sorted(statuses) == ["200", "304"]
    assert counts["/meta/openapi.json 200"] == 2


def test_pickled_spec_in_redis_is_rejected_not_run(
    emulator, esi_settings, tmp_path, caplog
) -> None:
    # given a pickle planted where the shared spec cache lives
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    settings = esi_settings.replace(redis_url=REDIS_URL, data_dir=tmp_path / "d")
    url = f"{emulator.base_url}/meta/openapi.json"
    key = REDIS_PREFIX + entry_key(url, settings.esi_compatibility_date)
    server = redis.Redis.from_url(REDIS_URL)
    server.set(key, pickle.dumps(Payload()))

    # when a process loads the spec
    forget_built_specs()
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # then the value was refused, nothing ran, and a real spec replaced it
    assert not marker.exists()
    assert "spec cache (redis) read failed" in caplog.text
    assert client.Status.get_status().result()
    assert json.loads(server.get(key))["source"] == url
    server.delete(key)
