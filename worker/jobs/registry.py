"""Job plugins found through entry points, loaded lazily by name."""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from ..errors import JobDefinitionError, JobError, UnknownJobError
from .declaration import Job

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "esi_worker.jobs"
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
        :raises JobError: when the plugin fails to load.
        """
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        entry = self._entry_points().get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownJobError(f"no job named {name!r} (registered: {known})")
        loaded = self._load(entry)
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def source(self, name: str) -> str:
        """The distribution (package) a job comes from, or its module."""
        entry = self._entry_points().get(name)
        if entry is not None and entry.dist is not None:
            return f"{entry.dist.name} {entry.dist.version}"
        job = self._loaded.get(name)
        return job.source if job is not None else ""

    def load_all(self) -> tuple[dict[str, Job], dict[str, str]]:
        """Load every job; returns the jobs and, per failed plugin, the reason."""
        jobs: dict[str, Job] = {}
        failures: dict[str, str] = {}
        for name in self.names():
            try:
                jobs[name] = self.get(name)
            except JobError as exc:
                failures[name] = str(exc)
                log.error("job plugin %r is broken: %s", name, exc, extra={"job": name})
        return jobs, failures

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self._group)}

    def _load(self, entry: EntryPoint) -> Job:
        try:
            obj = entry.load()
        except JobDefinitionError as exc:
            raise JobDefinitionError(f"job plugin {entry.name!r}: {exc}") from exc
        except Exception as exc:  # a plugin may fail in any way; report it by name
            raise JobError(
                f"job plugin {entry.name!r} ({entry.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
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


@functools.cache
def esi_scopes() -> frozenset[str]:
    """Every scope named by the bundled ESI specs (Swagger and OpenAPI)."""
    # Read by path: importing ``worker.esi`` would load bravado (seconds).
    specs = Path(__file__).resolve().parent.parent / "esi" / "specs"
    swagger = json.loads((specs / "swagger.json").read_text(encoding="utf-8"))
    openapi = json.loads((specs / "openapi-sample.json").read_text(encoding="utf-8"))
    names = set(swagger["securityDefinitions"]["evesso"]["scopes"])
    for scheme in openapi.get("components", {}).get("securitySchemes", {}).values():
        for flow in scheme.get("flows", {}).values():
            names.update(flow.get("scopes", {}))
    return frozenset(names | _LEGACY_SCOPES)
