"""``esi-worker jobs``: list and run jobs."""

from __future__ import annotations

import click

from . import friendly_errors, settings_of


@click.group()
def jobs() -> None:
    """Inspect and run jobs."""


@jobs.command("list")
@click.pass_context
@friendly_errors
def jobs_list(ctx: click.Context) -> None:
    """List every registered job, with broken plugins and why."""
    from ..jobs import JobRegistry

    settings = settings_of(ctx)
    found, failures = JobRegistry().load_all()
    for name, job in sorted(found.items()):
        every = settings.job_intervals.get(name, job.interval_s)
        scopes = " ".join(job.scopes) or "-"
        click.echo(
            f"{name:<20} {job.source:<28} every {every:>7.0f} s  {job.fan_out:<13} {scopes}"
        )
    for name, reason in sorted(failures.items()):
        click.echo(f"{name:<20} BROKEN: {reason}")


@jobs.command("run")
@click.argument("name")
@click.option("--character", "character_id", type=int, default=None)
@click.pass_context
@friendly_errors
def jobs_run(ctx: click.Context, name: str, character_id: int | None) -> None:
    """Run job NAME once, now, in this process."""
    from ..jobs import JobRegistry
    from ..runner import open_runtime
    from ..runs import execute_job

    with open_runtime(settings_of(ctx)) as runtime:
        outcome = execute_job(runtime, JobRegistry(), name, character_id)
    click.echo(f"{name}: {outcome}")
    if outcome == "failure":
        ctx.exit(1)
