"""Job plugins found through entry points, loaded lazily by name.

A job name belongs to one package. When two packages register the same
name, neither is loaded and both are reported, so no plugin silently
takes the place of another; a plugin that takes a built-in job's name is
reported and the built-in job is kept.
"""

from __future__ import annotations

import difflib
import functools
import logging
import threading
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, JobDefinitionError, JobError, UnknownJobError
from .declaration import Job
from .redaction import error_text
from .roles import bundled_swagger

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "esi_worker.jobs"
# The distribution whose entry points are the built-in jobs.
BUILT_IN_DISTRIBUTION = "esi-worker"
# The one scope name ESI ever had without the ``esi-`` form.
_LEGACY_SCOPES = frozenset({"publicData"})


class JobRegistry:
    """Jobs found through entry points, loaded lazily by name.

    A plugin that fails to import, declares an invalid schedule or an
    unknown scope is reported with its name and the reason; the other
    plugins are not affected.
    """

    def __init__(
        self,
        group: str = ENTRY_POINT_GROUP,
        extra: Iterable[Job] = (),
        *,
        known_scopes: Iterable[str] | None = None,
    ) -> None:
        self._group = group
        self._lock = threading.Lock()
        self._loaded: dict[str, Job] = {job.name: job for job in extra}
        self._known_scopes = (
            frozenset(known_scopes) if known_scopes is not None else esi_scopes()
        )

    def names(self) -> list[str]:
        """Every registered job name, loaded or not."""
        return sorted(set(self._entry_points()) | set(self._loaded))

    def get(self, name: str) -> Job:
        """The job registered as ``name``.

        :raises UnknownJobError: when no such job is registered.
        :raises JobDefinitionError: when several packages register ``name``.
        :raises JobError: when the plugin fails to load.
        """
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        entries = self._entry_points().get(name)
        if not entries:
            known = ", ".join(self.names()) or "none"
            raise UnknownJobError(f"no job named {name!r} (registered: {known})")
        loaded = self._load(self._owner(name, entries))
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def source(self, name: str) -> str:
        """The distribution (package) a job comes from, or its module."""
        entries = self._entry_points().get(name)
        entry = _built_in(entries) if entries else None
        entry = entry or (entries[0] if entries and len(entries) == 1 else None)
        if entry is not None and entry.dist is not None:
            return f"{entry.dist.name} {entry.dist.version}"
        job = self._loaded.get(name)
        return job.source if job is not None else ""

    def load_all(self) -> tuple[dict[str, Job], dict[str, str]]:
        """Load every job; returns the jobs and, per failed plugin, the reason.

        A plugin that registers a built-in job's name is in both: the job
        is the built-in one, the failure names the plugin's package.
        """
        jobs: dict[str, Job] = {}
        failures: dict[str, str] = {}
        for name in self.names():
            try:
                jobs[name] = self.get(name)
            except JobError as exc:
                failures[name] = str(exc)
                log.error("job plugin %r is broken: %s", name, exc, extra={"job": name})
        for name, reason in self._shadowing().items():
            failures[name] = reason
            log.error("job plugin %r is broken: %s", name, reason, extra={"job": name})
        return jobs, failures

    def _entry_points(self) -> dict[str, list[EntryPoint]]:
        found: dict[str, list[EntryPoint]] = {}
        for entry in entry_points(group=self._group):
            same = found.setdefault(entry.name, [])
            # One distribution seen twice on sys.path registers nothing twice.
            if all(_origin(entry) != _origin(other) for other in same):
                same.append(entry)
        return found

    def _owner(self, name: str, entries: list[EntryPoint]) -> EntryPoint:
        if len(entries) == 1:
            return entries[0]
        built_in = _built_in(entries)
        if built_in is not None:
            return built_in
        raise JobDefinitionError(
            f"job name {name!r} is registered by several packages: "
            f"{_packages(entries)}; none of them is loaded (uninstall one, "
            "or rename its entry point)"
        )

    def _shadowing(self) -> dict[str, str]:
        """Plugins registering a built-in job's name, with the reason."""
        reasons = {}
        for name, entries in self._entry_points().items():
            built_in = _built_in(entries)
            others = [e for e in entries if e is not built_in]
            if built_in is not None and others:
                reasons[name] = (
                    f"job name {name!r} of {_packages(others)} is a built-in "
                    f"job of esi-worker; the plugin's job is not loaded and "
                    "the built-in one is kept (rename the plugin's entry point)"
                )
        return reasons

    def _load(self, entry: EntryPoint) -> Job:
        try:
            obj = entry.load()
        except JobDefinitionError as exc:
            raise JobDefinitionError(f"job plugin {entry.name!r}: {exc}") from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            # A plugin may fail in any way, SystemExit included; it is
            # reported by name and must not stop the worker.
            raise JobError(
                f"job plugin {entry.name!r} ({entry.value}) failed to import: "
                f"{error_text(exc)}"
            ) from exc
        if not isinstance(obj, Job):
            raise JobDefinitionError(
                f"job plugin {entry.name!r} ({entry.value}) is a "
                f"{type(obj).__name__}, not a Job made with @job"
            )
        self._check_scopes(entry, obj)
        # The entry-point name is the one operators see and configure.
        return obj if obj.name == entry.name else obj.renamed(entry.name)

    def _check_scopes(self, entry: EntryPoint, job: Job) -> None:
        unknown = sorted(set(job.token_scopes) - self._known_scopes)
        if unknown:
            raise JobDefinitionError(
                f"job plugin {entry.name!r} ({entry.value}) declares unknown "
                f"scope(s) {', '.join(unknown)}: ESI grants no such scope"
            )


