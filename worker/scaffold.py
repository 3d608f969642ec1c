"""``esi-worker jobs new NAME``: a plugin package to start a job from.

The package holds a pyproject registering the job under the
``esi_worker.jobs`` entry-point group, the job itself, and a test that
runs it against the emulator with the fixtures esi-worker ships.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path

from .errors import ConfigurationError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An esi-worker job plugin: {name}."
requires-python = ">=3.11"
dependencies = ["esi-worker"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-timeout>=2.3"]

# The worker finds the job through this entry point, and only through it.
[project.entry-points."esi_worker.jobs"]
{name} = "{package}.jobs:{name}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
timeout = 120
"""

_JOBS = '''\
"""The {name} job: the skills of every character that granted the scope."""

from __future__ import annotations

from worker.jobs import JobContext, job

SCOPE = "esi-skills.read_skills.v1"


@job(
    scopes=SCOPE,
    fan_out="per_character",
    every=3600,
    timeout=300,
    retries=2,
    routes=["/characters/{{character_id}}/skills/"],
)
def {name}(ctx: JobContext) -> None:
    """Count the skills of the run's character."""
    operation = ctx.esi.Skills.get_characters_character_id_skills
    skills = operation(character_id=ctx.character_id).result()
    ctx.stats.items = len(skills["skills"])
    ctx.log.info(
        "character %r has %d skills", ctx.character_id, ctx.stats.items,
        extra={{"character_id": ctx.character_id}},
    )
'''

_TEST = '''\
"""The {name} job, run by a worker against the ESI emulator."""

from __future__ import annotations

from {package}.jobs import SCOPE

PILOT = 2112000001  # a character the emulator has recorded skills for


def test_{name}_is_registered_through_its_entry_point(job_registry):
    assert "{name}" in job_registry.names()


def test_{name}_counts_the_skills_of_a_character(make_token, started_worker):
    # given: a character whose token grants the scope
    make_token(PILOT, "Test Pilot One", SCOPE)

    # when: the worker runs the job for that character
    run = started_worker.run("{name}", PILOT)

    # then: the run succeeded and counted what it read
    assert run["outcome"] == "success", run["error"]
    assert run["items"] > 0 and run["esi_calls"] == 1
'''

_README = """\
# {dist}

An [esi-worker](https://pypi.org/project/esi-worker/) job plugin.

    pip install -e '.[test]'
    esi-worker jobs list        # shows {name}
    pytest                      # runs it against the bundled ESI emulator

The tests need a PostgreSQL server where they may create databases
(`--esi-worker-db`, default `postgresql://postgres@127.0.0.1:5432/postgres`).
"""


def create_plugin(name: str, directory: Path) -> Path:
    """Write a plugin package for job ``name`` under ``directory``.

    :returns: the package's root folder.
    :raises ConfigurationError: for a name that is not a lower-case
        identifier, is a Python keyword, is taken by a registered job, or
        a folder that already exists.
    """
    _check_name(name)
    dist = "esi-worker-" + name.replace("_", "-")
    package = f"esi_worker_{name}"
    root = directory / dist
    if root.exists():
        raise ConfigurationError(
            f"{root} already exists; choose another name or folder"
        )

    values = {"name": name, "dist": dist, "package": package}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{package}/__init__.py": '"""esi-worker jobs of {dist}."""\n',
        f"{package}/jobs.py": _JOBS,
        f"tests/test_{name}.py": _TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(template).format(**values), encoding="utf-8")
    return root


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigurationError(
            f"job name {name!r} must be a lower-case identifier "
            "(letters, digits, underscores; starting with a letter)"
        )
    # The name becomes a function: ``def class(ctx)`` would not compile.
    if keyword.iskeyword(name):
        raise ConfigurationError(
            f"job name {name!r} is a Python keyword; choose another name"
        )
    from .jobs import JobRegistry

    registry = JobRegistry()
    if name in registry.names():
        raise ConfigurationError(
            f"job name {name!r} is already registered by "
            f"{registry.source(name) or 'an installed package'}; choose another name"
        )
