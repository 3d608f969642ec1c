"""The job API: django-esi's token decorators for jobs, fan-outs, schedules, scopes."""

from __future__ import annotations

import datetime as dt
import importlib
import textwrap
from pathlib import Path
from typing import Any

import pytest

from worker.errors import JobDefinitionError
from worker.jobs import (
    ROLES_SCOPE,
    FanOut,
    JobContext,
    JobRegistry,
    job,
    single_use_token,
    token_required,
    tokens_required,
)
from worker.jobs.subjects import roles_satisfy, subjects
from worker.runs import execute_job
from worker.runtime import Runtime
from worker.testing.harness import StartedWorker

SKILLS = "esi-skills.read_skills.v1"
ASSETS = "esi-assets.read_assets.v1"
# The forms django-esi accepts for ``scopes``.
SCOPE_FORMS = [
    f"{SKILLS} {ASSETS}",
    [SKILLS, ASSETS],
    [f"{SKILLS} {ASSETS}"],
    (ASSETS, SKILLS),
]


@pytest.mark.parametrize(
    "scopes", SCOPE_FORMS, ids=["string", "list", "joined", "tuple"]
)
@pytest.mark.parametrize(
    "decorator", [token_required, tokens_required, single_use_token]
)
def test_the_token_decorators_take_django_esis_scope_forms(
    decorator: Any, scopes: Any
) -> None:
    @job("decorated", every=600)
    @decorator(scopes=scopes)
    def decorated(ctx: JobContext, token: Any) -> None: ...

    assert decorated.scopes == (ASSETS, SKILLS)
    assert decorated.description == "" and decorated.source == __name__


def test_a_malformed_decorator_scope_is_refused_with_its_name() -> None:
    with pytest.raises(JobDefinitionError, match="malformed scope name 'bad,scope'"):
        token_required(scopes="bad,scope")


def test_token_required_passes_the_first_valid_token_with_the_scopes(
    runtime: Runtime, make_token: Any
) -> None:
    # given: one character without the scope, two with it
    make_token(2113024536, "Bokobo Shahni", ASSETS)
    first = make_token(2112000001, "Test Pilot One", [SKILLS, ASSETS])
    make_token(96224792, "Mitani", SKILLS)
    seen: list[Any] = []

    @job("first_token", every=600)
    @token_required(scopes=SKILLS)
    def first_token(ctx: JobContext, token: Any) -> None:
        seen.append(token.id)

    # when
    outcome = execute_job(
        runtime, JobRegistry("none", extra=[first_token]), "first_token"
    )

    # then
    assert outcome == "success" and seen == [first.id]


def test_tokens_required_passes_every_valid_token_with_the_scopes(
    runtime: Runtime, make_token: Any
) -> None:
    wanted = {
        make_token(2112000001, "Test Pilot One", SKILLS).id,
        make_token(96224792, "Mitani", [SKILLS, ASSETS]).id,
    }
    make_token(2113024536, "Bokobo Shahni", ASSETS)
    seen: list[set[int]] = []

    @job("all_tokens", every=600)
    @tokens_required(SKILLS)
    def all_tokens(ctx: JobContext, tokens: list[Any]) -> None:
        seen.append({t.id for t in tokens})

    assert (
        execute_job(runtime, JobRegistry("none", extra=[all_tokens]), "all_tokens")
        == "success"
    )
    assert seen == [wanted]


def test_new_true_only_passes_tokens_stored_since_the_last_success(
    runtime: Runtime, make_token: Any
) -> None:
    # given: a job that already succeeded once with the first token
    make_token(2112000001, "Test Pilot One", SKILLS)
    seen: list[list[int]] = []

    @job("new_logins", every=600)
    @tokens_required(scopes=SKILLS, new=True)
    def new_logins(ctx: JobContext, tokens: list[Any]) -> None:
        seen.append([t.character_id for t in tokens])

    registry = JobRegistry("none", extra=[new_logins])
    assert execute_job(runtime, registry, "new_logins") == "success"

    # when: a second character logs in, and the job runs twice more
    make_token(96224792, "Mitani", SKILLS)
    outcomes = [execute_job(runtime, registry, "new_logins") for _ in range(2)]

    # then: the second run saw the new token only; the third had nothing new
    assert seen == [[2112000001], [96224792]]
    assert outcomes == ["success", "skipped"]


