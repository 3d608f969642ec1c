"""``esi-worker login``: log a character in from the terminal."""

from __future__ import annotations

import click

from ..errors import WorkerError
from ..wording import counted
from . import PORT, friendly_errors, settings_of


@click.command()
@click.option(
    "--scopes",
    default="",
    help="Space-separated scopes to ask for (none: identity only, no refresh).",
)
@click.option("--user", default=None, help="The user id the token belongs to.")
@click.option(
    "--port",
    type=PORT,
    default=None,
    help="Callback port on 127.0.0.1 (default: the one of "
    "ESI_WORKER_SSO_CALLBACK_URL; 0 picks a free one).",
)
@click.option("--open-browser", is_flag=True, help="Open the URL in a browser.")
@click.pass_context
@friendly_errors
def login(
    ctx: click.Context,
    scopes: str,
    user: str | None,
    port: int | None,
    open_browser: bool,
) -> None:
    """Log a character in through EVE SSO and store its token."""
    from ..login import loopback_login
    from ..runner import open_runtime
    from ..sso import require_sso_application

    require_sso_application(settings_of(ctx))

    def show(url: str) -> None:
        click.echo("Open this URL to log in:")
        click.echo(url, nl=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    with open_runtime(settings_of(ctx)) as runtime:
        try:
            token = loopback_login(
                scopes, store=runtime.tokens, on_url=show, user=user, port=port
            )
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from exc
        except WorkerError:
            raise
        except Exception as exc:
            # Not one of ours (a database hiccup, a bug): say so in one line;
            # its text could quote what it was handling, so only the type.
            raise click.ClickException(
                f"login failed unexpectedly ({type(exc).__name__}); "
                "the log above has the details"
            ) from exc
        click.echo(
            f"stored token {token.id} of character {token.character_id} "
            f"({token.character_name}) with {counted(len(token.scopes), 'scope')}"
        )
