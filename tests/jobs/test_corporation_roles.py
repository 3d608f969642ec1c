"""Per-corporation runs with corporation roles, checked over HTTP in the emulator.

The corporations come from recorded public character answers: 2113024536
and 2117692215 are members of 98613799, 2112000001 of 1000171. The roles
come from the emulator's ``character_roles`` switch; the emulator refuses
a corporate route (403) to a character without one of its required roles,
as ESI does, so a run made with the wrong token would show there.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import pytest
import requests

from worker.emulator import Emulator
from worker.errors import HTTPError
from worker.jobs import ROLES_SCOPE, Job, JobContext, JobRegistry, job
from worker.jobs.subjects import corporation_of, subjects
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

WALLETS = "esi-wallet.read_corporation_wallets.v1"
CORPORATION = 98613799
MEMBERS = {2113024536: "Bokobo Shahni", 2117692215: "Member Two"}
LONE_CORPORATION = 1000171
LONE_PILOT = 2112000001


class WalletProbe:
    """A per-corporation job needing the Accountant role; notes whose token ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, int]] = []
        self._lock = threading.Lock()
        self.job: Job = job(
            "corp_wallets",
            scopes=WALLETS,
            fan_out="per_corporation",
            roles=["Accountant"],
            every=600,
        )(self._run)

    def _run(self, ctx: JobContext) -> None:
        assert ctx.token is not None
        with self._lock:
            self.calls.append((ctx.corporation_id, ctx.token.character_id))
        wallets = ctx.esi.Wallet.get_corporations_corporation_id_wallets
        try:
            wallets(corporation_id=ctx.corporation_id).result()
        except HTTPError as exc:
            # Past the role check the emulator has no recording of corporate
            # wallets; a 403 (wrong token) must still fail the run.
            if exc.status != 404:
                raise


def _plan_and_run(runtime: Runtime, job: Job) -> tuple[set[int], list[dict]]:
    """Plan ``job`` once as the leader would, run what was sent, return
    the planned corporations and the run records."""
    worker = StartedWorker(runtime, JobRegistry("none", extra=[job]))
    try:
        now = runtime.clock.now()
        planned = set(subjects(runtime, job))
        worker.scheduler().plan(job, now, now - dt.timedelta(seconds=600))
        worker.join()
        return planned, worker.runs(job.name)
    finally:
        worker.stop()


def _wallet_calls(stats: dict[str, Any], corporation_id: int) -> int:
    """Requests of the corporation's wallets, in any path style."""
    paths = stats["esi_requests_by_path"]
    return sum(n for p, n in paths.items() if f"/{corporation_id}/wallets" in p)


def _member_tokens(make_token: Any, first: int) -> dict[int, int]:
    """Tokens of both members, ``first`` stored first; character -> token id."""
    order = [first, *(c for c in MEMBERS if c != first)]
    return {c: make_token(c, MEMBERS[c], [WALLETS, ROLES_SCOPE]).id for c in order}


@pytest.mark.parametrize(
    "holder, roles",
    [(2117692215, ["Accountant"]), (2113024536, ["Director"])],
    ids=["accountant", "director-only"],
)
def test_the_run_uses_the_token_of_the_member_holding_the_role(
    runtime: Runtime,
    emulator: Emulator,
    make_token: Any,
    holder: int,
    roles: list[str],
) -> None:
    # given: two members, the one stored first holding an unrelated role
    # only, the other the needed role (or Director, which holds every role)
    lacking = next(c for c in MEMBERS if c != holder)
    emulator.configure(character_roles={str(lacking): ["Trader"], str(holder): roles})
    tokens = _member_tokens(make_token, first=lacking)
    assert {corporation_of(runtime, c) for c in MEMBERS} == {CORPORATION}
    probe = WalletProbe()

    # when
    planned, runs = _plan_and_run(runtime, probe.job)

    # then: one run, made with the holder's token
    assert planned == {CORPORATION}
    assert probe.calls == [(CORPORATION, holder)]
    assert [(r["corporation_id"], r["outcome"]) for r in runs] == [
        (CORPORATION, "success")
    ]
    assert tokens[lacking] < tokens[holder]

    # and: the corporate route was called once, and nothing was refused
    stats = emulator.stats()
    assert _wallet_calls(stats, CORPORATION) == 1
    assert 403 not in stats["esi_requests_by_status"]