def test_a_decorated_job_without_any_token_is_skipped_not_failed(
    runtime: Runtime,
) -> None:
    @job("lonely", every=600)
    @single_use_token(scopes=SKILLS)
    def lonely(ctx: JobContext, token: Any) -> None: ...

    assert (
        execute_job(runtime, JobRegistry("none", extra=[lonely]), "lonely") == "skipped"
    )


def test_per_token_runs_use_the_token_they_were_planned_for(
    runtime: Runtime, make_token: Any
) -> None:
    # given: the same character with two tokens holding the scope
    one = make_token(2112000001, "Test Pilot One", SKILLS)
    two = make_token(2112000001, "Test Pilot One", [SKILLS, ASSETS])
    seen: list[int] = []

    @job("per_token", scopes=SKILLS, fan_out="per_token", every=600)
    def per_token(ctx: JobContext) -> None:
        seen.append(ctx.token.id)

    # when: the plan runs every subject once
    worker = StartedWorker(runtime, JobRegistry("none", extra=[per_token]))
    try:
        now = runtime.clock.now()
        planned = subjects(runtime, per_token)
        worker.scheduler().plan(per_token, now, now - dt.timedelta(seconds=600))
        worker.join()
    finally:
        worker.stop()

    # then: one run per token
    assert set(planned) == {one.id, two.id}
    assert sorted(seen) == sorted([one.id, two.id])


def test_per_corporation_runs_once_per_corporation_with_a_members_token(
    runtime: Runtime, make_token: Any
) -> None:
    # given: members of two corporations (from ESI's public character route)
    make_token(2112000001, "Test Pilot One", SKILLS)
    make_token(96224792, "Mitani", SKILLS)
    seen: list[tuple[int | None, int]] = []

    @job("per_corp", scopes=SKILLS, fan_out="per_corporation", every=600)
    def per_corp(ctx: JobContext) -> None:
        seen.append((ctx.corporation_id, ctx.token.character_id))

    # when
    worker = StartedWorker(runtime, JobRegistry("none", extra=[per_corp]))
    try:
        now = runtime.clock.now()
        corporations = subjects(runtime, per_corp)
        worker.scheduler().plan(per_corp, now, now - dt.timedelta(seconds=600))
        worker.join()
    finally:
        worker.stop()

    # then: one run per corporation, each with the token of one of its members
    assert len(corporations) >= 1 and len(seen) == len(corporations)
    assert {corp for corp, _ in seen} == set(corporations)


def test_corporation_roles_need_the_roles_scope_and_a_director_has_every_role() -> None:
    @job(
        "corp_wallets",
        scopes="esi-wallet.read_corporation_wallets.v1",
        fan_out=FanOut.PER_CORPORATION,
        roles=["Accountant"],
    )
    def corp_wallets(ctx: JobContext) -> None: ...

    assert ROLES_SCOPE in corp_wallets.token_scopes
    assert roles_satisfy(["Accountant", "Trader"], ["Accountant"])
    assert roles_satisfy(["Director"], ["Accountant", "Junior_Accountant"])
    assert not roles_satisfy(["Trader"], ["Accountant"])
    with pytest.raises(JobDefinitionError, match="roles only apply"):
        job("roles_once", roles=["Director"])(lambda ctx: None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "not a cron"}, "invalid cron expression"),
        ({"retries": -1}, "retries"),
        ({"every": dt.timedelta(0)}, "interval must be positive"),
    ],
)
def test_invalid_schedules_and_policies_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        job("example", **kwargs)(lambda ctx: None)


