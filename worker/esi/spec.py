"""Loading the ESI spec from its sources, built once per process and source.

Sources, in order: an explicit ``spec_file`` (Swagger 2.0 or OpenAPI
3.x); ESI's live OpenAPI spec for the configured compatibility date; the
legacy ``/{version}/swagger.json``; the snapshot bundled in ``specs/``.
An OpenAPI spec is converted (:mod:`worker.esi.openapi`); fetched specs
are kept converted by :class:`~worker.esi.specstore.SpecStore`, and the
built :class:`bravado_core.spec.Spec` is shared by every client made in
the process afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from bravado.config import bravado_config_from_config_dict
from bravado_core.resource import build_resources
from bravado_core.spec import Spec, build_api_serving_url
from bravado_core.swagger20_validator import get_validator_type

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, SpecError
from .openapi import is_openapi, to_swagger
from .refs import check_refs
from .specstore import SpecStore, StoredSpec

if TYPE_CHECKING:
    import redis

    from ..settings import Settings

log = logging.getLogger(__name__)

BUNDLED_SPEC = Path(__file__).parent / "specs" / "swagger.json"
DEFAULT_VERSION = "latest"
FAILED_SOURCE_QUIET_S = 60.0
FETCH_TIMEOUT_S = 15.0
CONVERSION = "converted"
"""The spec-cache "date" of converted spec files (conversion needs none)."""

SPEC_CONFIG: dict[str, Any] = {
    "use_models": False,
    "validate_responses": False,
    "validate_swagger_spec": False,
    "validate_requests": True,
}
BRAVADO_CONFIG: dict[str, Any] = {
    "also_return_response": False,
    "sensitive_headers": ["Authorization"],
}

_VERSION_RE = re.compile(r"^(latest|legacy|dev|v[1-9][0-9]*)$")
_built: dict[tuple[Any, ...], tuple[Any, Spec, float]] = {}
_failed: dict[str, tuple[float, str]] = {}
_redis_clients: dict[str, redis.Redis] = {}
_build_lock = threading.RLock()


@dataclasses.dataclass(frozen=True)
class SpecSource:
    """One place a spec can come from: ``file``, ``openapi``, ``swagger``, ``bundled``."""

    kind: str
    location: str

    def __str__(self) -> str:
        return f"{self.kind} {self.location}"


class LeanSpec(Spec):
    """A bravado spec that skips model discovery when models are off.

    Discovery walks every schema of the spec to make model classes: about
    0.65 s of the 0.7 s a full ESI spec takes to build, for classes the
    client never uses (``use_models`` is off, answers stay plain JSON).
    """

    plain_json = True
    esi_versioned = False

    def build(self) -> None:
        if self.config["use_models"]:
            super().build()
            return
        self._validate_spec()
        for user_defined_format in self.config["formats"]:
            self.register_format(user_defined_format)
        self.resources = build_resources(self)
        self.api_url = build_api_serving_url(
            spec_dict=self.spec_dict,
            origin_url=self.origin_url,
            use_spec_url_for_base_path=self.config["use_spec_url_for_base_path"],
        )


def load_spec(
    settings: Settings,
    *,
    version: str | None = None,
    spec_file: str | Path | None = None,
    versioned: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> Spec:
    """The built spec for ESI as ``settings`` describe it; cached per process.

    :param version: route version prefix of Swagger-era sources
        (``latest`` when ``None``).
    :param spec_file: a Swagger 2.0 or OpenAPI 3 JSON file; tried alone.
    :param versioned: resources are pinned to route versions, so only
        sources that have versions (Swagger-era ones) are tried.
    :raises SpecError: no source gave a usable spec; names each source
        and its problem.
    :raises ConfigurationError: ``version`` is not a route version, or
        versions were asked of a source that has none.
    """
    version = check_version(version or DEFAULT_VERSION, "version")
    sources = candidate_sources(settings, spec_file, versioned)
    problems = []
    for source in sources:
        try:
            return _load(source, settings, version, versioned, clock)
        except SpecError as exc:
            if len(sources) == 1:
                raise
            log.warning("ESI spec source %s unusable: %s", source, exc)
            problems.append(str(exc))
    raise SpecError(
        "no ESI spec could be loaded: " + "; ".join(problems),
        source=", ".join(str(s) for s in sources),
    )


def forget_built_specs() -> None:
    """Drop every spec built in this process (as if it had just started)."""
    with _build_lock:
        _built.clear()
        _failed.clear()


def candidate_sources(
    settings: Settings, spec_file: str | Path | None, versioned: bool
) -> list[SpecSource]:
    """The sources to try, in order, for these settings."""
    spec_file = spec_file if spec_file is not None else settings.esi_spec_file
    if spec_file is not None:
        return [SpecSource("file", str(spec_file))]
    base = settings.esi_base_url
    every = {
        "openapi": SpecSource("openapi", f"{base}/meta/openapi.json"),
        "swagger": SpecSource("swagger", f"{base}/{{version}}/swagger.json"),
        "bundled": SpecSource("bundled", str(BUNDLED_SPEC)),
    }
    if settings.esi_spec_source != "auto":
        if versioned and settings.esi_spec_source == "openapi":
            raise ConfigurationError(
                "ESI's OpenAPI spec has no route versions (routes follow "
                "esi_compatibility_date), so resources cannot be pinned to one; "
                "use esi_spec_source 'swagger', 'bundled' or 'auto'"
            )
        return [every[settings.esi_spec_source]]
    kinds = ["swagger", "bundled"] if versioned else ["openapi", "swagger", "bundled"]
    return [every[kind] for kind in kinds]


def check_version(version: str, name: str) -> str:
    """Return ``version`` if it is an ESI route version.

    :raises ConfigurationError: naming ``name`` and the bad value.
    """
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ConfigurationError(
            f"{name} must be 'latest', 'legacy', 'dev' or 'v<N>', got {version!r}"
        )
    return version


def base_path(base_url: str, version: str | None) -> str:
    """The URL path prefix of every route of ``version`` under ``base_url``."""
    prefix = urlsplit(base_url).path.rstrip("/")
    return f"{prefix}/{version}" if version else prefix or "/"


def api_url(base_url: str, version: str | None) -> str:
    """The URL every route of ``version`` starts with."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}{base_path(base_url, version)}"


