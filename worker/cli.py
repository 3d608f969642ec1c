"""The ``esi-worker`` command line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__
from .errors import WorkerError
from .logs import configure_logging
from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(func: F) -> F:
    """Show our errors as one clear line instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WorkerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


@click.group()
@click.version_option(__version__, prog_name="esi-worker")
@click.option("--log-level", default=None, help="Log level (default: ESI_WORKER_LOG_LEVEL or INFO).")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """esi-worker: keeps EVE SSO tokens alive and pulls ESI data into PostgreSQL."""
    try:
        settings = Settings.from_env()
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(log_level or settings.log_level)
    ctx.obj = {"settings": settings}


@main.command()
@click.pass_context
@_friendly_errors
def migrate(ctx: click.Context) -> None:
    """Bring the database schema to the newest revision."""
    from .db import migrate as migrate_db
    from .db import resolve_database_url

    migrate_db(resolve_database_url(_settings(ctx)))
    click.echo("database schema is up to date")


@main.command()
@click.option("--emulator", is_flag=True, help="Run against the bundled ESI + SSO emulator, with demo tokens.")
@click.option("--emulator-port", type=int, default=0, show_default=True, help="Port of the emulator (0: any free one).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_context
@_friendly_errors
def run(ctx: click.Context, emulator: bool, emulator_port: int, duration: float | None) -> None:
    """Run scheduler and workers in this one process."""
    from .runner import run as run_all

    run_all(_settings(ctx), emulator=emulator, emulator_port=emulator_port, duration_s=duration)


@main.command()
@click.pass_context
@_friendly_errors
def worker(ctx: click.Context) -> None:
    """Run a worker process (needs a database URL and a broker URL)."""
    from .runner import run_worker

    run_worker(_settings(ctx))


@main.command()
@click.pass_context
@_friendly_errors
def scheduler(ctx: click.Context) -> None:
    """Run the scheduler process (needs a database URL and a broker URL)."""
    from .runner import run_scheduler

    run_scheduler(_settings(ctx))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@_friendly_errors
def emulator(host: str, port: int) -> None:
    """Serve the ESI + SSO emulator (for tests and plugin authors)."""
    from .emulator import EmulatorConfig, serve

    serve(host, port, EmulatorConfig())


@main.group()
def tokens() -> None:
    """Inspect and refresh stored tokens."""


@tokens.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include tokens that stopped working.")
@click.pass_context
@_friendly_errors
def tokens_list(ctx: click.Context, show_all: bool) -> None:
    """List stored tokens (never their secrets)."""
    from .runner import open_runtime

    with open_runtime(_settings(ctx)) as runtime:
        query = runtime.tokens.query()
        if show_all:
            query = query.including_dead()
        for token in query.order_by("character_id"):
            click.echo(
                f"{token.id:>6}  {token.character_id:>12}  {token.character_name:<28} "
                f"{token.state:<18} expires {token.expires:%Y-%m-%d %H:%M:%S}Z  "
                f"{len(token.scopes)} scopes"
            )


@tokens.command("refresh")
@click.pass_context
@_friendly_errors
def tokens_refresh(ctx: click.Context) -> None:
    """Refresh every token due for refresh, now."""
    from .runner import open_runtime

    with open_runtime(_settings(ctx)) as runtime:
        click.echo(str(runtime.tokens.refresh_due()))


@main.group()
def jobs() -> None:
    """Inspect and run jobs."""


@jobs.command("list")
@click.pass_context
@_friendly_errors
def jobs_list(ctx: click.Context) -> None:
    """List every registered job, with broken plugins and why."""
    from .jobs import JobRegistry

    settings = _settings(ctx)
    found, failures = JobRegistry().load_all()
    for name, job in sorted(found.items()):
        every = settings.job_intervals.get(name, job.interval_s)
        scopes = " ".join(job.scopes) or "-"
        click.echo(f"{name:<20} {job.source:<28} every {every:>7.0f} s  {job.fan_out:<13} {scopes}")
    for name, reason in sorted(failures.items()):
        click.echo(f"{name:<20} BROKEN: {reason}")


@jobs.command("run")
@click.argument("name")
@click.option("--character", "character_id", type=int, default=None)
@click.pass_context
@_friendly_errors
def jobs_run(ctx: click.Context, name: str, character_id: int | None) -> None:
    """Run job NAME once, now, in this process."""
    from .jobs import JobRegistry
    from .runner import open_runtime
    from .runs import execute_job

    with open_runtime(_settings(ctx)) as runtime:
        outcome = execute_job(runtime, JobRegistry(), name, character_id)
    click.echo(f"{name}: {outcome}")
    if outcome == "failure":
        ctx.exit(1)
