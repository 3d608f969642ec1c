"""What a job declares: name, scopes, fan-out, schedule, timeout, retries."""

from __future__ import annotations

import datetime as dt
import enum
import math
import numbers
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import JobDefinitionError, ScopeError
from ..scopes import normalize_scopes
from .decorators import scopes_of
from .roles import known_roles, route_roles
from .schedule import MIN_INTERVAL_S, Schedule, schedule_of

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
    subject. Left at 0 it is the whole period for interval schedules, the
    smallest gap between two fire times for cron schedules of fan-out
    jobs, and nothing for cron schedules of once-jobs. Durations are
    finite seconds; the interval and the timeout are at least 1 s.
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
        if not callable(self.func):
            raise JobDefinitionError(
                f"job {self.name!r}: func must be callable, "
                f"got {type(self.func).__name__}"
            )
        self._normalize()
        self._check_durations()
        self._check_policy()
        self._check_roles()
        schedule = self.schedule()  # an invalid cron line fails here, by job name
        if self.jitter_s > schedule.period_s:
            raise JobDefinitionError(
                f"job {self.name!r}: jitter must be between 0 and the period "
                f"({schedule.period_s:g} s), got {self.jitter_s:g} s"
            )

    def __call__(self, ctx: JobContext) -> Any:
        return self.func(ctx)

    @property
    def role_sets(self) -> tuple[frozenset[str], ...]:
        """What a member must hold for a per-corporation run: one role of each set.

        Each declared role is a set of its own (all are needed); each route
        with ``x-required-roles`` in the spec adds its list (one is enough).
        """
        if self.fan_out is not FanOut.PER_CORPORATION:
            return ()
        declared = tuple(frozenset({role}) for role in self.roles)
        return declared + route_roles(self.routes)

    @property
    def token_scopes(self) -> tuple[str, ...]:
        """The scopes a token must hold for this job (roles need one more)."""
        if self.role_sets and ROLES_SCOPE not in self.scopes:
            return tuple(sorted((*self.scopes, ROLES_SCOPE)))
        return self.scopes

    def schedule(self, interval_s: float | None = None) -> Schedule:
        """The job's schedule; ``interval_s`` overrides the declared interval.

        :raises JobDefinitionError: for an invalid cron line or override.
        """
        try:
            return schedule_of(
                interval_s or self.interval_s,
                self.cron,
                self.jitter_s,
                spread_cron=self.fan_out is not FanOut.ONCE,
            )
        except ValueError as exc:
            raise JobDefinitionError(f"job {self.name!r}: {exc}") from None

    def renamed(self, name: str) -> Job:
        """The same job under another name (the entry point's)."""
        return replace(self, name=name)

    def _normalize(self) -> None:
        # A Job may be built directly, not only through @job: same checks.
        try:
            fan_out = FanOut(self.fan_out)
            scopes = normalize_scopes(self.scopes or None)
        except (ScopeError, ValueError) as exc:
            raise JobDefinitionError(f"job {self.name!r}: {exc}") from None
        object.__setattr__(self, "fan_out", fan_out)
        object.__setattr__(self, "scopes", scopes)
        object.__setattr__(self, "roles", _names(self.name, "roles", self.roles))
        object.__setattr__(self, "routes", _names(self.name, "routes", self.routes))
        if self.cron is not None and not isinstance(self.cron, str):
            raise JobDefinitionError(
                f"job {self.name!r}: cron must be a crontab line, got {self.cron!r}"
            )
        if not isinstance(self.follow_expiry, bool):
            raise JobDefinitionError(
                f"job {self.name!r}: follow_expiry must be True or False"
            )

    def _check_durations(self) -> None:
        _check_seconds(self.name, "interval", self.interval_s, MIN_INTERVAL_S)
        _check_seconds(self.name, "timeout", self.timeout_s, 1.0)
        _check_seconds(self.name, "jitter", self.jitter_s, 0.0, zero=True)
        _check_seconds(self.name, "retry backoff", self.retry_backoff_s, 0.0, zero=True)
        retries = self.max_retries
        if (
            not isinstance(retries, numbers.Integral)
            or isinstance(retries, bool)
            or retries < 0
        ):
            raise JobDefinitionError(
                f"job {self.name!r}: retries must be a whole number, "
                f"not negative, got {retries!r}"
            )

    def _check_policy(self) -> None:
        if self.fan_out is not FanOut.ONCE and not self.scopes:
            raise JobDefinitionError(
                f"job {self.name!r}: fan-out {self.fan_out} needs scopes "
                "to select tokens"
            )
        if self.roles and self.fan_out is not FanOut.PER_CORPORATION:
            raise JobDefinitionError(
                f"job {self.name!r}: roles only apply to the per_corporation fan-out"
            )

    def _check_roles(self) -> None:
        if not self.roles:
            return
        unknown = sorted(set(self.roles) - known_roles())
        if unknown:
            raise JobDefinitionError(
                f"job {self.name!r}: unknown corporation role(s) "
                f"{', '.join(unknown)}: ESI names no such role"
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
    roles: str | Iterable[str] = (),
    routes: str | Iterable[str] = (),
    follow_expiry: bool = False,
) -> Callable[[Callable[[JobContext], Any]], Job]:
    """Declare a job; the decorated function receives a :class:`JobContext`.

    :param every: the interval of an interval schedule (at least 1 s).
    :param cron: a crontab line (UTC); replaces ``every`` when given. It
        must fire at some time (``0 0 31 2 *`` never does).
    :param jitter: the window runs are spread over, stable per subject.
    :param timeout: seconds a run may take; past it the run is stopped
        and recorded as failed.
    :param roles: corporation roles a member needs, all of them
        (``per_corporation``); the ``x-required-roles`` of ``routes`` are
        added from the spec, one role of each route's list being enough.
    :param routes: the ESI paths the job calls; a run is deferred while the
        status endpoint reports one of them down.
    :param follow_expiry: never run again before the data the last run
        read from ESI can have changed (its ``Expires`` header).
    :raises JobDefinitionError: for an invalid schedule, fan-out, scope,
        duration, retry count, role, or something that is not a function.
    """

    def decorate(func: Callable[[JobContext], Any]) -> Job:
        label: str = name or str(getattr(func, "__name__", "?"))
        if not callable(func):
            raise JobDefinitionError(
                f"job {label!r}: @job decorates a function, got {type(func).__name__}"
            )
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
            interval_s=_seconds(label, "interval", every),
            cron=cron,
            jitter_s=_seconds(label, "jitter", jitter),
            timeout_s=_seconds(label, "timeout", timeout),
            max_retries=retries,
            retry_backoff_s=_seconds(label, "retry backoff", retry_backoff),
            roles=tuple(sorted(set(_names(label, "roles", roles)))),
            routes=_names(label, "routes", routes),
            follow_expiry=follow_expiry,
            description=_first_line(func.__doc__),
            source=getattr(func, "__module__", "") or "",
        )

    return decorate