def is_versioned(spec: Spec) -> bool:
    """Whether the spec's routes sit under a version prefix (Swagger era)."""
    return bool(getattr(spec, "esi_versioned", False))


# -- one source ---------------------------------------------------------------


def _load(
    source: SpecSource,
    settings: Settings,
    version: str,
    versioned: bool,
    clock: Clock,
) -> Spec:
    if source.kind in ("file", "bundled"):
        return _load_file(source, settings, version, versioned)
    return _load_remote(source, settings, version, clock)


def _load_file(
    source: SpecSource, settings: Settings, version: str, versioned: bool
) -> Spec:
    path = Path(source.location)
    identity = _file_identity(path)
    key = (
        source.kind,
        identity,
        settings.esi_base_url,
        version,
        settings.esi_parse_formats,
    )
    with _build_lock:
        found = _built.get(key)
        if found is not None and (is_versioned(found[1]) or not versioned):
            return found[1]
        swagger, has_versions = _file_swagger(source, path, settings)
        if versioned and not has_versions:
            raise ConfigurationError(
                f"ESI spec file {str(path)!r} is OpenAPI: its routes have no "
                "versions, so resources cannot be pinned to one"
            )
        spec = _build(swagger, settings, version if has_versions else None, source)
        _built[key] = (identity, spec, 0.0)
        return spec


def _file_swagger(
    source: SpecSource, path: Path, settings: Settings
) -> tuple[dict[str, Any], bool]:
    """(Swagger 2.0 dict, whether versioned) of a spec file.

    An OpenAPI file is converted once and kept converted in the spec cache
    on disk, keyed by its content, so a later start skips the conversion.
    """
    raw = _read_bytes(path)
    if source.kind == "bundled":
        return _parse(raw, path), True
    store = SpecStore(settings.data_dir / "spec-cache")
    name = "file:sha256:" + hashlib.sha256(raw).hexdigest()
    stored = store.get(name, CONVERSION)
    if stored is not None:
        log.debug("ESI spec file %s from the spec cache", path)
        return stored.swagger, False
    swagger, has_versions = _as_swagger(_parse(raw, path), f"file {str(path)!r}")
    check_refs(swagger, f"file {str(path)!r}")
    if not has_versions:
        # Worth keeping only when converting was needed: a Swagger file is
        # its own fastest form.
        store.put(StoredSpec(name, CONVERSION, swagger, time.time()))
    return swagger, has_versions


