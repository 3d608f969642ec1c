"""TokenQuery: scope forms, filters, ordering and the django-esi reading methods."""

from __future__ import annotations

import pytest

from worker.errors import ScopeError, TokenLookupError
from worker.tokens import REVOKED, Token, TokenQuery

from .conftest import ASSETS, CHARACTER_ID, SKILLS, WALLET, token_count


@pytest.mark.parametrize(
    "scopes",
    [
        f"{ASSETS} {SKILLS}",
        [ASSETS, SKILLS],
        [f"{SKILLS} {ASSETS}"],
        (s for s in (SKILLS, ASSETS)),
        {ASSETS, SKILLS},
    ],
    ids=["string", "list", "one-element-list", "generator", "set"],
)
def test_require_scopes_accepts_every_django_esi_form(store, add_token, scopes):
    # given a token with both scopes and one with only one of them
    both = add_token(scopes=[ASSETS, SKILLS])
    add_token(scopes=[ASSETS])

    # when tokens are asked for by both scopes in one of the accepted forms
    found = list(store.query().require_scopes(scopes))

    # then only the token holding both comes back
    assert found == [both]


def test_require_scopes_matches_supersets(store, add_token):
    # given tokens with one, two and three scopes
    add_token(scopes=[ASSETS])
    two = add_token(scopes=[ASSETS, SKILLS])
    three = add_token(scopes=[ASSETS, SKILLS, WALLET])

    # when two scopes are required
    found = set(store.query().require_scopes([ASSETS, SKILLS]))

    # then tokens holding at least those match
    assert found == {two, three}


def test_require_scopes_exact_matches_only_the_same_set(store, add_token):
    # given tokens with two and three scopes
    two = add_token(scopes=[ASSETS, SKILLS])
    add_token(scopes=[ASSETS, SKILLS, WALLET])

    # when exactly two scopes are required
    found = list(store.query().require_scopes_exact(f"{SKILLS} {ASSETS}"))

    # then only the exact match comes back
    assert found == [two]


def test_require_scopes_exact_with_no_scopes_finds_scopeless_tokens(store, add_token):
    # given a scopeless token and a scoped one
    bare = add_token(scopes=[], refreshable=False)
    add_token(scopes=[ASSETS])

    # when exactly no scopes are required
    found = list(store.query().require_scopes_exact([]))

    # then the scopeless token comes back
    assert found == [bare]


def test_an_unknown_scope_matches_no_token(store, add_token):
    # given a token with a known scope
    add_token(scopes=[ASSETS])

    # when a scope no token holds is required alongside it
    query = store.query().require_scopes([ASSETS, "esi-unknown.read_nothing.v1"])

    # then nothing matches
    assert query.count() == 0
    assert not query.exists()


@pytest.mark.parametrize("bad", ["esi-assets.read_assets.v1 bad/scope", [42], b"x"])
def test_a_malformed_scope_raises_scope_error(store, bad):
    # given a malformed scope argument
    # when it is used in a query
    with pytest.raises(ScopeError):
        store.query().require_scopes(bad)
    # then the error names the problem (raised before any SQL)


def test_chained_scope_requirements_add_up(store, add_token):
    # given tokens with one and two scopes
    add_token(scopes=[ASSETS])
    both = add_token(scopes=[ASSETS, SKILLS])

    # when scopes are required in two steps
    found = list(store.query().require_scopes(ASSETS).require_scopes(SKILLS))

    # then both requirements apply
    assert found == [both]


def test_queries_are_immutable_and_lazy(store, add_token):
    # given a base query
    base = store.query()
    narrowed = base.filter(character_id=CHARACTER_ID)

    # when tokens are added after the queries were built
    mine = add_token(CHARACTER_ID)
    other = add_token(90000001)

    # then each query reads the table when evaluated, and chaining left the
    # base untouched
    assert set(base) == {mine, other}
    assert list(narrowed) == [mine]
    assert isinstance(narrowed, TokenQuery) and narrowed is not base


def test_filter_exclude_and_order_by(store, add_token):
    # given tokens of two characters and two users
    a = add_token(CHARACTER_ID, user="alice", expires_in_s=600)
    b = add_token(CHARACTER_ID, scopes=[SKILLS], user="bob", expires_in_s=1200)
    c = add_token(90000001, user=None)

    # when filtering, excluding and ordering
    by_character = store.query().filter(character_id=CHARACTER_ID)
    latest_first = by_character.order_by("-access_expires")

    # then each reads as django-esi's queryset would
    assert set(by_character) == {a, b}
    assert list(latest_first) == [b, a]
    assert list(store.query().filter(user="alice")) == [a]
    assert list(store.query().filter(user=None)) == [c]
    assert set(store.query().exclude(user="alice")) == {b, c}
    assert set(store.query().filter(id__in=[a.id, c.id])) == {a, c}
    assert store.query().order_by("id").first() == a


