"""Who a job runs for: the subjects of each fan-out, and the token of a run.

Per-corporation jobs need a token of a member with the scopes and, when
the job needs corporation roles (declared, or required by its routes in
the spec), with those roles in the game. The corporation of a character
comes from ESI's public character route and the roles from
``get_characters_character_id_roles`` (scope
``esi-characters.read_corporation_roles.v1``); both answers go through the
ESI response cache, so a fan-out over many members costs few requests.
A corporation none of whose members holds the roles is not a subject.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ESIError, JobSkipped, SSOError, TokenError
from .declaration import FanOut, Job
from .records import PlannedRun
from .roles import roles_cover

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..tokens import Token, TokenQuery

log = logging.getLogger(__name__)

ONCE_SUBJECT = 0
# A template's due time; the scheduler replaces it with the real one.
_UNSET = dt.datetime.min.replace(tzinfo=dt.UTC)


def subjects(runtime: Runtime, job: Job) -> dict[int, PlannedRun]:
    """Every subject ``job`` runs for now, as a run template (due unset)."""
    if job.fan_out is FanOut.ONCE:
        return {ONCE_SUBJECT: _template(ONCE_SUBJECT)}
    tokens = _scoped_ids(runtime, job)
    if job.fan_out is FanOut.PER_TOKEN:
        return {t: _template(t, character_id=c) for t, c in tokens}
    if job.fan_out is FanOut.PER_CHARACTER:
        ids = {c for _, c in tokens}
        return {c: _template(c, character_id=c) for c in sorted(ids)}
    if job.role_sets:
        corporations = _corporations_with_roles(runtime, job)
    else:
        found = {corporation_of(runtime, c) for c in {c for _, c in tokens}}
        corporations = sorted(c for c in found if c is not None)
    return {c: _template(c, corporation_id=c) for c in corporations}


def adhoc_runs(
    runtime: Runtime, job: Job, character_id: int | None = None
) -> list[PlannedRun]:
    """The runs of a job run by hand: for ``character_id``, or for every subject.

    For a character: its run (per character), one per token of it (per
    token) or its corporation's run made with its token (per corporation).

    :raises JobSkipped: when there is nobody to run for, with the reason.
    """
    if job.fan_out is FanOut.ONCE:
        if character_id is not None and not _has_token(runtime, job, character_id):
            raise JobSkipped(
                f"character {character_id} has no valid token"
                + (f" holding {list(job.token_scopes)}" if job.token_scopes else "")
                + "; nothing was run"
            )
        return [_template(ONCE_SUBJECT, character_id=character_id)]
    if character_id is None:
        runs = list(subjects(runtime, job).values())
        if not runs:
            raise JobSkipped(f"job {job.name!r}: {_nobody(job)}; nothing was run")
        return runs

    tokens = [t for t, c in _scoped_ids(runtime, job) if c == character_id]
    if not tokens:
        raise JobSkipped(
            f"character {character_id} has no valid token holding "
            f"{list(job.token_scopes)}; nothing was run"
        )
    if job.fan_out is FanOut.PER_TOKEN:
        return [_template(t, character_id=character_id) for t in tokens]
    if job.fan_out is FanOut.PER_CHARACTER:
        return [_template(character_id, character_id=character_id)]
    corporation = corporation_of(runtime, character_id)
    if corporation is None:
        raise JobSkipped(
            f"the corporation of character {character_id} is unknown "
            "(ESI did not say); nothing was run"
        )
    return [
        _template(corporation, corporation_id=corporation, character_id=character_id)
    ]


def token_for(
    runtime: Runtime,
    job: Job,
    subject: int,
    character_id: int | None,
    corporation_id: int | None,
) -> Token | None:
    """The token of one run, looked up now; ``None`` for runs without one.

    :raises JobSkipped: when no usable token is left for the subject.
    """
    if job.fan_out is FanOut.PER_TOKEN:
        token = runtime.tokens.get(subject)
        if (
            token is None
            or token.state != "valid"
            or not set(job.scopes) <= set(token.scopes)
        ):
            raise JobSkipped(f"token {subject} is gone, dead or lacks {job.scopes}")
        return token
    if job.fan_out is FanOut.PER_CORPORATION and corporation_id is not None:
        return member_token(runtime, job, corporation_id, character_id)
    if character_id is None or not job.scopes:
        return None
    query = runtime.tokens.query().filter(character_id=character_id)
    token = query.require_scopes(job.scopes).require_valid().first()
    if token is None:
        raise JobSkipped(
            f"no valid token of character {character_id} holds {job.scopes}"
        )
    return token


def member_token(
    runtime: Runtime, job: Job, corporation_id: int, character_id: int | None = None
) -> Token:
    """The first token of a member of the corporation with the scopes and roles.

    :param character_id: only this member (a run made by hand for it).
    :raises JobSkipped: when no member qualifies.
    """
    tokens = _scoped(runtime, job)
    if character_id is not None:
        tokens = tokens.filter(character_id=character_id)
    for token in tokens:
        if corporation_of(runtime, token.character_id) != corporation_id:
            continue
        if has_roles(token, job.role_sets):
            return token
    if character_id is not None:
        raise JobSkipped(
            f"character {character_id} of corporation {corporation_id} has no "
            f"valid token with {job.token_scopes} and the roles "
            f"{_describe_roles(job)}"
        )
    raise JobSkipped(
        f"no member of corporation {corporation_id} has a valid token with "
        f"{job.token_scopes} and the roles {_describe_roles(job)}"
    )


def corporation_of(runtime: Runtime, character_id: int) -> int | None:
    """The character's corporation, from ESI's public character route."""
    operation = runtime.esi.client.Character.get_characters_character_id
    try:
        data = operation(character_id=character_id).result()
    except ESIError as exc:
        log.warning(
            "corporation of character %r unknown: %s",
            character_id,
            exc,
            extra={"character_id": character_id},
        )
        return None
    return int(_field(data, "corporation_id"))


def has_roles(token: Token, roles: Iterable[str] | Iterable[frozenset[str]]) -> bool:
    """True when the token's character holds the roles.

    :param roles: role names, all needed; or sets of names, one of each needed.
    """
    needed = [frozenset({r}) if isinstance(r, str) else r for r in roles]
    if not needed:
        return True
    client = token.get_esi_client()
    operation = client.Character.get_characters_character_id_roles
    try:
        data = operation(character_id=token.character_id).result()
    except (ESIError, TokenError, SSOError) as exc:
        # A member whose grant died or cannot be refreshed now is passed
        # over: another member of the corporation may still qualify.
        log.warning(
            "roles of character %r unknown: %s",
            token.character_id,
            exc,
            extra={"character_id": token.character_id},
        )
        return False
    return roles_cover(_field(data, "roles") or (), needed)


def roles_satisfy(held: Iterable[str], needed: Iterable[str]) -> bool:
    """Whether ``held`` covers ``needed``; a Director holds every role in game."""
    return roles_cover(held, [{role} for role in needed])


def _corporations_with_roles(runtime: Runtime, job: Job) -> list[int]:
    """The corporations with a member who holds the job's roles, or may.

    Planning never refreshes a token to look at it: a member whose access
    token has expired may qualify, and the run (which refreshes) decides.
    """
    qualifying: set[int] = set()
    for token in _scoped(runtime, job):
        corporation = corporation_of(runtime, token.character_id)
        if corporation is None or corporation in qualifying:
            continue
        if token.expired or has_roles(token, job.role_sets):
            qualifying.add(corporation)
    return sorted(qualifying)


def _describe_roles(job: Job) -> list[str]:
    return [" or ".join(sorted(choice)) for choice in job.role_sets]


def _nobody(job: Job) -> str:
    if job.fan_out is FanOut.PER_CORPORATION and job.role_sets:
        return (
            f"no corporation has a member with a valid token holding "
            f"{list(job.token_scopes)} and the roles {_describe_roles(job)}"
        )
    return f"no valid token holds {list(job.token_scopes)}"


def _scoped(runtime: Runtime, job: Job) -> TokenQuery:
    # Only tokens in state valid are seen; none is refreshed just to be
    # looked at (a thousand characters would mean a thousand SSO calls).
    # Oldest token first, so "the first member" is the same on every run.
    return runtime.tokens.query().require_scopes(job.token_scopes).order_by("id")


def _has_token(runtime: Runtime, job: Job, character_id: int) -> bool:
    query = runtime.tokens.query().filter(character_id=character_id)
    if job.token_scopes:
        query = query.require_scopes(job.token_scopes)
    return query.exists()


def _scoped_ids(runtime: Runtime, job: Job) -> list[tuple[int, int]]:
    """``(token id, character id)`` of valid tokens holding the job's scopes.

    Read straight from the token tables: planning needs ids only, and
    building tokens would decrypt every secret on every tick.
    """
    scopes = list(job.token_scopes)
    with runtime.pool.connection() as conn:
        rows = conn.execute(_SCOPED_IDS, (scopes, len(scopes))).fetchall()
    return [(int(token_id), int(character_id)) for token_id, character_id in rows]


_SCOPED_IDS = (
    "SELECT t.id, t.character_id FROM esi_token t"
    " JOIN esi_token_scope ts ON ts.token_id = t.id"
    " JOIN esi_scope s ON s.id = ts.scope_id"
    " WHERE t.state = 'valid' AND s.name = ANY(%s)"
    " GROUP BY t.id HAVING count(*) = %s ORDER BY t.id"
)


def _template(subject: int, **ids: Any) -> PlannedRun:
    return PlannedRun(subject=subject, due=_UNSET, **ids)


def _field(data: Any, name: str) -> Any:
    return data[name] if isinstance(data, dict) else getattr(data, name)
