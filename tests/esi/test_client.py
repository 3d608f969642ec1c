"""esi_client_factory and EsiClientProvider: specs, versions, sharing."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bravado.client import SwaggerClient

import worker.esi
from worker.clock import FrozenClock
from worker.errors import ConfigurationError, SpecError
from worker.esi import EsiClientProvider, MemoryCache, esi_client_factory
from worker.esi.spec import BUNDLED_SPEC
from worker.runtime import Runtime
from worker.settings import Settings


def test_package_exports_the_django_esi_names() -> None:
    # given the names django-esi users import
    wanted = {
        "esi_client_factory",
        "EsiClientProvider",
        "CachingHttpFuture",
        "MemoryCache",
        "RedisCache",
        "cache_from_settings",
    }

    # when / then
    assert set(worker.esi.__all__) == wanted
    assert all(getattr(worker.esi, name) is not None for name in wanted)


def test_client_from_bundled_spec_points_at_configured_esi(
    esi_settings: Settings,
) -> None:
    # given settings that name the bundled spec as the source
    settings = esi_settings.replace(esi_spec_source="bundled")

    # when
    client = esi_client_factory(settings=settings, cache=MemoryCache())

    # then
    assert isinstance(client, SwaggerClient)
    assert client.swagger_spec.api_url == f"{esi_settings.esi_base_url}/latest"
    assert {"Market", "Universe", "Assets", "Status"} <= set(dir(client))


def test_default_client_uses_the_live_openapi_spec_on_unversioned_paths(
    client: SwaggerClient, esi_settings: Settings, emulator
) -> None:
    # given a client built with the default sources (fixture)

    # when
    client.Status.get_status().result()

    # then
    assert client.swagger_spec.api_url == f"{esi_settings.esi_base_url}/"
    assert list(emulator.stats()["esi_requests_by_path"]) == ["/status"]


def test_client_from_spec_file_answers_calls(
    esi_requests, esi_settings, tmp_path: Path
) -> None:
    # given a copy of the spec in a file of our own
    spec_file = tmp_path / "esi.json"
    shutil.copy(BUNDLED_SPEC, spec_file)
    client = esi_client_factory(
        spec_file=spec_file, settings=esi_settings, cache=MemoryCache()
    )

    # when
    status = client.Status.get_status().result()

    # then
    assert status["players"] >= 0
    assert esi_requests() == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"openapi": "3.1.0", "paths": {}}), "OpenAPI 3.1.0"),
        (json.dumps({"swagger": "2.0", "paths": {}}), "no 'paths'"),
    ],
)
def test_broken_spec_file_error_names_file_and_problem(
    esi_settings, tmp_path: Path, content, problem
) -> None:
    # given a spec file that is missing or broken
    spec_file = tmp_path / "broken.json"
    if content is not None:
        spec_file.write_text(content)

    # when
    with pytest.raises(SpecError) as caught:
        esi_client_factory(spec_file=spec_file, settings=esi_settings)

    # then
    assert str(spec_file) in str(caught.value)
    assert problem in str(caught.value)


def test_clients_share_one_built_spec(esi_settings: Settings) -> None:
    # given two clients for the same ESI
    first = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # when
    second = esi_client_factory(settings=esi_settings, cache=MemoryCache())

    # then
    assert first.swagger_spec is second.swagger_spec
    assert first is not second


def test_version_changes_every_route_prefix(emulator, esi_settings: Settings) -> None:
    # given a client on the legacy routes
    client = esi_client_factory(
        version="legacy", settings=esi_settings, cache=MemoryCache()
    )

    # when
    client.Status.get_status().result()

    # then
    assert list(emulator.stats()["esi_requests_by_path"]) == ["/legacy/status/"]


def test_resource_version_pins_one_resource(emulator, esi_settings: Settings) -> None:
    # given a client whose Status resource is pinned to v1
    client = esi_client_factory(settings=esi_settings, cache=MemoryCache(), Status="v1")

    # when
    client.Status.get_status().result()
    client.Universe.get_universe_types_type_id(type_id=35).result()

    # then
    paths = set(emulator.stats()["esi_requests_by_path"])
    assert paths == {"/v1/status/", "/latest/universe/types/35/"}


@pytest.mark.parametrize(
    "kwargs", [{"version": "newest"}, {"Status": "2"}, {"Nonsense": "v1"}]
)
def test_bad_versions_and_resources_are_refused_by_name(esi_settings, kwargs) -> None:
    # given a version or resource name ESI does not have
    # when
    with pytest.raises(ConfigurationError) as caught:
        esi_client_factory(settings=esi_settings, **kwargs)

    # then
    assert any(str(v) in str(caught.value) for v in [*kwargs, *kwargs.values()])


def test_provider_builds_nothing_until_asked(esi_settings: Settings) -> None:
    # given a provider made at import time, before any runtime exists
    provider = EsiClientProvider(app_info_text="my-app/1.0")

    # when / then
    assert "built=False" in repr(provider)
    assert str(provider) == "EsiClientProvider"


def test_provider_shares_one_client_across_threads(esi_settings: Settings) -> None:
    # given a provider bound to a runtime
    runtime = Runtime(esi_settings, None, clock=FrozenClock())
    provider = EsiClientProvider(runtime=runtime)

    # when many threads ask for the client at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: provider.client, range(16)))

    # then
    assert all(c is clients[0] for c in clients)
    assert clients[0].http_client.cache is runtime.cache


def test_runtime_esi_is_a_provider_using_the_runtime_settings(
    esi_requests, esi_settings
) -> None:
    # given an active runtime
    runtime = Runtime(esi_settings, None)

    # when
    with runtime.activated():
        status = runtime.esi.client.Status.get_status().result(ignore_cache=True)

    # then
    assert "players" in status
    assert esi_requests() == 1
