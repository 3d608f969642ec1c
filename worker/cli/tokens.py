"""``esi-worker tokens``: inspect and refresh stored tokens."""

from __future__ import annotations

import click

from . import friendly_errors, settings_of


@click.group()
def tokens() -> None:
    """Inspect and refresh stored tokens."""


@tokens.command("list")
@click.option(
    "--all", "show_all", is_flag=True, help="Include tokens that stopped working."
)
@click.pass_context
@friendly_errors
def tokens_list(ctx: click.Context, show_all: bool) -> None:
    """List stored tokens (never their secrets)."""
    from ..runner import open_runtime

    with open_runtime(settings_of(ctx)) as runtime:
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
@friendly_errors
def tokens_refresh(ctx: click.Context) -> None:
    """Refresh every token due for refresh, now."""
    from ..runner import open_runtime

    with open_runtime(settings_of(ctx)) as runtime:
        click.echo(str(runtime.tokens.refresh_due()))