def _load_remote(
    source: SpecSource, settings: Settings, version: str, clock: Clock
) -> Spec:
    url = source.location.replace("{version}", version)
    date = settings.esi_compatibility_date
    key = (
        source.kind,
        url,
        date,
        settings.esi_datasource,
        settings.esi_base_url,
        settings.esi_parse_formats,
    )
    now = clock.time()
    with _build_lock:
        found = _built.get(key)
        if found is not None and now - found[2] < settings.esi_spec_max_age_s:
            return found[1]
        quiet = _failed.get(url)
        if quiet is not None and now < quiet[0]:
            raise SpecError(quiet[1], source=url)

        store = SpecStore(
            settings.data_dir / "spec-cache",
            _redis_for(settings),
            redis_prefix=settings.esi_redis_prefix + "spec:",
        )
        keep = version if source.kind == "swagger" else None
        entry, spec = _current(source, url, settings, store, now, found, keep)
        _built[key] = ((entry.etag, entry.last_modified, entry.fetched_at), spec, now)
        return spec


def _current(
    source: SpecSource,
    url: str,
    settings: Settings,
    store: SpecStore,
    now: float,
    found: tuple[Any, Spec, float] | None,
    version: str | None,
) -> tuple[StoredSpec, Spec]:
    """The spec entry in force and its built spec.

    A stored entry is used while young; an older one is revalidated, and a
    fetched one is kept only once it has built, so a spec bravado cannot
    read is never handed to the next process. A stored entry that does not
    build (tampered with, written by another version) is fetched anew.
    """
    stored = store.get(url, settings.esi_compatibility_date)
    young = stored is not None and now - stored.fetched_at < settings.esi_spec_max_age_s
    if stored is not None and young:
        log.debug("ESI spec %s from the spec cache", url)
        try:
            return stored, _built_for(stored, found, settings, version, source)
        except SpecError as exc:
            log.warning("stored ESI spec of %s unusable, fetching it: %s", url, exc)
            stored = None

    try:
        entry = _fetch(source, url, settings, stored, now)
    except SpecError as exc:
        if stored is not None:
            log.warning("using the stored ESI spec of %s: %s", url, exc)
            return stored, _built_for(stored, found, settings, version, source)
        _failed[url] = (now + FAILED_SOURCE_QUIET_S, str(exc))
        raise
    try:
        spec = _built_for(entry, found, settings, version, source)
    except SpecError as exc:
        _failed[url] = (now + FAILED_SOURCE_QUIET_S, str(exc))
        raise
    store.put(entry)
    return entry, spec


def _built_for(
    entry: StoredSpec,
    found: tuple[Any, Spec, float] | None,
    settings: Settings,
    version: str | None,
    source: SpecSource,
) -> Spec:
    """The spec built from ``entry``; the one built before if it is the same."""
    identity = (entry.etag, entry.last_modified)
    if found is not None and found[0][:2] == identity and any(identity):
        return found[1]
    check_refs(entry.swagger, str(source))
    return _build(entry.swagger, settings, version, source)


def _fetch(
    source: SpecSource,
    url: str,
    settings: Settings,
    stored: StoredSpec | None,
    now: float,
) -> StoredSpec:
    headers = {
        "User-Agent": settings.user_agent,
        "X-Compatibility-Date": settings.esi_compatibility_date,
        "X-Tenant": settings.esi_datasource,
        "Accept": "application/json",
    }
    if stored is not None and stored.etag:
        headers["If-None-Match"] = stored.etag
    if stored is not None and stored.last_modified:
        headers["If-Modified-Since"] = stored.last_modified
    params = {"compatibility_date": settings.esi_compatibility_date}
    if source.kind != "openapi":
        params = {}

    log.info("fetching the ESI spec from %s", url)
    try:
        answer = requests.get(
            url,
            headers=headers,
            params=params,
            timeout=min(settings.esi_timeout_s, FETCH_TIMEOUT_S),
        )
    except requests.RequestException as exc:
        raise SpecError(
            f"ESI spec {url} could not be fetched: {type(exc).__name__}", source=url
        ) from exc
    if answer.status_code == 304 and stored is not None:
        return dataclasses.replace(stored, fetched_at=now)
    if answer.status_code != 200:
        raise SpecError(
            f"ESI spec {url} answered {answer.status_code}", source=url
        )

    try:
        document = answer.json()
    except ValueError as exc:
        raise SpecError(f"ESI spec {url} is not valid JSON", source=url) from exc
    swagger, _versioned = _as_swagger(document, url)
    return StoredSpec(
        source=url,
        compatibility_date=settings.esi_compatibility_date,
        swagger=swagger,
        fetched_at=now,
        etag=answer.headers.get("ETag"),
        last_modified=answer.headers.get("Last-Modified"),
    )


