"""The job API: declarations are validated; plugins load lazily, by name, in isolation."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest

from worker.errors import JobDefinitionError, JobError, UnknownJobError
from worker.jobs import FanOut, JobRegistry, job

GROUP = "esi_worker_test.jobs"


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution on sys.path with one good and three bad plugins."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "good_plugin.py").write_text(textwrap.dedent("""
        from worker.jobs import job

        @job(scopes="esi-skills.read_skills.v1", fan_out="per_character", every=900)
        def skills(ctx):
            return "ran"

        not_a_job = 42
    """))
    (site / "broken_plugin.py").write_text("import does_not_exist_anywhere\n")
    (site / "bad_schedule_plugin.py").write_text(textwrap.dedent("""
        from worker.jobs import job

        @job(every=-5)
        def never(ctx):
            pass
    """))
    dist = site / "demo_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""
        [{GROUP}]
        skills = good_plugin:skills
        broken = broken_plugin:job
        bad_schedule = bad_schedule_plugin:never
        not_a_job = good_plugin:not_a_job
    """))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def test_names_are_listed_without_loading_any_plugin(plugin_site: Path) -> None:
    registry = JobRegistry(GROUP)

    assert registry.names() == ["bad_schedule", "broken", "not_a_job", "skills"]


def test_a_good_plugin_loads_by_name(plugin_site: Path) -> None:
    skills = JobRegistry(GROUP).get("skills")

    assert skills.scopes == ("esi-skills.read_skills.v1",)
    assert skills.fan_out is FanOut.PER_CHARACTER
    assert skills.interval_s == 900


def test_broken_plugins_are_reported_by_name_and_the_others_load(plugin_site: Path) -> None:
    jobs, failures = JobRegistry(GROUP).load_all()

    assert list(jobs) == ["skills"]
    assert "does_not_exist_anywhere" in failures["broken"]
    assert "interval must be positive" in failures["bad_schedule"]
    assert "not a Job" in failures["not_a_job"]


def test_an_unknown_job_names_the_registered_ones(plugin_site: Path) -> None:
    with pytest.raises(UnknownJobError, match="registered: bad_schedule, broken"):
        JobRegistry(GROUP).get("wallet")


def test_a_broken_plugin_raises_a_job_error(plugin_site: Path) -> None:
    with pytest.raises(JobError, match="'broken'.*failed to import"):
        JobRegistry(GROUP).get("broken")


def test_builtin_jobs_are_registered_through_the_entry_point_group() -> None:
    names = JobRegistry().names()

    for name in ("refresh_tokens", "prune_tokens", "market_orders", "type_names",
                 "character_assets"):
        assert name in names


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every": 0}, "interval must be positive"),
        ({"every": 60, "jitter": 120}, "jitter"),
        ({"timeout": 0}, "timeout"),
        ({"fan_out": "per_character"}, "needs scopes"),
        ({"fan_out": "sideways", "scopes": "a.b"}, "sideways"),
        ({"scopes": "bad,scope"}, "malformed scope"),
    ],
)
def test_invalid_declarations_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        job("example", **kwargs)(lambda ctx: None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every": float("nan")}, "interval must be a finite number"),
        ({"every": float("inf")}, "interval must be a finite number"),
        ({"every": 1e-7}, "interval must be at least 1 s"),
        ({"every": "3600"}, "interval must be a number of seconds"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"timeout": float("inf")}, "timeout must be a finite number"),
        ({"timeout": 0.5}, "timeout must be at least 1 s"),
        ({"retries": 1.5}, "retries must be a whole number"),
        ({"retries": "3"}, "retries must be a whole number"),
        ({"retries": True}, "retries must be a whole number"),
        ({"retry_backoff": float("nan")}, "retry backoff must be a finite"),
        ({"retry_backoff": -1}, "retry backoff must not be negative"),
        ({"jitter": -1}, "jitter must not be negative"),
        ({"cron": "0 0 31 2 *"}, "never fires"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "* * * * * * *"}, "invalid cron expression"),
        ({"cron": 5}, "cron must be a crontab line"),
        ({"cron": "* * * * *", "jitter": 86400}, "jitter must be between 0"),
        (
            {"fan_out": "per_corporation", "scopes": "esi-wallet.read_corporation_wallets.v1",
             "roles": ["Accountant", "Bookkeeper"]},
            "unknown corporation role",
        ),
        ({"routes": 7}, "routes must be a list"),
        ({"follow_expiry": "yes"}, "follow_expiry must be True or False"),
    ],
)
def test_declarations_that_would_break_planning_are_refused_up_front(
    kwargs: dict, message: str
) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        job("example", **kwargs)(lambda ctx: None)


