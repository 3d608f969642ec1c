"""Alembic environment: runs the migrations on a psycopg connection."""

from __future__ import annotations

import logging.config
import os

import psycopg
from sqlalchemy import create_engine, pool, text

from alembic import context

config = context.config

# Any fixed number will do; it keeps two workers starting at once from
# running the same migration twice.
_MIGRATION_LOCK_ID = 7_401_118_604


def _database_url() -> str:
    url = config.attributes.get("connection_url")
    if url:
        return str(url)
    # The one environment read outside Settings: the alembic CLI gives us no
    # other way to learn the database. worker.db.migrate() never gets here.
    url = os.environ.get("ESI_WORKER_DATABASE_URL")
    if not url:
        raise SystemExit(
            "no database: set ESI_WORKER_DATABASE_URL or use worker.db.migrate()"
        )
    return url


def run_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(dialect_name="postgresql", literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations under an advisory lock on one connection."""
    url = _database_url()
    # creator= lets libpq parse the URL, so key=value strings work too.
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url),
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as connection:
            connection.execute(text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK_ID})"))
            connection.commit()
            try:
                context.configure(connection=connection, transaction_per_migration=True)
                with context.begin_transaction():
                    context.run_migrations()
            finally:
                connection.execute(
                    text(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK_ID})")
                )
                connection.commit()
    finally:
        engine.dispose()


if config.config_file_name is not None:
    # Only the alembic CLI gets here; the worker configures its own logging.
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
