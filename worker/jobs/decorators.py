"""django-esi's token decorators, for jobs instead of views.

A view decorated with ``token_required`` receives ``(request, token)``; a job
function decorated the same way receives ``(ctx, token)``::

    @job(every=3600)
    @token_required(scopes="esi-assets.read_assets.v1")
    def assets(ctx, token):
        ...

The scopes accept the forms django-esi accepts (a space-delimited string,
a list, a one-element list holding a space-delimited string) and are added
to the job's declared scopes. A job cannot send anyone through a login, so
``new=True`` means "only tokens stored since this job last succeeded"; for
a run of a character (or a corporation), since it last succeeded for that
character (or corporation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import JobDefinitionError, JobSkipped, ScopeError
from ..scopes import normalize_scopes

if TYPE_CHECKING:
    from ..tokens import Token, TokenQuery
    from .context import JobContext

SCOPES_ATTRIBUTE = "__esi_worker_scopes__"
Decorated = Callable[..., Any]
ScopeArg = str | Iterable[str] | Decorated | None


def token_required(scopes: ScopeArg = "", new: bool = False) -> Any:
    """Call the job function with the first valid token holding ``scopes``.

    The run's own token is used when it holds them (per-character runs).

    :raises JobSkipped: at run time, when no such token is stored.
    """
    return _decorator(scopes, new, _first_token)


def tokens_required(scopes: ScopeArg = "", new: bool = False) -> Any:
    """Call the job function with every valid token holding ``scopes``.

    The tokens come as a list, narrowed to the run's character when the
    run has one.

    :raises JobSkipped: at run time, when no such token is stored.
    """
    return _decorator(scopes, new, _every_token)


def single_use_token(scopes: ScopeArg = "", new: bool = False) -> Any:
    """Call the job function with one token, refreshed now, for this call only.

    django-esi deletes a single-use token after the view; the worker never
    deletes a working grant, so the token stays stored but the function
    must not keep it beyond the call.
    """
    return _decorator(scopes, new, _fresh_token)


def scopes_of(func: Any) -> tuple[str, ...]:
    """The scopes the token decorators attached to ``func``."""
    return tuple(getattr(func, SCOPES_ATTRIBUTE, ()))


def _decorator(scopes: ScopeArg, new: bool, pick: Callable[..., Any]) -> Any:
    if callable(scopes):  # used bare: @token_required
        return _decorator("", new, pick)(scopes)
    try:
        names = normalize_scopes(scopes or None)
    except ScopeError as exc:
        raise JobDefinitionError(f"token decorator: {exc}") from None

    def decorate(func: Decorated) -> Decorated:
        @functools.wraps(func)
        def run(ctx: JobContext) -> Any:
            return func(ctx, pick(ctx, names, new))

        setattr(run, SCOPES_ATTRIBUTE, tuple(sorted({*scopes_of(func), *names})))
        return run

    return decorate


def _candidates(ctx: JobContext, scopes: tuple[str, ...], new: bool) -> TokenQuery:
    """The valid tokens to pass; none is refreshed before it is read."""
    query: TokenQuery = ctx.runtime.tokens.query().require_scopes(scopes)
    if ctx.character_id is not None:
        query = query.filter(character_id=ctx.character_id)
    since = _last_success(ctx) if new else None
    if since is not None:
        # Chosen by when they were stored, before any is refreshed.
        query = query.filter(id=[t.id for t in query if t.created > since])
    return query.require_valid()


def _first_token(ctx: JobContext, scopes: tuple[str, ...], new: bool) -> Token:
    token = ctx.token
    if token is not None and set(scopes) <= set(token.scopes) and not new:
        return token
    # first(): only the tokens tried until one works are refreshed.
    found = _candidates(ctx, scopes, new).first()
    if found is None:
        raise JobSkipped(f"no {'new ' if new else ''}valid token holds {list(scopes)}")
    ctx.remember(found)
    return found


def _every_token(ctx: JobContext, scopes: tuple[str, ...], new: bool) -> list[Token]:
    found = list(_candidates(ctx, scopes, new))
    if not found:
        raise JobSkipped(f"no {'new ' if new else ''}valid token holds {list(scopes)}")
    ctx.remember(*found)
    return found


def _fresh_token(ctx: JobContext, scopes: tuple[str, ...], new: bool) -> Token:
    token = _first_token(ctx, scopes, new)
    token.valid_access_token()  # refreshes now if it is close to expiry
    return token


def _last_success(ctx: JobContext) -> Any:
    """When the job last succeeded, for the run's character or corporation if any."""
    where = "job = %s AND outcome = 'success'"
    params: list[Any] = [ctx.job.name]
    if ctx.character_id is not None:
        where, params = f"{where} AND character_id = %s", [*params, ctx.character_id]
    elif ctx.corporation_id is not None:
        where, params = (
            f"{where} AND corporation_id = %s",
            [*params, ctx.corporation_id],
        )
    with ctx.connection() as conn:
        row = conn.execute(
            f"SELECT max(started) FROM esi_job_run WHERE {where}", params
        ).fetchone()
    return row[0] if row else None
