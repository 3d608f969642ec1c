"""Importing tokens from a django-esi database: complete, idempotent, all or nothing."""

from __future__ import annotations

import datetime as dt
import secrets
import socket
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from worker.django_import import import_django_esi
from worker.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    IncompleteResponseError,
)
from worker.tokens import VALID

ASSETS = "esi-assets.read_assets.v1"
SKILLS = "esi-skills.read_skills.v1"

# django-esi's tables, as its migrations create them (PostgreSQL backend).
DJANGO_ESI_SCHEMA = """
CREATE TABLE esi_scope (
    id serial PRIMARY KEY,
    name varchar(100) NOT NULL UNIQUE,
    help_text text NOT NULL DEFAULT ''
);
CREATE TABLE esi_token (
    id serial PRIMARY KEY,
    created timestamptz NOT NULL,
    access_token text NOT NULL,
    refresh_token text NULL,
    user_id integer NULL,
    character_id integer NOT NULL,
    character_name varchar(100) NOT NULL,
    token_type varchar(100) NOT NULL,
    character_owner_hash varchar(254) NOT NULL,
    sso_version integer NOT NULL DEFAULT 2
);
CREATE TABLE esi_token_scopes (
    id serial PRIMARY KEY,
    token_id integer NOT NULL REFERENCES esi_token (id),
    scope_id integer NOT NULL REFERENCES esi_scope (id),
    UNIQUE (token_id, scope_id)
);
"""


@pytest.fixture
def django_db(database_url: str) -> Iterator[str]:
    """A scratch database holding django-esi's tables, dropped afterwards."""
    admin = conninfo_to_dict(database_url)
    name = f"django_esi_{secrets.token_hex(4)}"
    admin_url = make_conninfo(**{**admin, "dbname": "postgres"})
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**{**admin, "dbname": name})
    with psycopg.connect(url) as conn:
        conn.execute(DJANGO_ESI_SCHEMA)
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _add_django_token(url, emulator, character_id, scopes, user_id=None, **over):
    grant = emulator.create_grant(
        character_id=character_id, character_name=f"Pilot {character_id}", scopes=scopes
    )
    values = {
        "created": dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "user_id": user_id,
        "character_id": character_id,
        "character_name": f"Pilot {character_id}",
        "token_type": "character",
        "character_owner_hash": grant.owner_hash,
    }
    values.update(over)
    with psycopg.connect(url) as conn:
        token_id = conn.execute(
            f"INSERT INTO esi_token ({', '.join(values)}) VALUES"
            f" ({', '.join(['%s'] * len(values))}) RETURNING id",
            list(values.values()),
        ).fetchone()[0]
        for scope in scopes:
            conn.execute(
                "INSERT INTO esi_scope (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (scope,),
            )
            conn.execute(
                "INSERT INTO esi_token_scopes (token_id, scope_id)"
                " SELECT %s, id FROM esi_scope WHERE name = %s",
                (token_id, scope),
            )
    return grant


def test_every_django_esi_token_is_imported_and_refreshable(
    django_db, emulator, runtime
):
    # given a django-esi database with three tokens (one of a user, one scopeless)
    _add_django_token(django_db, emulator, 96000001, [ASSETS, SKILLS], user_id=7)
    _add_django_token(django_db, emulator, 96000002, [ASSETS])
    _add_django_token(django_db, emulator, 96000003, [], refresh_token=None)
    store = runtime.tokens

    # when it is imported
    summary = import_django_esi(django_db, store)

    # then all three are stored with their scopes and users, and refresh works
    assert summary.inserted == 3
    tokens = {t.character_id: t for t in store.query().including_dead()}
    assert tokens[96000001].scopes == (ASSETS, SKILLS)
    assert tokens[96000001].user_id == "7"
    assert tokens[96000003].refresh_token is None
    assert store.refresh_due().success == 2
    assert store.get(tokens[96000001].id).state == VALID


