"""Scope arguments in every form django-esi accepts; a token's scopes."""

from __future__ import annotations

import json
import pickle

import pytest

from worker.errors import ScopeError
from worker.scopes import TokenScopes, normalize_scopes

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


@pytest.mark.parametrize(
    "given",
    [f"{A},{B}", f"{A}, {B}", [f"{A},{B}"], f"{A};{B}"],
    ids=["comma", "comma-space", "list", "semicolon"],
)
def test_comma_separated_scopes_are_refused_with_a_hint(given: object) -> None:
    # when scopes are given separated by commas
    with pytest.raises(ScopeError) as caught:
        normalize_scopes(given)  # type: ignore[arg-type]

    # then the error says how they are separated
    assert "separated by spaces, not commas" in str(caught.value)


def test_other_malformed_scopes_get_no_comma_hint() -> None:
    with pytest.raises(ScopeError) as caught:
        normalize_scopes(["é-scope"])
    assert "commas" not in str(caught.value)


def test_token_scopes_behave_as_the_tuple_of_their_names() -> None:
    # given a token's scopes
    scopes = TokenScopes((A, B))

    # then they are the sorted tuple of names they always were
    assert scopes == (A, B) and isinstance(scopes, tuple)
    assert hash(scopes) == hash((A, B)) and len(scopes) == 2
    assert list(scopes) == [A, B] and " ".join(scopes) == f"{A} {B}"
    assert scopes[0] == A and A in scopes and scopes.count(A) == 1
    assert json.loads(json.dumps(scopes)) == [A, B]
    assert pickle.loads(pickle.dumps(scopes)) == (A, B)


def test_token_scopes_answer_the_django_esi_manager_calls() -> None:
    # given a token's scopes, and none
    scopes, empty = TokenScopes((A, B)), TokenScopes()

    # then all(), count(), filter() and exists() answer as django-esi's do
    assert [s.name for s in scopes.all()] == [A, B]
    assert scopes.count() == 2 and empty.count() == 0
    assert scopes.filter(name=A) == (A,) and scopes.filter(name=A).exists()
    assert not scopes.filter(name="esi-wallet.read_character_wallet.v1").exists()
    assert scopes.filter(name__in=[B, "other.scope"]) == (B,)
    assert scopes.filter(name=A).all()[0].name == A
    assert not empty.exists() and scopes.exists()
