"""The ``esi-worker`` command line: the group and the process commands.

Command families live in their own modules (``tokens``, ``jobs``) and are
attached at the bottom of this one.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import __version__
from ..errors import WorkerError
from ..logs import configure_logging
from ..settings import LOG_LEVELS, Settings

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)


def friendly_errors(func: F) -> F:
    """Show our errors as one clear line instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WorkerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


PORT = click.IntRange(0, 65535)
"""A TCP port option; 0 lets the system pick a free one."""


def _seconds(
    _ctx: click.Context, _param: click.Parameter, value: float | None
) -> float | None:
    # FloatRange lets nan through, and an infinite wait overflows.
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"must be a number of seconds, 0 or more; got {value}")
    return value


@click.group()
@click.version_option(__version__, prog_name="esi-worker")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Log level (default: ESI_WORKER_LOG_LEVEL or INFO).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """esi-worker: keeps EVE SSO tokens alive and pulls ESI data into PostgreSQL."""
    try:
        settings = Settings.from_env()
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(log_level or settings.log_level)
    _warn_unknown_settings()
    ctx.obj = {"settings": settings}


@main.command()
@click.pass_context
@friendly_errors
def migrate(ctx: click.Context) -> None:
    """Bring the database schema to the newest revision."""
    from ..db import migrate as migrate_db
    from ..db import resolve_database_url

    migrate_db(resolve_database_url(settings_of(ctx)))
    click.echo("database schema is up to date")


@main.command()
@click.option(
    "--emulator",
    is_flag=True,
    help="Run against the bundled ESI + SSO emulator, with demo tokens, on "
    "an embedded PostgreSQL of its own in the demo folder of the data "
    "folder; ESI_WORKER_DATABASE_URL, ESI_WORKER_BROKER_URL and "
    "ESI_WORKER_REDIS_URL are ignored.",
)
@click.option(
    "--emulator-port",
    type=PORT,
    default=0,
    show_default=True,
    help="Port of the emulator (0: any free one).",
)
@click.option(
    "--use-configured-services",
    is_flag=True,
    help="With --emulator: use the configured database, broker and Redis "
    "after all (for tests; the demo tokens and data are written there).",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    callback=_seconds,
    help="Stop after this many seconds (default: at Ctrl-C or SIGTERM).",
)
@click.pass_context
@friendly_errors
def run(
    ctx: click.Context,
    emulator: bool,
    emulator_port: int,
    use_configured_services: bool,
    duration: float | None,
) -> None:
    """Run scheduler and workers in this one process."""
    from ..runner import run as run_all

    if use_configured_services and not emulator:
        raise click.UsageError("--use-configured-services goes with --emulator")
    run_all(
        settings_of(ctx),
        emulator=emulator,
        emulator_port=emulator_port,
        duration_s=duration,
        demo_services="configured" if use_configured_services else "own",
    )


@main.command()
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to start; their metrics are served as one endpoint.",
)
@click.pass_context
@friendly_errors
def worker(ctx: click.Context, processes: int) -> None:
    """Run a worker process (needs a database URL and a broker URL)."""
    from ..runner import run_worker

    run_worker(settings_of(ctx), processes)


@main.command()
@click.pass_context
@friendly_errors
def scheduler(ctx: click.Context) -> None:
    """Run the scheduler process (needs a database URL and a broker URL)."""
    from ..runner import run_scheduler

    run_scheduler(settings_of(ctx))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=PORT, default=8090, show_default=True, help="0: any free one."
)
@friendly_errors
def emulator(host: str, port: int) -> None:
    """Serve the ESI + SSO emulator (for tests and plugin authors)."""
    import socket

    from ..emulator import EmulatorConfig, serve
    from ..ports import check_bindable

    check_bindable(
        host,
        port,
        what="the emulator",
        port_hint="choose another --port (0: any free one)",
        host_option="--host",
        family=socket.AF_INET,  # the emulator's server is IPv4 only
    )
    serve(host, port, EmulatorConfig())


def _warn_unknown_settings() -> None:
    for name, guess in Settings.unknown_env_names().items():
        hint = f" (did you mean {guess}?)" if guess else ""
        # The name only: the value may be a password.
        log.warning(
            "%s is not an esi-worker setting and is ignored%s",
            name,
            hint,
            extra={"setting": name},
        )


def _attach_command_families() -> None:
    from .jobs import jobs
    from .tokens import tokens

    main.add_command(tokens)
    main.add_command(jobs)
    main.add_command(__import__(f"{__name__}.login", fromlist=["login"]).login)


_attach_command_families()