def test_a_cron_job_with_jitter_runs_at_its_time_plus_a_stable_offset() -> None:
    @job("daily", cron="5 11 * * *", jitter=600)
    def daily(ctx: JobContext) -> None: ...

    start = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
    first = daily.schedule().next_after("daily", 0, start)
    assert dt.datetime(2026, 3, 3, 11, 5, tzinfo=dt.UTC) <= first
    assert first < dt.datetime(2026, 3, 3, 11, 15, tzinfo=dt.UTC)
    assert daily.schedule().next_after("daily", 0, first) - first == dt.timedelta(
        days=1
    )
    # ten days missed: only the newest slot is due
    latest = daily.schedule().latest_at_or_before(
        "daily", 0, start + dt.timedelta(days=10), start
    )
    assert latest == first + dt.timedelta(days=9)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    site = tmp_path / "site"
    (site / "mixed-1.0.dist-info").mkdir(parents=True)
    (site / "mixed_plugin.py").write_text(
        textwrap.dedent("""
        from worker.jobs import job

        @job(every=600)
        def good(ctx):
            ctx.stats.items = 7

        @job(scopes="esi-made-up.read_nothing.v1", every=600)
        def unknown_scope(ctx):
            pass
    """)
    )
    (site / "cron_plugin.py").write_text(
        textwrap.dedent("""
        from worker.jobs import job

        @job(cron="99 * * * *")
        def bad_cron(ctx):
            pass
    """)
    )
    (site / "mixed-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mixed\nVersion: 1.0\n"
    )
    (site / "mixed-1.0.dist-info" / "entry_points.txt").write_text(
        "[esi_worker_test.mixed]\ngood = mixed_plugin:good\n"
        "unknown_scope = mixed_plugin:unknown_scope\n"
        "bad_cron = cron_plugin:bad_cron\n"
        "broken_import = not_installed_anywhere:job\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return "esi_worker_test.mixed"


def test_a_broken_plugin_is_reported_by_name_and_the_others_run(
    plugin_site: str,
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: one good plugin, and one each with an unknown scope, an invalid
    # schedule, a module that cannot be imported
    registry = JobRegistry(plugin_site)

    # when: the worker loads them and plans what loaded
    jobs, failures = registry.load_all()
    worker = StartedWorker(runtime, registry)
    try:
        worker.plan()
    finally:
        worker.stop()

    # then: each broken one is reported with its name and reason; the good one ran
    assert set(jobs) == {"good"}
    assert "unknown scope(s) esi-made-up.read_nothing.v1" in failures["unknown_scope"]
    assert "not_installed_anywhere" in failures["broken_import"]
    assert "'bad_cron'" in failures["bad_cron"] and "99" in failures["bad_cron"]
    assert "'broken_import' is broken" in caplog.text
    assert [(r["job"], r["outcome"], r["items"]) for r in worker.runs()] == [
        ("good", "success", 7)
    ]


def test_new_true_is_counted_per_character_for_a_per_character_job(
    runtime: Runtime, make_token: Any
) -> None:
    # given: B's token stored first and never used; A's job succeeded since
    make_token(96224792, "Mitani", SKILLS)
    make_token(2112000001, "Test Pilot One", SKILLS)
    seen: list[int] = []

    @job("new_per_character", scopes=SKILLS, fan_out="per_character", every=600)
    @token_required(scopes=SKILLS, new=True)
    def new_per_character(ctx: JobContext, token: Any) -> None:
        seen.append(token.character_id)

    registry = JobRegistry("none", extra=[new_per_character])
    first = execute_job(runtime, registry, "new_per_character", 2112000001)

    # when: B's first run comes, then A's second
    second = execute_job(runtime, registry, "new_per_character", 96224792)
    again = execute_job(runtime, registry, "new_per_character", 2112000001)

    # then: B's token is new to B's runs; A's is not new any more
    assert (first, second, again) == ("success", "success", "skipped")
    assert seen == [2112000001, 96224792]


def test_token_required_refreshes_only_the_token_it_passes(
    runtime: Runtime, make_token: Any, emulator: Any
) -> None:
    # given: six stored tokens with the scope, all with expired access tokens
    for n in range(6):
        make_token(2112000001 + n, f"Pilot {n}", SKILLS)
    seen: list[Any] = []

    @job("first_only", every=600)
    @token_required(scopes=SKILLS)
    def first_only(ctx: JobContext, token: Any) -> None:
        seen.append(token)

    before = emulator.stats()["sso_token_requests"]

    # when
    outcome = execute_job(runtime, JobRegistry("none", extra=[first_only]), "first_only")

    # then: one SSO call, for the one token passed
    assert outcome == "success" and len(seen) == 1
    assert emulator.stats()["sso_token_requests"] - before == 1