@pytest.mark.parametrize("func", [None, 42, "not a function"])
def test_a_job_must_be_a_function(func: object) -> None:
    from worker.jobs import Job

    with pytest.raises(JobDefinitionError, match="callable|decorates a function"):
        Job(name="example", func=func)  # type: ignore[arg-type]
    with pytest.raises(JobDefinitionError, match="decorates a function"):
        job("example")(func)  # type: ignore[arg-type]


def test_a_job_built_directly_is_checked_like_one_made_with_the_decorator() -> None:
    from worker.jobs import Job

    with pytest.raises(JobDefinitionError, match="interval must be a finite"):
        Job(name="direct", func=lambda ctx: None, interval_s=float("inf"))
    made = Job(name="direct", func=lambda ctx: None, fan_out="per_character",
               scopes=("esi-skills.read_skills.v1",))
    assert made.fan_out is FanOut.PER_CHARACTER


def test_one_role_given_as_text_is_one_role() -> None:
    corp = job(
        "corp", scopes="esi-wallet.read_corporation_wallets.v1",
        fan_out="per_corporation", roles="Accountant",
    )(lambda ctx: None)

    assert corp.roles == ("Accountant",)


@pytest.fixture
def duplicate_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three distributions: two share a job name, one takes a built-in's name,
    one calls sys.exit() when imported; and a good one."""
    site = tmp_path / "dup_site"
    site.mkdir()
    plugins = {
        "first-plugin": ("first_plugin", "shared = first_plugin:shared"),
        "second-plugin": ("second_plugin", "shared = second_plugin:shared"),
        "shadow-plugin": ("shadow_plugin", "market_orders = shadow_plugin:shared"),
        "exit-plugin": ("exit_plugin", "exits = exit_plugin:job"),
        "fine-plugin": ("fine_plugin", "fine = fine_plugin:shared"),
        "leaky-plugin": ("leaky_plugin", "leaky = leaky_plugin:job"),
    }
    sources = {
        "exit_plugin": "import sys\nsys.exit(3)\n",
        "leaky_plugin": 'raise RuntimeError("no database, password=hunter2")\n',
    }
    for dist, (module, entry) in plugins.items():
        source = sources.get(
            module,
            "from worker.jobs import job\n\n@job(every=600)\ndef shared(ctx):\n"
            "    ctx.stats.items = 1\n",
        )
        (site / f"{module}.py").write_text(source)
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n"
        )
        (info / "entry_points.txt").write_text(f"[esi_worker.jobs]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def test_a_job_name_two_packages_register_is_reported_naming_both(
    duplicate_site: Path,
) -> None:
    registry = JobRegistry()

    jobs, failures = registry.load_all()

    assert "shared" not in jobs
    assert "first-plugin 1.0" in failures["shared"]
    assert "second-plugin 1.0" in failures["shared"]
    with pytest.raises(JobDefinitionError, match="several packages"):
        registry.get("shared")
    assert jobs["fine"].name == "fine"


def test_a_plugin_taking_a_built_in_name_is_reported_and_the_built_in_kept(
    duplicate_site: Path,
) -> None:
    registry = JobRegistry()

    jobs, failures = registry.load_all()

    assert jobs["market_orders"].source == "jobs.market_orders"
    assert registry.source("market_orders").startswith("esi-worker ")
    assert "shadow-plugin 1.0" in failures["market_orders"]
    assert "built-in" in failures["market_orders"]


def test_a_plugin_calling_sys_exit_at_import_is_reported_not_obeyed(
    duplicate_site: Path,
) -> None:
    jobs, failures = JobRegistry().load_all()

    assert "SystemExit: 3" in failures["exits"]
    assert "exits" not in jobs and "fine" in jobs


def test_the_reason_a_plugin_failed_to_import_holds_no_secret(
    duplicate_site: Path,
) -> None:
    _jobs, failures = JobRegistry().load_all()

    assert "password=[redacted]" in failures["leaky"]
    assert "hunter2" not in failures["leaky"]
