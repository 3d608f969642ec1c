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