def test_unknown_fields_are_named_in_the_error(store):
    # given the query
    # when a field that does not exist is used
    with pytest.raises(TypeError, match="'colour'"):
        store.query().filter(colour="red")
    with pytest.raises(ValueError, match="'colour'"):
        store.query().order_by("-colour")
    # then the errors name it


def test_get_returns_one_token_or_raises(store, add_token):
    # given two tokens of one character
    a = add_token(CHARACTER_ID, scopes=[ASSETS])
    add_token(CHARACTER_ID, scopes=[SKILLS])

    # when get is used
    found = store.query().get(id=a.id)

    # then one match is returned, and none or several raise
    assert found == a
    with pytest.raises(TokenLookupError):
        store.query().get(character_id=CHARACTER_ID)
    with pytest.raises(Token.DoesNotExist):
        store.query().get(character_id=1)


def test_count_len_iteration_and_exists_agree(store, add_token):
    # given three tokens
    for _ in range(3):
        add_token(scopes=[ASSETS, SKILLS, WALLET][: 1 + _])

    # when read in every way
    query = store.query()

    # then the answers agree
    assert query.count() == len(query) == len(list(query)) == 3
    assert query.exists() and bool(query)
    assert query[0] == query.first()


def test_dead_tokens_are_hidden_unless_asked_for(store, add_token):
    # given one valid and one revoked token
    alive = add_token(scopes=[ASSETS])
    dead = add_token(scopes=[SKILLS])
    with store.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_token SET state = %s WHERE id = %s", (REVOKED, dead.id)
        )

    # when queried by default, for all, and by state
    # then the default view shows only the valid token
    assert list(store.query()) == [alive]
    assert set(store.query().including_dead()) == {alive, dead}
    assert list(store.query().filter(state=REVOKED)) == [dead]


def test_equivalent_to_finds_same_character_scopes_and_user(store, add_token):
    # given a token and candidates differing in one respect each (the
    # user-less one added last: a grant of the same user, or of any user
    # while a user-less token exists, would have been merged on add)
    token = add_token(scopes=[ASSETS, SKILLS], user="alice")
    add_token(scopes=[ASSETS, SKILLS], user="bob")
    add_token(scopes=[ASSETS], user="alice")
    add_token(90000001, scopes=[ASSETS, SKILLS], user="alice")
    no_user = add_token(scopes=[SKILLS, ASSETS], user=None)

    # when its equivalents are asked for
    found = set(store.query().equivalent_to(token))

    # then same character and scopes, same or no user, itself excluded
    assert found == {no_user}


def test_get_expired_finds_only_expired_tokens(store, add_token):
    # given one expired and one fresh token
    old = add_token(expires_in_s=-60)
    add_token(scopes=[SKILLS], expires_in_s=1200)

    # when expired tokens are asked for
    found = list(store.query().get_expired())

    # then only the expired one comes back
    assert found == [old]
    assert old.expired


def test_delete_removes_only_matching_tokens(store, add_token):
    # given tokens of two characters
    add_token(CHARACTER_ID)
    keep = add_token(90000001)

    # when one character's tokens are deleted
    deleted = store.query().filter(character_id=CHARACTER_ID).delete()

    # then the other's remain
    assert deleted == 1
    assert list(store.query()) == [keep]


def test_adding_an_equivalent_grant_updates_instead_of_duplicating(store, add_token):
    # given a stored token
    first = add_token(scopes=[ASSETS, SKILLS], user="alice")

    # when an equivalent grant is added (scopes in another order)
    second = add_token(scopes=[SKILLS, ASSETS], user="alice")

    # then the same row now holds the newer secrets
    assert second.id == first.id
    assert second.access_token != first.access_token
    assert token_count(store) == 1


def test_token_objects_is_the_current_runtimes_query(runtime, add_token):
    # given a token in the active runtime's store
    token = add_token()

    # when Token.objects is used as in django-esi
    found = Token.objects.filter(character_id=CHARACTER_ID).require_scopes(ASSETS)

    # then it reads that store
    assert list(found) == [token]


def test_repr_shows_id_character_and_state_but_no_secret(add_token):
    # given a token
    token = add_token()

    # when it is shown
    text = repr(token)

    # then it names id, character and state, never a secret
    assert f"id={token.id}" in text and str(token.character_id) in text
    assert "valid" in text
    assert token.access_token not in text and token.refresh_token not in text


def test_a_tokens_scopes_answer_django_esi_manager_calls(store, add_token):
    # given a stored token holding two scopes, as read back
    add_token(scopes=[SKILLS, ASSETS])
    token = store.query().get()

    # when its scopes are used the django-esi way, and the tuple way
    names = [s.name for s in token.scopes.all()]

    # then both see the same sorted names
    assert names == [ASSETS, SKILLS] and token.scopes == (ASSETS, SKILLS)
    assert token.scopes.count() == 2
    assert token.scopes.filter(name=ASSETS).exists()
    assert not token.scopes.filter(name=WALLET).exists()
    assert token.replaced().scopes.all()[0].name == ASSETS
