"""The emulator as today's ESI: full OpenAPI specs, gone Swagger, snapshots, cursors."""

from __future__ import annotations

import requests

from worker.emulator import Emulator

MARKET = "/markets/10000070/orders?order_type=all"


def get(emulator: Emulator, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{emulator.base_url}{path}", timeout=10, **kwargs)


def test_openapi_31_spec_describes_todays_unversioned_routes(emulator) -> None:
    # given / when
    spec = get(emulator, "/meta/openapi.json").json()

    # then
    assert spec["openapi"] == "3.1.0"
    assert spec["servers"] == [{"url": emulator.base_url}]
    op = spec["paths"]["/characters/{character_id}/assets"]["get"]
    assert op["operationId"] == "GetCharactersCharacterIdAssets"
    assert op["security"] == [{"OAuth2": ["esi-assets.read_assets.v1"]}]
    assert op["x-rate-limit"] == {
        "group": "char-asset", "max-tokens": 1800, "window-size": "15m"
    }
    refs = {p.get("$ref") for p in op["parameters"]}
    assert "#/components/parameters/CompatibilityDate" in refs
    assert len(spec["paths"]) >= 191


def test_openapi_30_spec_is_served_beside_it(emulator) -> None:
    # given / when
    spec = get(emulator, "/meta/openapi-3.0.json").json()

    # then
    assert spec["openapi"].startswith("3.0")


def test_spec_answers_304_to_its_etag(emulator) -> None:
    # given
    etag = get(emulator, "/meta/openapi.json").headers["ETag"]

    # when
    again = get(emulator, "/meta/openapi.json", headers={"If-None-Match": etag})

    # then
    assert again.status_code == 304


def test_legacy_swagger_is_404_when_switched_off_as_today(emulator) -> None:
    # given
    emulator.configure(legacy_swagger=False)

    # when / then
    assert get(emulator, "/latest/swagger.json").status_code == 404
    assert get(emulator, "/status").status_code == 200


def test_mutation_stamps_generations_and_bumps_after_requests(emulator) -> None:
    # given a snapshot that ends after two answers
    emulator.configure(
        esi_mutations=[{"path_contains": "/markets/", "bump_after": 2}]
    )

    # when
    pages = [get(emulator, f"{MARKET}&page={n}") for n in (1, 2, 3)]

    # then
    assert [p.json()[0]["emulator_generation"] for p in pages] == [0, 0, 1]
    assert pages[0].headers["Last-Modified"] != pages[2].headers["Last-Modified"]


def test_stable_page_keeps_its_etag_across_generations(emulator) -> None:
    # given
    emulator.configure(
        esi_mutations=[{"path_contains": "/markets/", "stable_pages": [2], "bump_after": 1, "bumps": 2}]
    )
    first = get(emulator, f"{MARKET}&page=2")

    # when
    again = get(emulator, f"{MARKET}&page=2", headers={"If-None-Match": first.headers["ETag"]})

    # then
    assert again.status_code == 304


def test_cursor_route_walks_before_and_after(emulator) -> None:
    # given
    emulator.configure(cursor_records=150)

    # when
    newest = get(emulator, "/corporations/98000001/projects").json()
    older = get(
        emulator, f"/corporations/98000001/projects?before={newest['cursor']['before']}"
    ).json()
    later = get(
        emulator, f"/corporations/98000001/projects?after={newest['cursor']['after']}"
    ).json()

    # then
    assert [r["id"] for r in newest["projects"]][-1] == 1150
    assert [r["id"] for r in older["projects"]] == list(range(1001, 1051))
    assert later["projects"] == []


def test_bad_cursor_token_is_a_bad_request(emulator) -> None:
    # given / when / then
    assert get(emulator, "/corporations/1/projects?before=nonsense").status_code == 400


def test_synthetic_market_region_has_fifty_full_pages(emulator) -> None:
    # given / when
    last = get(emulator, "/markets/19000001/orders?order_type=all&page=50")

    # then
    assert last.headers["X-Pages"] == "50" and len(last.json()) == 1000