def test_importing_twice_changes_nothing_and_never_overwrites_a_rotated_token(
    django_db, emulator, runtime
):
    # given an imported token that the worker has since refreshed (rotated)
    emulator.configure(rotation="rotate_reject_old")
    _add_django_token(django_db, emulator, 96000011, [ASSETS])
    store = runtime.tokens
    import_django_esi(django_db, store)
    token = store.query().get()
    token.refresh()

    # when the same database is imported again
    summary = import_django_esi(django_db, store)

    # then nothing changed: the rotated refresh token is still the stored one
    assert summary.unchanged == 1 and summary.inserted == summary.merged == 0
    assert store.get(token.id).refresh_token == token.refresh_token
    assert store.query().count() == 1


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"character_owner_hash": ""}, "character_owner_hash"),
        ({"access_token": ""}, "access_token"),
        ({"character_name": ""}, "character_name"),
    ],
    ids=["no-owner-hash", "no-access-token", "no-character-name"],
)
def test_one_bad_row_imports_nothing_and_names_the_row(
    django_db, emulator, runtime, override, problem
):
    # given a good token and a broken one
    grant = _add_django_token(django_db, emulator, 96000021, [ASSETS])
    _add_django_token(django_db, emulator, 96000022, [ASSETS], **override)

    # when the database is imported
    with pytest.raises(IncompleteResponseError, match=problem) as caught:
        import_django_esi(django_db, runtime.tokens)

    # then the error names the row, shows no secret, and nothing was stored
    assert "django-esi token 2" in str(caught.value)
    assert grant.refresh_token not in str(caught.value)
    assert runtime.tokens.query().including_dead().count() == 0


def test_a_database_without_django_esi_tables_is_refused(database_url, runtime):
    # given our own database, which has esi_token but no esi_token_scopes
    # when it is given as a django-esi source
    with pytest.raises(ConfigurationError, match="esi_token_scopes"):
        import_django_esi(database_url, runtime.tokens)


def _refresh_tokens_of(store, character_id: int) -> set[str]:
    return {
        t.refresh_token
        for t in store.query().including_dead().filter(character_id=character_id)
    }


@pytest.mark.parametrize("live", ["newer", "older"])
def test_duplicate_rows_are_all_kept_so_the_live_grant_survives(
    django_db, emulator, runtime, live
):
    # given two django-esi rows of one character, user and scope set (two
    # logins), one of whose grants is dead at the SSO
    emulator.configure(rotation="rotate_reject_old")
    now = dt.datetime.now(dt.UTC)
    older = _add_django_token(
        django_db,
        emulator,
        96000031,
        [ASSETS],
        user_id=5,
        created=now - dt.timedelta(days=20),
    )
    newer = _add_django_token(
        django_db,
        emulator,
        96000031,
        [ASSETS],
        user_id=5,
        created=now - dt.timedelta(hours=1),
    )
    dead = older if live == "newer" else newer
    store = runtime.tokens
    store.sso.revoke(dead.refresh_token)

    # when the database is imported
    summary = import_django_esi(django_db, store)
    imported = list(store.query().filter(character_id=96000031).order_by("id"))

    # then neither refresh token was dropped, and the newest row came first
    assert summary.inserted == 2
    assert [t.refresh_token for t in imported] == [
        newer.refresh_token,
        older.refresh_token,
    ]
    assert {t.user_id for t in imported} == {"5"}

    # and after the first refreshes the live grant is the valid token left
    alive = newer if live == "newer" else older
    alive_id = next(t.id for t in imported if t.refresh_token == alive.refresh_token)
    refreshed = store.refresh_due()
    assert (refreshed.success, refreshed.dead) == (1, 1)
    assert store.query().filter(character_id=96000031).get().id == alive_id


def test_a_duplicate_holding_the_same_refresh_token_is_kept_once(
    django_db, emulator, runtime
):
    # given two django-esi rows carrying the very same grant
    grant = _add_django_token(django_db, emulator, 96000041, [ASSETS])
    _add_django_token(
        django_db,
        emulator,
        96000041,
        [ASSETS],
        access_token=grant.access_token,
        refresh_token=grant.refresh_token,
        character_owner_hash=grant.owner_hash,
    )

    # when it is imported
    summary = import_django_esi(django_db, runtime.tokens)

    # then one token holds it
    assert (summary.inserted, summary.kept) == (1, 1)
    assert runtime.tokens.query().filter(character_id=96000041).count() == 1


