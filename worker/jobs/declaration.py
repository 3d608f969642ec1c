"""What a job declares: name, scopes, fan-out, schedule, timeout, retries."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import JobDefinitionError, ScopeError
from ..scopes import normalize_scopes
from .decorators import scopes_of
from .schedule import Schedule

if TYPE_CHECKING:
    from .context import JobContext

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# ESI's corporation roles (``x-required-roles`` in the swagger spec).
ROLES_SCOPE = "esi-characters.read_corporation_roles.v1"


class FanOut(enum.StrEnum):
    """How one due tick becomes runs."""

    ONCE = "once"
    PER_TOKEN = "per_token"
    PER_CHARACTER = "per_character"
    PER_CORPORATION = "per_corporation"


@dataclass(frozen=True)
class Job:
    """A job's declaration: what it needs, when it runs, how it fans out.

    ``jitter_s`` is the window over which runs are spread, stable per
    character: the whole period for interval schedules when left at 0,
    nothing for cron schedules when left at 0.
    """

    name: str
    func: Callable[[JobContext], Any]
    scopes: tuple[str, ...] = ()
    fan_out: FanOut = FanOut.ONCE
    interval_s: float = 3600.0
    cron: str | None = None
    jitter_s: float = 0.0
    timeout_s: float = 600.0
    max_retries: int = 0
    retry_backoff_s: float = 60.0
    roles: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    follow_expiry: bool = False
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise JobDefinitionError(
                f"job name {self.name!r} is not a plain identifier"
            )
        if self.interval_s <= 0:
            raise JobDefinitionError(f"job {self.name!r}: interval must be positive")
        if not 0 <= self.jitter_s <= max(self.interval_s, 86400.0 if self.cron else 0):
            raise JobDefinitionError(
                f"job {self.name!r}: jitter must be between 0 and the interval"
            )
        if self.timeout_s <= 0:
            raise JobDefinitionError(f"job {self.name!r}: timeout must be positive")
        self._check_policy()
        self.schedule()  # an invalid cron expression fails here, by job name

    def __call__(self, ctx: JobContext) -> Any:
        return self.func(ctx)

    @property
    def token_scopes(self) -> tuple[str, ...]:
        """The scopes a token must hold for this job (roles need one more)."""
        if self.roles and ROLES_SCOPE not in self.scopes:
            return tuple(sorted((*self.scopes, ROLES_SCOPE)))
        return self.scopes

    def schedule(self, interval_s: float | None = None) -> Schedule:
        """The job's schedule; ``interval_s`` overrides the declared interval.

        :raises JobDefinitionError: for an invalid cron expression.
        """
        try:
            return Schedule(
                interval_s=interval_s or self.interval_s,
                cron=self.cron,
                jitter_s=self.jitter_s,
            )
        except ValueError as exc:
            raise JobDefinitionError(f"job {self.name!r}: {exc}") from None

    def renamed(self, name: str) -> Job:
        """The same job under another name (the entry point's)."""
        return replace(self, name=name)

    def _check_policy(self) -> None:
        if self.max_retries < 0 or self.retry_backoff_s < 0:
            raise JobDefinitionError(
                f"job {self.name!r}: retries and their backoff must not be negative"
            )
        if self.fan_out is not FanOut.ONCE and not self.scopes:
            raise JobDefinitionError(
                f"job {self.name!r}: fan-out {self.fan_out} needs scopes "
                "to select tokens"
            )
        if self.roles and self.fan_out is not FanOut.PER_CORPORATION:
            raise JobDefinitionError(
                f"job {self.name!r}: roles only apply to the per_corporation fan-out"
            )


def job(
    name: str | None = None,
    *,
    scopes: str | Iterable[str] | None = None,
    fan_out: FanOut | str = FanOut.ONCE,
    every: float | dt.timedelta = 3600.0,
    cron: str | None = None,
    jitter: float | dt.timedelta = 0.0,
    timeout: float | dt.timedelta = 600.0,
    retries: int = 0,
    retry_backoff: float | dt.timedelta = 60.0,
    roles: Iterable[str] = (),
    routes: Iterable[str] = (),
    follow_expiry: bool = False,
) -> Callable[[Callable[[JobContext], Any]], Job]:
    """Declare a job; the decorated function receives a :class:`JobContext`.

    :param every: the interval of an interval schedule.
    :param cron: a crontab line (UTC); replaces ``every`` when given.
    :param jitter: the window runs are spread over, stable per character.
    :param roles: corporation roles a member needs (``per_corporation``).
    :param routes: the ESI paths the job calls; a run is deferred while the
        status endpoint reports one of them down.
    :param follow_expiry: never run again before the data the last run
        read from ESI can have changed (its ``Expires`` header).
    :raises JobDefinitionError: for an invalid schedule, fan-out or scope.
    """

    def decorate(func: Callable[[JobContext], Any]) -> Job:
        label: str = name or str(getattr(func, "__name__", "?"))
        try:
            declared = normalize_scopes(scopes)
            scope_names = tuple(sorted({*declared, *scopes_of(func)}))
            mode = FanOut(fan_out)
        except (ScopeError, ValueError) as exc:
            raise JobDefinitionError(f"job {label!r}: {exc}") from None
        return Job(
            name=label,
            func=func,
            scopes=scope_names,
            fan_out=mode,
            interval_s=_seconds(every),
            cron=cron,
            jitter_s=_seconds(jitter),
            timeout_s=_seconds(timeout),
            max_retries=retries,
            retry_backoff_s=_seconds(retry_backoff),
            roles=tuple(sorted(set(roles))),
            routes=tuple(routes),
            follow_expiry=follow_expiry,
            description=_first_line(func.__doc__),
            source=getattr(func, "__module__", "") or "",
        )

    return decorate


def _seconds(value: float | dt.timedelta) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
