"""The emulator's synthetic roles route and the roles corporate routes require."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import requests

from worker.emulator import Emulator, EmulatorConfig
from worker.emulator.synthetic import corporation_roles
from worker.errors import ConfigurationError

ROLES_SCOPE = "esi-characters.read_corporation_roles.v1"
WALLETS_SCOPE = "esi-wallet.read_corporation_wallets.v1"
PILOT = 2112000001
OTHER = 2113024536


def _token(emulator: Emulator, scopes: list[str], character_id: int = PILOT) -> str:
    grant = emulator.create_grant(character_id, f"Pilot {character_id}", scopes)
    answer = requests.post(
        f"{emulator.base_url}/v2/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    return answer.json()["access_token"]


def _get(emulator: Emulator, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{emulator.base_url}{path}", headers=headers, timeout=5)


@pytest.mark.parametrize(
    "path",
    [
        "/characters/2112000001/roles",
        "/latest/characters/2112000001/roles/",
        "/v2/characters/2112000001/roles/",
    ],
)
def test_roles_come_from_the_config_on_each_path_style(
    emulator: Emulator, path: str
) -> None:
    # given
    emulator.configure(character_roles={str(PILOT): ["Accountant", "Trader"]})
    token = _token(emulator, [ROLES_SCOPE])

    # when
    answer = _get(emulator, path, token)

    # then: shaped as the spec's 200 schema, private and cached an hour
    assert answer.status_code == 200
    assert answer.json() == {
        "roles": ["Accountant", "Trader"],
        "roles_at_base": [],
        "roles_at_hq": [],
        "roles_at_other": [],
    }
    assert answer.headers["Cache-Control"] == "private, max-age=3600"


def test_a_character_holds_no_roles_by_default(emulator: Emulator) -> None:
    # given: roles set for someone else only
    emulator.configure(character_roles={str(OTHER): ["Director"]})
    token = _token(emulator, [ROLES_SCOPE])

    # when
    answer = _get(emulator, f"/characters/{PILOT}/roles", token)

    # then
    assert answer.status_code == 200 and answer.json()["roles"] == []


def test_changed_roles_are_served_under_a_new_etag(emulator: Emulator) -> None:
    # given
    token = _token(emulator, [ROLES_SCOPE])
    before = _get(emulator, f"/characters/{PILOT}/roles", token)

    # when
    emulator.configure(character_roles={PILOT: ["Director"]})
    after = _get(emulator, f"/characters/{PILOT}/roles", token)

    # then
    assert (before.json()["roles"], after.json()["roles"]) == ([], ["Director"])
    assert before.headers["ETag"] != after.headers["ETag"]


def test_roles_need_the_roles_scope_and_the_same_character(
    emulator: Emulator,
) -> None:
    # given
    emulator.configure(character_roles={str(PILOT): ["Director"]})
    no_scope = _token(emulator, ["esi-assets.read_assets.v1"])
    other = _token(emulator, [ROLES_SCOPE], character_id=OTHER)

    # when
    without_token = _get(emulator, f"/characters/{PILOT}/roles", None)
    without_scope = _get(emulator, f"/characters/{PILOT}/roles", no_scope)
    not_yours = _get(emulator, f"/characters/{PILOT}/roles", other)

    # then: as ESI answers, and no roles leak in any error
    assert without_token.status_code == 401
    assert without_scope.status_code == 403
    assert ROLES_SCOPE in without_scope.json()["error"]
    assert not_yours.status_code == 403
    for answer in (without_token, without_scope, not_yours):
        assert "Director" not in answer.text


@pytest.mark.parametrize(
    "roles, status",
    [
        ([], 403),
        (["Trader"], 403),
        (["Junior_Accountant"], 404),
        (["Director"], 404),
    ],
    ids=["none", "other-role", "one-of-required", "director"],
)
def test_a_corporate_route_refuses_a_character_without_a_required_role(
    emulator: Emulator, roles: list[str], status: int
) -> None:
    # given: wallets require Accountant or Junior_Accountant (x-required-roles)
    emulator.configure(character_roles={str(PILOT): roles})
    token = _token(emulator, [WALLETS_SCOPE])

    # when
    answer = _get(emulator, "/corporations/1000171/wallets", token)

    # then: 403 without the role; with it, the check passes and the
    # emulator says it holds no recording of corporate wallets
    assert answer.status_code == status
    if status == 403:
        assert answer.json() == {"error": "Character does not have required role(s)"}
    else:
        assert "no recording" in answer.json()["error"]


def test_roles_are_set_over_http_and_read_back(emulator: Emulator) -> None:
    # when
    patched = requests.patch(
        f"{emulator.base_url}/_emulator/config",
        json={"character_roles": {str(PILOT): ["Station_Manager"]}},
        timeout=5,
    )
    read = requests.get(f"{emulator.base_url}/_emulator/config", timeout=5)

    # then
    assert patched.status_code == 200
    assert read.json()["character_roles"] == {str(PILOT): ["Station_Manager"]}


@pytest.mark.parametrize(
    "value, message",
    [
        ({"2112000001": ["Accountent"]}, "unknown role(s) ['Accountent']"),
        ({"pilot": ["Trader"]}, "keys must be character ids"),
        ({"2112000001": "Trader"}, "must be a list of roles"),
        (["Trader"], "must map character ids"),
    ],
)
def test_bad_roles_are_refused_by_name(
    emulator: Emulator, value: object, message: str
) -> None:
    # when
    answer = requests.patch(
        f"{emulator.base_url}/_emulator/config",
        json={"character_roles": value},
        timeout=5,
    )

    # then
    assert answer.status_code == 400 and message in answer.json()["error"]
    with pytest.raises(ConfigurationError, match="character_roles"):
        EmulatorConfig(character_roles=value)  # type: ignore[arg-type]


def test_the_known_roles_are_the_enum_of_the_bundled_spec() -> None:
    # given
    specs = resources.files("worker").joinpath("esi", "specs")
    swagger = json.loads(specs.joinpath("swagger.json").read_text("utf-8"))
    route = swagger["paths"]["/characters/{character_id}/roles/"]["get"]
    schema = route["responses"]["200"]["schema"]["properties"]

    # then
    assert corporation_roles() == set(schema["roles"]["items"]["enum"])
    assert {"Accountant", "Director", "Junior_Accountant"} <= corporation_roles()
