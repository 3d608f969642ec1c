"""Pytest fixtures: a migrated PostgreSQL database, the emulator, settings, a runtime,
tokens and a started worker.

Installed with esi-worker through the ``pytest11`` entry point, so plugin
authors get the same fixtures the project tests itself with. Heavy imports
happen inside the fixtures, never when pytest loads the plugin.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from worker.emulator import Emulator
    from worker.jobs import JobRegistry
    from worker.runtime import Runtime
    from worker.settings import Settings
    from worker.testing.harness import StartedWorker
    from worker.tokens import Token

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# The tables known when this was written; clean_db empties every esi_*
# table it finds, so one a later revision adds is never left holding rows
# of an earlier test.
TABLES = (
    "esi_token_scope",
    "esi_token",
    "esi_scope",
    "esi_pending_login",
    "esi_token_refresh_journal",
    "esi_token_pruned",
    "esi_sso_client_refusal",
    "esi_job_run",
    "esi_market_order",
    "esi_type_name",
    "esi_character_asset",
)
TABLE_PREFIX = "esi_"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esi-worker")
    group.addoption(
        "--esi-worker-db",
        default=DEFAULT_ADMIN_URL,
        help="PostgreSQL URL of a server where test databases may be created "
        f"(default {DEFAULT_ADMIN_URL})",
    )


@pytest.fixture(scope="session")
def database_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh database migrated to head, dropped after the session."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from worker.db import migrate

    admin_url = pytestconfig.getoption("--esi-worker-db")
    name = f"esi_worker_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo("", **{**conninfo_to_dict(admin_url), "dbname": name})
    migrate(url)
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def db_pool(database_url: str) -> Iterator[ConnectionPool]:
    """A connection pool on the test database."""
    from worker.db import create_pool

    pool = create_pool(database_url, max_size=10)
    yield pool
    pool.close()


@pytest.fixture
def clean_db(db_pool: ConnectionPool) -> ConnectionPool:
    """The pool, with every esi-worker table (``esi_*``) emptied before the test."""
    with db_pool.connection() as conn:
        existing = sorted(
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
            if row[0] in TABLES or row[0].startswith(TABLE_PREFIX)
        )
        if existing:
            names = ", ".join(f'"{t}"' for t in existing)
            conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
    return db_pool


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[Emulator]:
    """One emulator for the session, on a free port of 127.0.0.1."""
    from worker.emulator import Emulator, EmulatorConfig

    emu = Emulator(EmulatorConfig())
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator(emulator_session: Emulator) -> Emulator:
    """The session's emulator, reset to its defaults for this test."""
    emulator_session.reset()
    return emulator_session


@pytest.fixture
def esi_settings_overrides() -> dict[str, Any]:
    """Override to change settings for the tests of one module."""
    return {}


@pytest.fixture
def settings(
    database_url: str,
    emulator: Emulator,
    tmp_path: Any,
    esi_settings_overrides: dict[str, Any],
) -> Settings:
    """Settings pointing at the test database and the emulator."""
    from worker.settings import Settings

    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "sso_base_url": emulator.base_url,
        "esi_base_url": emulator.base_url,
        "sso_client_id": emulator.client_id,
        "sso_client_secret": emulator.client_secret,
        "metrics_port": 0,
        "contact_email": "tests@example.invalid",
        # The emulator never goes down for the game's daily downtime.
        "esi_downtime_utc": "",
    }
    values.update(esi_settings_overrides)
    return Settings(**values)


@pytest.fixture
def runtime(settings: Settings, clean_db: ConnectionPool) -> Iterator[Runtime]:
    """A runtime on the test settings, made current for the test.

    The in-process ESI response cache is shared by the whole process; it
    is emptied first, so no answer an earlier test got from a differently
    configured emulator (roles, mutations) is replayed in this one.
    """
    from worker.esi.cache import MemoryCache
    from worker.runtime import Runtime

    rt = Runtime.from_settings(settings, pool=clean_db)
    if isinstance(rt.cache, MemoryCache):
        rt.cache.clear()
    with rt.activated():
        yield rt
    rt.close()


@pytest.fixture
def make_token(runtime: Runtime, emulator: Emulator) -> Callable[..., Token]:
    """Store a token: a grant made in the emulator, imported into the database.

    Call it as ``make_token(character_id, character_name, scopes)``; every
    argument has a default (the emulator's first test pilot, no scopes).
    """

    def make(
        character_id: int = 2112000001,
        character_name: str = "Test Pilot One",
        scopes: str | Iterable[str] = (),
    ) -> Token:
        from worker.scopes import normalize_scopes

        grant = emulator.create_grant(
            character_id=character_id,
            character_name=character_name,
            scopes=list(normalize_scopes(scopes)),
        )
        return runtime.tokens.import_grant(grant)

    return make


@pytest.fixture
def job_registry() -> JobRegistry:
    """The jobs registered through the ``esi_worker.jobs`` entry points."""
    from worker.jobs import JobRegistry

    return JobRegistry()


@pytest.fixture
def started_worker(
    runtime: Runtime, job_registry: JobRegistry
) -> Iterator[StartedWorker]:
    """A worker running the registered jobs in this process, on the runtime.

    ``started_worker.run("my_job", character_id)`` runs a job through the
    broker and returns its run record; ``started_worker.plan()`` plans
    every job once, as the scheduler's leader would.
    """
    from worker.testing.harness import StartedWorker

    worker = StartedWorker(runtime, job_registry)
    yield worker
    worker.stop()