def test_a_corporation_where_no_member_holds_the_role_is_skipped(
    runtime: Runtime,
    emulator: Emulator,
    make_token: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: 98613799 has an Accountant; the lone member of 1000171 is a
    # Trader, which the wallets need not
    emulator.configure(
        character_roles={
            str(LONE_PILOT): ["Trader"],
            "2117692215": ["Accountant"],
        }
    )
    _member_tokens(make_token, first=2113024536)
    make_token(LONE_PILOT, "Test Pilot One", [WALLETS, ROLES_SCOPE])
    probe = WalletProbe()
    caplog.set_level(logging.INFO, logger="jobs.corp_wallets")

    # when
    planned, runs = _plan_and_run(runtime, probe.job)

    # then: both corporations are planned; 1000171's run is skipped with
    # the reason recorded and logged, and the job never ran for it
    assert planned == {CORPORATION, LONE_CORPORATION}
    outcomes = {r["corporation_id"]: (r["outcome"], r["error"]) for r in runs}
    assert outcomes[CORPORATION] == ("success", None)
    reason = (
        f"no member of corporation {LONE_CORPORATION} has a valid token with "
        f"{probe.job.token_scopes} and the roles ['Accountant']"
    )
    assert outcomes[LONE_CORPORATION] == ("skipped", reason)
    assert f"job 'corp_wallets' skipped: {reason}" in caplog.messages
    assert probe.calls == [(CORPORATION, 2117692215)]

    # and: no corporate route was called for 1000171, none was refused
    stats = emulator.stats()
    assert _wallet_calls(stats, LONE_CORPORATION) == 0
    assert 403 not in stats["esi_requests_by_status"]


def test_a_member_with_a_dead_grant_is_passed_over_for_the_next(
    runtime: Runtime, emulator: Emulator, make_token: Any
) -> None:
    # given: the first member's grant was revoked in the SSO (its stored
    # access token has expired, so the roles lookup must refresh it)
    emulator.configure(character_roles={"2117692215": ["Accountant"]})
    tokens = _member_tokens(make_token, first=2113024536)
    dead = runtime.tokens.get(tokens[2113024536])
    assert dead is not None and dead.refresh_token is not None
    revoked = requests.post(
        f"{emulator.base_url}/v2/oauth/revoke",
        data={"token": dead.refresh_token, "token_type_hint": "refresh_token"},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    assert revoked.status_code == 200
    probe = WalletProbe()

    # when
    _planned, runs = _plan_and_run(runtime, probe.job)

    # then: the run went on with the member who holds the role
    assert [(r["corporation_id"], r["outcome"]) for r in runs] == [
        (CORPORATION, "success")
    ]
    assert probe.calls == [(CORPORATION, 2117692215)]


def test_the_roles_of_the_routes_come_from_the_spec_and_one_of_them_is_enough(
    runtime: Runtime, emulator: Emulator, make_token: Any
) -> None:
    # given: a job naming the wallets route only (ESI: Accountant or
    # Junior_Accountant), and members holding Trader / Junior_Accountant
    emulator.configure(
        character_roles={"2113024536": ["Trader"], "2117692215": ["Junior_Accountant"]}
    )
    _member_tokens(make_token, first=2113024536)
    calls: list[int] = []

    @job(
        "route_wallets",
        scopes=WALLETS,
        fan_out="per_corporation",
        routes=["/corporations/{corporation_id}/wallets/"],
        every=600,
    )
    def route_wallets(ctx: JobContext) -> None:
        assert ctx.token is not None
        calls.append(ctx.token.character_id)
        wallets = ctx.esi.Wallet.get_corporations_corporation_id_wallets
        try:
            wallets(corporation_id=ctx.corporation_id).result()
        except HTTPError as exc:
            if exc.status != 404:
                raise

    # when
    _planned, runs = _plan_and_run(runtime, route_wallets)

    # then: the roles were read from the spec, the junior accountant's token used
    assert route_wallets.role_sets == (frozenset({"Accountant", "Junior_Accountant"}),)
    assert ROLES_SCOPE in route_wallets.token_scopes
    assert [r["outcome"] for r in runs] == ["success"]
    assert calls == [2117692215]
    assert 403 not in emulator.stats()["esi_requests_by_status"]


def test_a_corporation_without_a_qualifying_member_gets_no_run_every_period(
    runtime: Runtime, emulator: Emulator, make_token: Any
) -> None:
    # given: the lone member of 1000171 is only a Trader; once a run has
    # looked at its roles (refreshing its token to do so)
    emulator.configure(
        character_roles={str(LONE_PILOT): ["Trader"], "2117692215": ["Accountant"]}
    )
    _member_tokens(make_token, first=2113024536)
    make_token(LONE_PILOT, "Test Pilot One", [WALLETS, ROLES_SCOPE])
    probe = WalletProbe()
    _plan_and_run(runtime, probe.job)

    # when: the next periods are planned
    planned_later = set(subjects(runtime, probe.job))
    worker = StartedWorker(runtime, JobRegistry("none", extra=[probe.job]))
    try:
        for period in (1, 2):
            later = runtime.clock.now() + dt.timedelta(seconds=600 * period)
            worker.scheduler().plan(probe.job, later, later - dt.timedelta(seconds=600))
            worker.join()
    finally:
        worker.stop()

    # then: only the corporation with an Accountant is planned and run
    assert planned_later == {CORPORATION}
    skipped = [r for r in worker.runs("corp_wallets") if r["outcome"] == "skipped"]
    assert [r["corporation_id"] for r in skipped] == [LONE_CORPORATION]