# -- building -----------------------------------------------------------------


def _as_swagger(document: Any, where: str) -> tuple[dict[str, Any], bool]:
    """(Swagger 2.0 dict, whether its routes are versioned) for a document."""
    if is_openapi(document):
        return to_swagger(document, source=where), False
    _check_swagger(where, document)
    return document, True


def _build(
    swagger: dict[str, Any],
    settings: Settings,
    version: str | None,
    source: SpecSource,
) -> Spec:
    log.debug("building ESI spec from %s", source)
    spec_dict = dict(swagger)
    parts = urlsplit(settings.esi_base_url)
    spec_dict["host"] = parts.netloc
    spec_dict["schemes"] = [parts.scheme]
    spec_dict["basePath"] = base_path(settings.esi_base_url, version)

    config = dict(SPEC_CONFIG, bravado=bravado_config_from_config_dict(BRAVADO_CONFIG))
    origin = (
        Path(source.location).resolve().as_uri()
        if source.kind in ("file", "bundled")
        else source.location.replace("{version}", version or "")
    )
    try:
        spec = LeanSpec(spec_dict, origin_url=origin, config=config)
        spec.build()
        # Memoized by bravado-core without a lock: built here, in one
        # thread, so the first calls of many threads never race for it.
        get_validator_type(spec)
    except Exception as exc:  # bravado-core raises many kinds on bad specs
        raise SpecError(
            f"ESI spec from {source} could not be built: "
            f"{type(exc).__name__}: {str(exc)[:300]}",
            source=source.location,
        ) from exc
    spec.plain_json = not settings.esi_parse_formats
    spec.esi_versioned = version is not None
    log.info("ESI spec loaded from %s: %d resources", source, len(spec.resources))
    return spec


def _file_identity(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise SpecError(
            f"cannot read ESI spec file {str(path)!r}: {exc.strerror or exc}",
            source=str(path),
        ) from exc
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpecError(
            f"cannot read ESI spec file {str(path)!r}: {exc.strerror or exc}",
            source=str(path),
        ) from exc


def _parse(raw: bytes, path: Path) -> Any:
    """A spec file's document: JSON, or YAML (read safely: no tags run)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"cannot read ESI spec file {str(path)!r}: not UTF-8 text ({exc.reason})",
            source=str(path),
        ) from exc
    if not text.strip():
        raise SpecError(f"ESI spec file {str(path)!r} is empty", source=str(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = (
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )
        json_error = exc
    if path.suffix.lower() in (".yaml", ".yml") or not text.lstrip().startswith(
        ("{", "[")
    ):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = f"is neither JSON nor YAML: {str(exc).splitlines()[0]}"
    raise SpecError(
        f"ESI spec file {str(path)!r} {problem}", source=str(path)
    ) from json_error


def _check_swagger(where: str, data: Any) -> None:
    if not isinstance(data, dict):
        problem = f"top level is a JSON {type(data).__name__}, not an object"
    elif "openapi" in data:
        problem = f"'openapi' is {data['openapi']!r}; only 3.x is supported"
    elif data.get("swagger") != "2.0":
        problem = f"'swagger' is {data.get('swagger')!r}, expected '2.0'"
    elif not isinstance(data.get("paths"), dict) or not data["paths"]:
        problem = "it has no 'paths'"
    else:
        return
    raise SpecError(
        f"ESI spec {where} is not a usable Swagger 2.0 or OpenAPI 3 spec: {problem}",
        source=where,
    )


def _redis_for(settings: Settings) -> redis.Redis | None:
    url = settings.redis_url
    if not url:
        return None
    with _build_lock:
        client = _redis_clients.get(url)
        if client is None:
            import redis

            client = redis.Redis.from_url(
                url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            _redis_clients[url] = client
        return client
