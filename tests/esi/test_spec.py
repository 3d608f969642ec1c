"""Spec sources: OpenAPI 3 and Swagger 2.0 drive the same calls; the spec cache."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

import pytest
import redis

from worker.errors import (
    ConfigurationError,
    InvalidParameterError,
    ScopeMissingError,
    SpecError,
)
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


def test_the_swagger_source_alone_names_its_problem_when_the_file_is_gone(
    emulator, esi_settings, tmp_path
) -> None:
    # given today's ESI: no swagger.json
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


# -- source order -------------------------------------------------------------


def test_auto_falls_back_past_a_failing_openapi_spec_in_order(
    esi_settings, routed_server, tmp_path
) -> None:
    # given ESI's OpenAPI spec failing, and its legacy Swagger file served
    swagger = BUNDLED_SPEC.read_bytes()
    routed_server.routes = {
        "/meta/openapi.json": (500, "text/plain", b"oops"),
        "/latest/swagger.json": (200, "application/json", swagger),
    }
    settings = esi_settings.replace(
        esi_base_url=routed_server.base_url, data_dir=tmp_path
    )

    # when
    forget_built_specs()
    from_swagger = esi_client_factory(settings=settings, cache=MemoryCache())
    routed_server.routes.pop("/latest/swagger.json")
    forget_built_specs()
    from_bundle = esi_client_factory(
        settings=settings.replace(data_dir=tmp_path / "other"), cache=MemoryCache()
    )

    # then each source was tried in turn
    assert from_swagger.swagger_spec.origin_url.endswith("/latest/swagger.json")
    assert from_bundle.swagger_spec.origin_url.startswith("file:")
    asked = [p.split("?")[0] for p in routed_server.requests]
    assert asked[:2] == ["/meta/openapi.json", "/latest/swagger.json"]


def test_versions_asked_of_the_openapi_source_are_refused(esi_settings) -> None:
    # given / when / then: as for an OpenAPI file, not applied silently
    settings = esi_settings.replace(esi_spec_source="openapi")
    with pytest.raises(ConfigurationError, match="no route versions"):
        esi_client_factory(settings=settings, cache=MemoryCache(), Status="v1")


# -- what the conversion keeps (findings 8, 9, 19) -------------------------------


def write_spec(tmp_path: Path, document: dict, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_document_level_security_keeps_operations_authed(
    esi_settings, tmp_path, esi_requests
) -> None:
    # given an OpenAPI spec naming its security once, for every operation
    sample = json.loads(SAMPLE.read_text())
    op = sample["paths"]["/characters/{character_id}/assets"]["get"]
    sample["security"] = op.pop("security")
    client = client_from(esi_settings, write_spec(tmp_path, sample))

    # when / then: without a token the call fails before any request
    with pytest.raises(ScopeMissingError, match="esi-assets.read_assets.v1"):
        client.Assets.get_characters_character_id_assets(
            character_id=2112000001
        ).result()
    assert esi_requests() == 0


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": [{"type": "integer", "format": "int32", "minimum": 1},
                   {"type": "null"}]},
        {"oneOf": [{"type": "integer"}]},
        {"type": ["integer", "null"], "minimum": 1},
        {"$ref": "#/components/schemas/PageNumber"},
        {"anyOf": [{"$ref": "#/components/schemas/PageNumber"}, {"type": "null"}]},
        {"type": "integer", "nullable": True},
    ],
    ids=["anyOf-null", "oneOf-one", "type-list", "ref-to-anyOf", "anyOf-ref", "3.0-nullable"],
)
def test_parameters_written_the_openapi_31_way_take_their_type(
    esi_settings, tmp_path, schema
) -> None:
    # given the page parameter typed as 3.1 writes "integer or null"
    sample = json.loads(SAMPLE.read_text())
    sample["components"]["schemas"]["PageNumber"] = {
        "anyOf": [{"type": "integer"}, {"type": "null"}]
    }
    for param in sample["paths"]["/universe/types"]["get"]["parameters"]:
        if param.get("name") == "page":
            param["schema"] = schema
    client = client_from(esi_settings, write_spec(tmp_path, sample))
    op = client.Universe.get_universe_types

    # when
    future = op(page=2)

    # then an int is accepted, sent as such, and still checked
    assert future.request_params["params"]["page"] == "2"
    assert op(page=1).result()
    with pytest.raises(InvalidParameterError):
        op(page="two")


def test_a_parameter_of_several_types_is_left_untyped(tmp_path) -> None:
    # given
    sample = json.loads(SAMPLE.read_text())
    for param in sample["paths"]["/universe/types"]["get"]["parameters"]:
        if param.get("name") == "page":
            param["schema"] = {"oneOf": [{"type": "integer"}, {"type": "string"}]}

    # when
    swagger = to_swagger(sample, source="sample")

    # then
    params = swagger["paths"]["/universe/types"]["get"]["parameters"]
    page = next(p for p in params if p["name"] == "page")
    assert "type" not in page


def test_a_request_body_by_reference_keeps_its_schema(esi_settings, tmp_path) -> None:
    # given a requestBody that is a $ref into components.requestBodies
    sample = json.loads(SAMPLE.read_text())
    sample["components"]["requestBodies"] = {
        "Ids": {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "array", "items": {"type": "integer"}, "minItems": 1}}},
        }
    }
    sample["paths"]["/universe/names"] = {"post": {
        "operationId": "PostUniverseNames", "tags": ["Universe"],
        "requestBody": {"$ref": "#/components/requestBodies/Ids"},
        "responses": {"200": {"description": "ok"}},
    }}
    client = client_from(esi_settings, write_spec(tmp_path, sample))
    op = client.Universe.post_universe_names

    # when / then: required, typed, and sent as JSON
    assert json.loads(op(body=[34, 35]).request_params["data"]) == [34, 35]
    with pytest.raises(InvalidParameterError, match="body"):
        op()
    with pytest.raises(InvalidParameterError, match="body"):
        op(body=["pyerite"])


# -- broken specs, caught at load (finding 10) -----------------------------------


def _sample_with(change) -> dict:
    sample = json.loads(SAMPLE.read_text())
    change(sample)
    return sample


def _swagger_with(change) -> dict:
    swagger = json.loads(BUNDLED_SPEC.read_text())
    change(swagger)
    return swagger


def _status(doc: dict) -> dict:
    return doc["paths"]["/status"]["get"]


BROKEN = {
    "openapi-response-schema": lambda: _sample_with(
        lambda d: _status(d)["responses"]["200"]["content"]["application/json"]
        .update(schema={"$ref": "#/components/schemas/Nowhere"})
    ),
    "openapi-parameter": lambda: _sample_with(
        lambda d: _status(d)["parameters"].append(
            {"$ref": "#/components/parameters/Nowhere"})
    ),
    "openapi-response": lambda: _sample_with(
        lambda d: _status(d)["responses"].update(
            {"200": {"$ref": "#/components/responses/Nowhere"}})
    ),
    "openapi-ref-loop": lambda: _sample_with(
        lambda d: d["components"]["schemas"].update(
            {"A": {"$ref": "#/components/schemas/B"},
             "B": {"$ref": "#/components/schemas/A"}}
        ) or _status(d)["responses"]["200"]["content"]["application/json"].update(
            schema={"$ref": "#/components/schemas/A"})
    ),
    "swagger-response-schema": lambda: _swagger_with(
        lambda d: d["paths"]["/status/"]["get"]["responses"]["200"].update(
            schema={"$ref": "#/definitions/Nowhere"})
    ),
    "swagger-parameter": lambda: _swagger_with(
        lambda d: d["paths"]["/status/"]["get"]["parameters"].append(
            {"$ref": "#/parameters/Nowhere"})
    ),
    "swagger-elsewhere": lambda: _swagger_with(
        lambda d: d["paths"]["/status/"]["get"]["responses"]["200"].update(
            schema={"$ref": "https://example.invalid/schema.json"})
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_reference_to_nowhere_fails_the_load_naming_file_and_pointer(
    esi_settings, tmp_path, name
) -> None:
    # given
    path = write_spec(tmp_path, BROKEN[name](), f"{name}.json")

    settings = esi_settings.replace(data_dir=tmp_path / "data")

    # when / then
    forget_built_specs()
    with pytest.raises(SpecError) as caught:
        client_from(settings, path)
    message = str(caught.value)
    assert str(path) in message and "$ref" in message
    assert "/paths/" in message or "loop" in message
    assert not list((tmp_path / "data").glob("**/*.json"))


def test_a_broken_live_spec_is_refused_and_never_stored(
    esi_settings, routed_server, tmp_path
) -> None:
    # given ESI serving a spec with a reference to nowhere
    document = BROKEN["openapi-response-schema"]()
    routed_server.routes = {
        "/meta/openapi.json": (200, "application/json", json.dumps(document).encode())
    }
    settings = esi_settings.replace(
        esi_base_url=routed_server.base_url, esi_spec_source="openapi",
        data_dir=tmp_path,
    )

    # when / then
    forget_built_specs()
    with pytest.raises(SpecError, match="Nowhere"):
        esi_client_factory(settings=settings, cache=MemoryCache())
    assert not list((tmp_path / "spec-cache").glob("*.json"))


def test_a_stored_spec_that_does_not_build_is_fetched_anew(
    emulator, esi_settings, tmp_path
) -> None:
    # given a spec cache entry that is JSON but not a usable spec
    settings = esi_settings.replace(data_dir=tmp_path)
    forget_built_specs()
    esi_client_factory(settings=settings, cache=MemoryCache())
    (stored,) = (tmp_path / "spec-cache").glob("*.json")
    entry = json.loads(stored.read_text())
    status = entry["swagger"]["paths"]["/status"]["get"]
    status["responses"]["200"]["schema"] = {"$ref": "#/definitions/Nowhere"}
    stored.write_text(json.dumps(entry))

    # when
    forget_built_specs()
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # then it was replaced by ESI's
    assert client.Status.get_status().result()
    assert emulator.stats()["spec_requests"]["/meta/openapi.json 200"] == 2
    assert "Nowhere" not in stored.read_text()


def test_the_bundled_specs_have_no_reference_to_nowhere() -> None:
    from worker.esi.refs import check_refs

    for path in (BUNDLED_SPEC, CONVERTED, SAMPLE):
        check_refs(json.loads(path.read_text()), str(path))
        check_refs(to_swagger(json.loads(path.read_text()), source=str(path))
                   if "openapi" in json.loads(path.read_text()) else {}, str(path))


# -- spec files: YAML, the converted form kept (finding 16) ----------------------


def test_a_yaml_spec_file_is_read(esi_settings, tmp_path) -> None:
    # given the OpenAPI sample as YAML
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(json.loads(SAMPLE.read_text())))

    # when
    client = client_from(esi_settings, path)

    # then
    assert "players" in client.Status.get_status().result()


def test_a_file_that_is_neither_json_nor_yaml_is_refused_by_name(
    esi_settings, tmp_path
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("openapi: [3.1\n  paths: {")
    with pytest.raises(SpecError, match="neither JSON nor YAML") as caught:
        client_from(esi_settings, path)
    assert str(path) in str(caught.value)


def test_an_openapi_spec_file_is_converted_once_and_kept(
    esi_settings, tmp_path
) -> None:
    # given an OpenAPI file loaded once
    path = tmp_path / "openapi.json"
    path.write_bytes(SAMPLE.read_bytes())
    settings = esi_settings.replace(data_dir=tmp_path / "data")
    forget_built_specs()
    client_from(settings, path)
    (stored,) = (tmp_path / "data" / "spec-cache").glob("*.json")

    # when the next process starts (the kept conversion marked to tell)
    entry = json.loads(stored.read_text())
    entry["swagger"]["paths"]["/status"]["get"]["summary"] = "from the spec cache"
    stored.write_text(json.dumps(entry))
    forget_built_specs()
    client = client_from(settings, path)

    # then it was not converted again; a changed file is
    op = client.Status.get_status().operation
    assert op.op_spec["summary"] == "from the spec cache"
    path.write_text(SAMPLE.read_text().replace("GetStatus", "GetStatus", 1) + "\n")
    forget_built_specs()
    changed = client_from(settings, path)
    assert changed.Status.get_status().operation.op_spec["summary"] != (
        "from the spec cache"
    )


def test_spec_cache_keeps_one_entry_per_compatibility_date(
    emulator, esi_settings, tmp_path
) -> None:
    # given two compatibility dates
    settings = esi_settings.replace(data_dir=tmp_path)
    other = settings.replace(esi_compatibility_date="2025-08-26")

    # when each is loaded twice by fresh processes
    for current in (settings, other, settings, other):
        forget_built_specs()
        esi_client_factory(settings=current, cache=MemoryCache())

    # then each date was fetched once
    assert emulator.stats()["spec_requests"]["/meta/openapi.json 200"] == 2
    assert len(list((tmp_path / "spec-cache").glob("*.json"))) == 2


def test_a_spec_fetched_by_one_process_is_shared_with_the_next_through_redis(
    emulator, esi_settings, tmp_path, redis_prefix
) -> None:
    # given a process that fetched the spec, on a shared Redis
    import subprocess
    import sys

    child = (
        "import sys\n"
        "from worker.esi import MemoryCache, esi_client_factory\n"
        "from worker.settings import Settings\n"
        "s = Settings(esi_base_url=sys.argv[1], data_dir=sys.argv[2],\n"
        "             redis_url=sys.argv[3], esi_redis_prefix=sys.argv[4])\n"
        "c = esi_client_factory(settings=s, cache=MemoryCache())\n"
        "print(c.swagger_spec.origin_url)\n"
    )

    def process(data_dir: Path) -> str:
        return subprocess.run(
            [sys.executable, "-c", child, emulator.base_url, str(data_dir),
             REDIS_URL, redis_prefix],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout

    # when a second process with an empty disk cache starts
    process(tmp_path / "one")
    origin = process(tmp_path / "two")

    # then ESI was asked once; the key lives under the configured prefix
    assert "/meta/openapi.json" in origin
    assert emulator.stats()["spec_requests"] == {"/meta/openapi.json 200": 1}
    server = redis.Redis.from_url(REDIS_URL)
    assert list(server.scan_iter(f"{redis_prefix}spec:*"))
    server.close()


def test_clients_differing_in_date_parsing_get_their_own_spec(esi_settings) -> None:
    # given a client parsing dates, then one that does not (issue-2 audit B)
    forget_built_specs()
    parsing = client_from(esi_settings, BUNDLED_SPEC)
    plain = client_from(esi_settings.replace(esi_parse_formats=False), BUNDLED_SPEC)

    # when
    issued = [
        c.Status.get_status().result()["start_time"] for c in (parsing, plain)
    ]

    # then whichever was built first, each parses as its settings say
    assert isinstance(issued[0], dt.datetime) and isinstance(issued[1], str)
    assert parsing.swagger_spec is not plain.swagger_spec


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(openapi="4.0.0"), "only 3.x"),
        (lambda d: d.update(openapi="2.5"), "only 3.x"),
        (lambda d: d.pop("paths"), "no 'paths'"),
        (lambda d: d["paths"].update({"/status": "nope"}), "could not be converted"),
        (lambda d: _status(d).update(parameters="x"), "could not be converted"),
        (lambda d: _status(d).update(parameters=[{"name": "x"}]), "could not be converted"),
    ],
    ids=["openapi-4", "openapi-2.5", "no-paths", "path-item-text", "params-text",
         "param-without-in"],
)
def test_malformed_openapi_files_are_refused_naming_file_and_problem(
    esi_settings, tmp_path, change, problem
) -> None:
    # given
    path = write_spec(tmp_path, _sample_with(change))

    # when / then
    with pytest.raises(SpecError, match=problem) as caught:
        client_from(esi_settings, path)
    assert str(path) in str(caught.value)