def _seconds(label: str, what: str, value: Any) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise JobDefinitionError(
            f"job {label!r}: {what} must be a number of seconds or a "
            f"timedelta, got {value!r}"
        )
    return float(value)


def _check_seconds(
    label: str, what: str, value: Any, minimum: float, *, zero: bool = False
) -> None:
    seconds = _seconds(label, what, value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise JobDefinitionError(
            f"job {label!r}: {what} must be a finite number of seconds, got {value!r}"
        )
    if seconds < 0 or (seconds == 0 and not zero):
        rule = "not be negative" if zero else "be positive"
        raise JobDefinitionError(
            f"job {label!r}: {what} must {rule}, got {seconds:g} s"
        )
    if 0 < seconds < minimum:
        raise JobDefinitionError(
            f"job {label!r}: {what} must be at least {minimum:g} s, got {seconds:g} s"
        )


def _names(label: str, what: str, value: Any) -> tuple[str, ...]:
    # One string is one name: "Accountant" must not become its letters.
    items = (value,) if isinstance(value, str) else value
    try:
        names = tuple(items)
    except TypeError:
        raise JobDefinitionError(
            f"job {label!r}: {what} must be a list of names, got {value!r}"
        ) from None
    if not all(isinstance(item, str) and item.strip() for item in names):
        raise JobDefinitionError(
            f"job {label!r}: {what} must be non-empty strings, got {value!r}"
        )
    return tuple(item.strip() for item in names)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
