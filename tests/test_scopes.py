"""Scope arguments in every form django-esi accepts."""

from __future__ import annotations

import pytest

from worker.errors import ScopeError
from worker.scopes import normalize_scopes

A, B = "esi-assets.read_assets.v1", "esi-skills.read_skills.v1"


@pytest.mark.parametrize(
    "given",
    [
        f"{B} {A}",
        [A, B],
        [f"{A} {B}"],
        (s for s in (B, A, A)),
        {A, B},
    ],
    ids=["string", "list", "one-string-list", "generator", "set"],
)
def test_every_form_gives_the_same_sorted_names(given: object) -> None:
    assert normalize_scopes(given) == (A, B)  # type: ignore[arg-type]


def test_none_and_empty_mean_no_scopes() -> None:
    assert normalize_scopes(None) == ()
    assert normalize_scopes("") == ()
    assert normalize_scopes([]) == ()


@pytest.mark.parametrize(
    "bad", ["esi-assets.read_assets.v1,esi-skills", ["ok.scope", 42], 7, b"bytes", ["é-scope"]]
)
def test_malformed_scopes_raise_a_clear_error(bad: object) -> None:
    with pytest.raises(ScopeError) as caught:
        normalize_scopes(bad)  # type: ignore[arg-type]

    assert str(caught.value)
