"""The wheel ships every package of the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("worker", "jobs")
        for init in (ROOT / top).rglob("__init__.py")
    }

    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
