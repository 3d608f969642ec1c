"""``esi-worker jobs``: list, run, inspect runs, scaffold a plugin."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import friendly_errors, settings_of

if TYPE_CHECKING:
    from ..jobs import Job
    from ..runtime import Runtime


@click.group()
def jobs() -> None:
    """Inspect, run and create jobs."""


@jobs.command("list")
@click.pass_context
@friendly_errors
def jobs_list(ctx: click.Context) -> None:
    """List every job: source package, schedule, scopes, fan-out, next run.

    Broken plugins are listed with the reason they could not be loaded.
    Exits 1 when the next runs cannot be read from the database.
    """
    from ..errors import ConfigurationError
    from ..jobs import JobRegistry
    from ..jobs.redaction import scrub, settings_secrets
    from ..jobs.registry import check_job_names

    settings = settings_of(ctx)
    registry = JobRegistry()
    found, failures = registry.load_all()
    next_runs, unknown_why = _next_runs(ctx, found)
    click.echo(
        f"{'JOB':<22} {'SOURCE':<26} {'SCHEDULE':<26} {'FAN-OUT':<16} "
        f"{'NEXT RUN':<20} SCOPES"
    )
    for name, job in sorted(found.items()):
        schedule = job.schedule(settings.job_intervals.get(name)).describe()
        disabled = " (disabled)" if name in settings.disabled_jobs else ""
        click.echo(
            f"{name:<22} {registry.source(name):<26} {schedule:<26} "
            f"{job.fan_out.value:<16} {next_runs.get(name, '-'):<20} "
            f"{' '.join(job.token_scopes) or '-'}{disabled}"
        )
    for name, reason in sorted(failures.items()):
        click.echo(f"{name:<22} BROKEN: {scrub(reason)}")

    try:
        check_job_names(settings, registry)
    except ConfigurationError as exc:
        # Shown, not raised: this listing is where the right names are found.
        click.echo(f"Warning: {exc}; 'run', 'worker' and 'scheduler' stop on it", err=True)
    if unknown_why:
        shown = scrub(unknown_why, settings_secrets(settings))
        click.echo(f"Error: next runs unknown: {shown}", err=True)
        ctx.exit(1)


@jobs.command("run")
@click.argument("name")
@click.option(
    "--character",
    "character_id",
    type=int,
    default=None,
    help="Run for this character only (its token is looked up now).",
)
@click.pass_context
@friendly_errors
def jobs_run(ctx: click.Context, name: str, character_id: int | None) -> None:
    """Run job NAME now, in this process, and record the run.

    A fan-out job runs for every current subject (character, token or
    corporation), or with --character for that character's: its run, a
    run per token of it, or its corporation's run made with its token.
    Exits 1 when a run failed or when there is nobody to run it for.
    """
    from ..jobs import JobRegistry
    from ..jobs.subjects import adhoc_runs
    from ..runner import open_runtime, require_contact, require_sso_credentials
    from ..runs import execute_job

    registry = JobRegistry()
    job = registry.get(name)
    settings = settings_of(ctx)
    if job.token_scopes:
        require_sso_credentials(settings)  # its tokens may need a refresh
    else:
        require_contact(settings)
    with open_runtime(settings) as runtime:
        runs = adhoc_runs(runtime, job, character_id)  # nobody: JobSkipped, exit 1
        results = []
        for run in runs:
            outcome = execute_job(runtime, registry, name, subject=run)
            results.append((run, outcome, _recent(runtime, 1, job=name)))
    for run, outcome, row in results:
        label = f" ({_subject(job.fan_out.value, run)})" if len(results) > 1 else ""
        detail = f" ({_shown(row[0]['error'])})" if row and row[0]["error"] else ""
        click.echo(f"{name}{label}: {outcome}{detail}")
    if any(outcome == "failure" for _, outcome, _ in results):
        ctx.exit(1)


@jobs.command("runs")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--failures", is_flag=True, help="Only runs that failed.")
@click.option("--job", "job_name", default=None, help="Only runs of this job.")
@click.pass_context
@friendly_errors
def jobs_runs(
    ctx: click.Context, limit: int, failures: bool, job_name: str | None
) -> None:
    """Show the newest runs (and failures, with their error)."""
    from ..jobs import JobRegistry
    from ..runner import open_runtime

    with open_runtime(settings_of(ctx)) as runtime:
        rows = _recent(runtime, limit, failures_only=failures, job=job_name)
    if job_name and not rows and job_name not in JobRegistry().names():
        # Runs of a job since uninstalled still show; a typo says so.
        JobRegistry().get(job_name)  # raises UnknownJobError naming the jobs
    click.echo(
        f"{'ID':>7} {'JOB':<22} {'FOR':>12} {'STARTED':<20} {'SECONDS':>8} "
        f"{'OUTCOME':<9} {'PAGES':>5} {'ITEMS':>7} {'CALLS':>5} {'HITS':>5}"
    )
    for row in rows:
        click.echo(_run_line(row))
        if row["error"] and row["outcome"] in ("failure", "deferred", "skipped"):
            click.echo(f"{'':>8}{_shown(row['error'])}")


@jobs.command("new")
@click.argument("name")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create it.",
)
@friendly_errors
def jobs_new(name: str, directory: Path) -> None:
    """Create a plugin package for a new job NAME, with a test."""
    from ..scaffold import create_plugin

    root = create_plugin(name, directory)
    click.echo(f"created {root}")
    click.echo(f"next: pip install -e '{root}[test]' && pytest {root}")


def _next_runs(
    ctx: click.Context, found: dict[str, Job]
) -> tuple[dict[str, str], str]:
    """The next run of each job, or none and the reason they are unknown."""
    # The next run comes from the run records and the current subjects, in
    # the configured database or the embedded one.
    import psycopg

    from ..db import scrub_error
    from ..errors import WorkerError
    from ..runner import open_runtime
    from ..scheduler import next_run

    settings = settings_of(ctx)
    try:
        with open_runtime(settings) as runtime:
            now = runtime.clock.now()
            return {
                name: _when(next_run(runtime, job, now), now)
                for name, job in found.items()
            }, ""
    except WorkerError as exc:
        # Ours name the server, never a password; only a schema behind
        # (or absent) names 'esi-worker migrate'.
        return {}, str(exc)
    except psycopg.Error as exc:
        return {}, scrub_error(exc, settings.database_url or "")


def _when(instant: dt.datetime | None, now: dt.datetime) -> str:
    if instant is None:
        return "no subject"  # a fan-out job whose scopes no token holds
    if instant <= now:
        return "due now"
    return f"{instant:%Y-%m-%d %H:%M:%S}Z"


def _subject(fan_out: str, run: Any) -> str:
    if fan_out == "per_token":
        return f"token {run.subject}"
    if fan_out == "per_corporation":
        return f"corporation {run.subject}"
    return f"character {run.subject}"


def _shown(error: str) -> str:
    # Records written before errors were scrubbed may still hold a secret.
    from ..jobs.redaction import scrub

    return scrub(error)


def _recent(runtime: Runtime, limit: int, **filters: Any) -> list[dict[str, Any]]:
    from ..jobs.records import recent_runs

    with runtime.pool.connection() as conn:
        return recent_runs(conn, limit, **filters)


def _run_line(row: dict[str, Any]) -> str:
    started, finished = row["started"], row["finished"]
    seconds = (
        f"{(finished - started).total_seconds():.2f}" if started and finished else "-"
    )
    subject = row["character_id"] or row["corporation_id"] or "-"
    when = f"{started:%Y-%m-%d %H:%M:%S}" if started else f"({row['state']})"
    return (
        f"{row['id']:>7} {row['job']:<22} {subject!s:>12} {when:<20} {seconds:>8} "
        f"{row['outcome'] or row['state']:<9} {row['pages']:>5} {row['items']:>7} "
        f"{row['esi_calls']:>5} {row['cache_hits']:>5}"
    )