def test_a_django_grant_beside_a_login_of_ours_is_stored_too(
    django_db, emulator, runtime
):
    # given a valid token of ours and a django-esi row of another grant of
    # the same character, user and scopes
    ours = runtime.tokens.import_grant(
        emulator.create_grant(96000051, "Pilot 96000051", [ASSETS]), user="7"
    )
    theirs = _add_django_token(django_db, emulator, 96000051, [ASSETS], user_id=7)

    # when it is imported
    summary = import_django_esi(django_db, runtime.tokens)

    # then ours is untouched and theirs is stored beside it
    assert summary.inserted == 1
    assert runtime.tokens.get(ours.id).refresh_token == ours.refresh_token
    assert _refresh_tokens_of(runtime.tokens, 96000051) == {
        ours.refresh_token,
        theirs.refresh_token,
    }


@pytest.mark.parametrize(
    "source",
    [
        "notaurl",
        "",
        "mysql://admin:hunter2secret@db/alliance_auth",
        "postgresql://admin:hunter2secret@db/alliance_auth?nonsense=1",
    ],
    ids=["word", "empty", "other-scheme", "bad-option"],
)
def test_a_source_that_is_no_postgresql_url_is_refused_clearly(runtime, source):
    # when something that is no PostgreSQL connection string is given
    with pytest.raises(ConfigurationError) as caught:
        import_django_esi(source, runtime.tokens)

    # then the error says so and how one looks, never repeating the input
    assert "not a PostgreSQL connection string" in str(caught.value)
    assert "postgresql://" in str(caught.value)
    assert "hunter2secret" not in str(caught.value)
    assert not source or source not in str(caught.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_source_names_why_without_the_password(runtime):
    # given a source on a port where no server listens
    port = _free_port()
    source = f"postgresql://admin:hunter2secret@127.0.0.1:{port}/alliance_auth"

    # when it is imported
    with pytest.raises(DatabaseUnavailableError) as caught:
        import_django_esi(source, runtime.tokens)

    # then the error names the server and libpq's reason, not the password
    text = str(caught.value)
    assert f"127.0.0.1:{port}/alliance_auth" in text
    assert "refused" in text.lower()
    assert "hunter2secret" not in text and "\n" not in text


def test_a_missing_source_database_names_it(database_url, runtime):
    # given a source naming a database the server does not have
    params = {**conninfo_to_dict(database_url), "dbname": "no_such_django_db"}
    params["password"] = "hunter2secret"

    # when it is imported
    with pytest.raises(DatabaseUnavailableError) as caught:
        import_django_esi(make_conninfo(**params), runtime.tokens)

    # then the reason says that database does not exist
    assert 'database "no_such_django_db" does not exist' in str(caught.value)
    assert "hunter2secret" not in str(caught.value)


def test_tokens_of_another_application_are_imported_kept_and_named(
    django_db, emulator, runtime, caplog
):
    # given django-esi tokens of the web application, imported by a worker
    # configured with another one (the native application here)
    from worker.sso import SSOClient
    from worker.tokens import TokenStore

    for character_id in (96000011, 96000012):
        _add_django_token(django_db, emulator, character_id, [ASSETS])
    native = runtime.settings.model_copy(update={
        "sso_client_id": emulator.native_client_id, "sso_client_secret": None,
    })
    sso = SSOClient(native)
    store = TokenStore(runtime.pool, sso, native)

    # when they are imported and the due tokens refreshed
    with caplog.at_level("WARNING", logger="worker.django_import"):
        summary = import_django_esi(django_db, store)
    refreshed = store.refresh_due()

    # then both are stored, the warning names the count and both
    # applications, and no refresh touched them: they are still valid
    assert summary.inserted == 2
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "2 imported tokens" in warning
    assert emulator.client_id in warning and emulator.native_client_id in warning
    assert refreshed.config_error == 2 and refreshed.dead == 0
    assert {t.state for t in store.query().including_dead()} == {VALID}
    sso.close()