def check_job_names(settings: Settings, registry: JobRegistry) -> None:
    """Refuse a job name in the settings that no job is registered as.

    A typo in ``ESI_WORKER_JOB_INTERVALS`` would otherwise leave the job
    on its default interval, and one in ``ESI_WORKER_DISABLED_JOBS`` the
    job running, without a word. Broken plugins count as registered.

    :raises ConfigurationError: naming each unknown name and the known ones.
    """
    known = registry.names()
    problems = [
        f"{setting} names {_unknown(names, known)}"
        for setting, names in (
            ("ESI_WORKER_JOB_INTERVALS", settings.job_intervals),
            ("ESI_WORKER_DISABLED_JOBS", settings.disabled_jobs),
        )
        if set(names) - set(known)
    ]
    if problems:
        raise ConfigurationError(
            f"{'; '.join(problems)} (registered jobs: {', '.join(known) or 'none'})"
        )


@functools.cache
def esi_scopes() -> frozenset[str]:
    """Every scope named by the bundled ESI specs (Swagger and OpenAPI)."""
    import json

    # Read by path: importing ``worker.esi`` would load bravado (seconds).
    specs = Path(__file__).resolve().parent.parent / "esi" / "specs"
    swagger = bundled_swagger()
    openapi = json.loads((specs / "openapi-sample.json").read_text(encoding="utf-8"))
    names = set(swagger["securityDefinitions"]["evesso"]["scopes"])
    for scheme in openapi.get("components", {}).get("securitySchemes", {}).values():
        for flow in scheme.get("flows", {}).values():
            names.update(flow.get("scopes", {}))
    return frozenset(names | _LEGACY_SCOPES)


def _unknown(names: Iterable[str], known: list[str]) -> str:
    """``'nosuch', 'market_order' (did you mean 'market_orders'?)``."""
    shown = []
    for name in sorted(set(names) - set(known)):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown.append(f"{name!r}{hint}")
    noun = "an unknown job" if len(shown) == 1 else "unknown jobs"
    return f"{noun}: {', '.join(shown)}"


def _origin(entry: EntryPoint) -> tuple[str, str]:
    dist = entry.dist.name if entry.dist is not None else ""
    return _normalized(dist), entry.value


def _built_in(entries: list[EntryPoint]) -> EntryPoint | None:
    return next(
        (e for e in entries if _origin(e)[0] == _normalized(BUILT_IN_DISTRIBUTION)),
        None,
    )


def _packages(entries: list[EntryPoint]) -> str:
    return ", ".join(
        f"package {e.dist.name} {e.dist.version} ({e.value})"
        if e.dist is not None
        else f"({e.value})"
        for e in entries
    )


def _normalized(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")
