"""The database module: migrations, the pool and its errors."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from worker.db import create_pool, describe_database, downgrade, migrate
from worker.errors import ConfigurationError, DatabaseUnavailableError
from worker.settings import Settings

SCHEMA_TABLES = {
    "esi_scope",
    "esi_token",
    "esi_token_scope",
    "esi_pending_login",
    "esi_job_run",
    "esi_market_order",
    "esi_type_name",
    "esi_character_asset",
    "esi_token_refresh_journal",
    "esi_token_pruned",
}


@pytest.fixture
def empty_database(pytestconfig: pytest.Config) -> Iterator[str]:
    admin_url = pytestconfig.getoption("--esi-worker-db")
    name = f"esi_worker_mig_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(**{**conninfo_to_dict(admin_url), "dbname": name})
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows} - {"alembic_version"}


def _indexes(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)
        ).fetchall()
    return {row[0].split(" USING ")[1] for row in rows}


def test_migrate_creates_every_table_and_downgrade_drops_them(empty_database):
    # given an empty database
    # when it is migrated to head
    migrate(empty_database)

    # then every table of the schema exists
    assert SCHEMA_TABLES <= _tables(empty_database)

    # and downgrading to base drops them all again
    downgrade(empty_database)
    assert _tables(empty_database) == set()


def test_migrate_twice_changes_nothing(empty_database):
    # given a migrated database
    migrate(empty_database)

    # when it is migrated again
    migrate(empty_database)

    # then the schema is the same
    assert SCHEMA_TABLES <= _tables(empty_database)


def test_schema_has_the_indexes_the_token_queries_use(database_url):
    # given the session's migrated database
    # when the indexes are listed
    token_indexes = _indexes(database_url, "esi_token")
    scope_indexes = _indexes(database_url, "esi_token_scope")

    # then scope lookups and expiry scans have their indexes
    assert "btree (scope_id, token_id)" in scope_indexes
    assert "btree (state, access_expires)" in token_indexes
    assert "btree (character_id)" in token_indexes


def test_migrate_accepts_a_key_value_connection_string(empty_database):
    # given the database as libpq key=value pairs
    params = conninfo_to_dict(empty_database)
    key_value = " ".join(f"{k}={v}" for k, v in params.items())

    # when it is migrated with that string
    migrate(key_value)

    # then the schema exists
    assert SCHEMA_TABLES <= _tables(empty_database)


def test_create_pool_opens_a_working_pool(database_url):
    # given the test database
    # when a pool is created on it
    pool = create_pool(database_url, max_size=2)

    # then it hands out working connections
    try:
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_create_pool_error_names_the_host_but_never_the_password():
    # given a URL with a password, pointing at a port nobody listens on
    url = "postgresql://worker:Sup3rS3cretPw@127.0.0.1:1/esi"

    # when a pool is created
    with pytest.raises(DatabaseUnavailableError) as caught:
        create_pool(url, timeout_s=2)

    # then the error names the server and hides the password
    text = str(caught.value)
    assert "127.0.0.1:1/esi" in text
    assert "Sup3rS3cretPw" not in text
    assert "Sup3rS3cretPw" not in repr(caught.value)


def test_create_pool_rejects_inconsistent_sizes(database_url):
    # given sizes where min exceeds max
    # when a pool is created
    with pytest.raises(ConfigurationError, match="min_size"):
        create_pool(database_url, min_size=5, max_size=2)
    # then nothing was opened (the error came before connecting)


def test_a_malformed_database_url_is_refused_without_repeating_it():
    # given text that is no connection string, holding a secret
    url = "postgresql://u:hunter2@[::1"

    # when it is described
    with pytest.raises(ConfigurationError) as caught:
        describe_database(url)

    # then the error explains the expected form and omits the secret
    assert "connection string" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_resolve_database_url_prefers_the_configured_url(tmp_path):
    # given settings that name a database
    from worker.db import resolve_database_url

    settings = Settings(
        database_url="postgresql://x@db.example:5432/esi", data_dir=tmp_path
    )

    # when the URL is resolved
    url = resolve_database_url(settings)

    # then it is the configured one and no embedded server was started
    assert url == "postgresql://x@db.example:5432/esi"
    assert not (tmp_path / "postgres").exists()


def test_a_configured_database_without_the_schema_is_refused_with_the_command(
    empty_database, tmp_path
):
    # given a configured database nobody migrated
    from worker.runtime import Runtime

    settings = Settings(database_url=empty_database, data_dir=tmp_path)

    # when a runtime is opened on it, then the error says what to run
    with pytest.raises(ConfigurationError, match="esi-worker migrate"):
        Runtime.from_settings(settings)

    # and nothing was created behind the operator's back
    with psycopg.connect(empty_database) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_a_runtime_opens_on_a_migrated_database(empty_database, tmp_path):
    from worker.runtime import Runtime

    migrate(empty_database)
    runtime = Runtime.from_settings(
        Settings(database_url=empty_database, data_dir=tmp_path)
    )
    try:
        assert runtime.tokens.query().count() == 0
    finally:
        runtime.close()
