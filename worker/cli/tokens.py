"""``esi-worker tokens``: inspect, refresh, revoke, import and re-encrypt tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..wording import counted
from . import friendly_errors, settings_of

if TYPE_CHECKING:
    from ..tokens import ClientRefusal, Token

# The columns of `tokens list`; its rows keep the same widths.
_LIST_HEADER = (
    f"{'id':>6}  {'character':>12}  {'name':<28} {'status':<18} "
    f"{'access token expires':<28}  scopes"
)

# What each status means, as `tokens show` explains it.
_STATUS_TEXT = {
    "valid": "usable now",
    "expired": "the access token lapsed; the next refresh renews it",
    "config_error": "its refresh is blocked: {refusal}",
    "revoked": "the SSO says the grant is dead; a new login is needed",
    "owner_changed": "the character changed account; a new login is needed",
    "no_refresh_expired": "expired, and it has no refresh token to renew it",
}


@click.group()
def tokens() -> None:
    """Inspect and manage stored tokens (never showing their secrets)."""


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
        refusal = runtime.tokens.client_refusal()
        if refusal is not None:
            click.echo(f"warning: {refusal}", err=True)
        query = runtime.tokens.query()
        if show_all:
            query = query.including_dead()
        # Read (and decrypted) in full first: a token that fails to decrypt
        # stops the command before half a table is printed.
        found = list(query.order_by("character_id"))
        click.echo(_LIST_HEADER)
        for token in found:
            click.echo(
                f"{token.id:>6}  {token.character_id:>12}  {token.character_name:<28} "
                f"{_status(token, refusal):<18} "
                f"expires {token.expires:%Y-%m-%d %H:%M:%S}Z  "
                f"{counted(len(token.scopes), 'scope')}"
            )


@tokens.command("show")
@click.argument("token_id", type=int)
@click.pass_context
@friendly_errors
def tokens_show(ctx: click.Context, token_id: int) -> None:
    """Show one token: character, state and why, scopes, refresh failures."""
    from ..runner import open_runtime

    with open_runtime(settings_of(ctx)) as runtime:
        token = runtime.tokens.get(token_id)
        if token is None:
            raise click.ClickException(f"no token with id {token_id}")
        refusal = runtime.tokens.client_refusal()
        status = _status(token, refusal)
        explained = _STATUS_TEXT.get(status, "").format(refusal=refusal)
        rows = [
            ("id", token.id),
            ("character", f"{token.character_id} ({token.character_name})"),
            ("user", token.user_id or "-"),
            ("state", f"{status} ({explained})" if explained else status),
            ("state reason", token.state_reason or "-"),
            ("state changed", token.state_changed or "-"),
            ("access expires", token.access_expires),
            ("refreshable", _refreshable(token, refusal)),
            ("refresh failures", token.refresh_failures),
            ("last refresh error", token.last_refresh_error or "-"),
            ("next refresh attempt", token.next_refresh_attempt or "-"),
            ("created", token.created),
            ("scopes", " ".join(token.scopes) or "-"),
        ]
        for label, value in rows:
            click.echo(f"{label + ':':<22}{value}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
@click.option("--reason", default="revoked by the operator", show_default=True)
@click.pass_context
@friendly_errors
def tokens_revoke(ctx: click.Context, token_id: int, reason: str) -> None:
    """Revoke a token at the SSO and mark it revoked (kept until pruned)."""
    from ..runner import open_runtime
    from ..sso import require_sso_application

    require_sso_application(settings_of(ctx))
    with open_runtime(settings_of(ctx)) as runtime:
        token = runtime.tokens.get(token_id)
        if token is None:
            raise click.ClickException(f"no token with id {token_id}")
        revoked = runtime.tokens.revoke(token, reason=reason)
        click.echo(f"token {revoked.id} is {revoked.state}: {revoked.state_reason}")


@tokens.command("refresh")
@click.pass_context
@friendly_errors
def tokens_refresh(ctx: click.Context) -> None:
    """Refresh every token due for refresh, now, and count the outcomes.

    Exits 0 when the run went through, even if some tokens could not be
    renewed (the counts say which: dead, transient, ...); 1 when it could
    not run, or when the SSO refused the client credentials (config_error:
    no token can be refreshed until the settings are fixed); 2 on a usage
    error.
    """
    from ..runner import open_runtime
    from ..sso import require_sso_application

    # Before the database is opened: nothing is claimed or written.
    require_sso_application(settings_of(ctx))
    with open_runtime(settings_of(ctx)) as runtime:
        summary = runtime.tokens.refresh_due()
        click.echo(str(summary))
        if summary.config_error:
            refusal = runtime.tokens.client_refusal()
            raise click.ClickException(
                str(refusal)
                if refusal is not None
                else "the SSO refused the client credentials: check "
                "ESI_WORKER_SSO_CLIENT_ID and ESI_WORKER_SSO_CLIENT_SECRET"
            )


@tokens.command("import-django-esi")
@click.option(
    "--from", "source", required=True, help="PostgreSQL URL of the django-esi database."
)
@click.pass_context
@friendly_errors
def tokens_import(ctx: click.Context, source: str) -> None:
    """Import every token of a django-esi database (all or nothing; re-runnable)."""
    from ..django_import import describe_source, import_django_esi
    from ..runner import open_runtime

    describe_source(source)  # a malformed --from fails before anything opens
    with open_runtime(settings_of(ctx)) as runtime:
        click.echo(str(import_django_esi(source, runtime.tokens)))


@tokens.command("reencrypt")
@click.pass_context
@friendly_errors
def tokens_reencrypt(ctx: click.Context) -> None:
    """Encrypt every secret with the first key of ESI_WORKER_TOKEN_KEYS."""
    from ..runner import open_runtime

    with open_runtime(settings_of(ctx)) as runtime:
        summary = runtime.tokens.reencrypt_report()
        click.echo(str(summary))
        if summary.locked:
            raise click.ClickException(
                f"{summary.locked} rows could not be re-encrypted; run it again"
            )


def _refreshable(token: Token, refusal: ClientRefusal | None) -> str:
    """Whether a refresh could renew the token, and if not, why not."""
    if token.refresh_token is None:
        return "no (it has no refresh token)"
    if not token.can_refresh:
        return f"no (the token is {token.state})"
    if refusal is not None:
        return "yes, once the SSO accepts the client credentials"
    return "yes"


def _status(token: Token, refusal: ClientRefusal | None) -> str:
    """The token's status, ``config_error`` while the SSO refuses our client
    and the token depends on a refresh."""
    status = token.status
    if refusal is not None and status in ("valid", "expired") and token.can_refresh:
        return "config_error"
    return status


@tokens.command("new-key")
def tokens_new_key() -> None:
    """Print a fresh key to put first in ESI_WORKER_TOKEN_KEYS."""
    from ..crypto import TokenCipher

    click.echo(TokenCipher.new_key())
