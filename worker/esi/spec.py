"""Loading the ESI Swagger spec, built once per process and source.

Building a :class:`bravado_core.spec.Spec` from the full ESI spec takes
about 0.3 s, so built specs are kept per (source, base URL, version) and
every client made afterwards shares one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bravado.config import bravado_config_from_config_dict
from bravado_core.spec import Spec

from ..errors import ConfigurationError, SpecError

log = logging.getLogger(__name__)

BUNDLED_SPEC = Path(__file__).parent / "specs" / "swagger.json"
DEFAULT_VERSION = "latest"

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
_built: dict[tuple[Any, ...], Spec] = {}
_build_lock = threading.Lock()


def load_spec(
    base_url: str,
    *,
    version: str | None = None,
    spec_file: str | Path | None = None,
) -> Spec:
    """The built spec for ESI at ``base_url``; cached per process.

    :param base_url: where ESI is served, e.g. ``https://esi.evetech.net``.
    :param version: route version prefix (``latest``, ``legacy``, ``dev``,
        ``vN``); ``latest`` when ``None``.
    :param spec_file: a Swagger 2.0 JSON file; the bundled one when ``None``.
    :raises SpecError: the file cannot be read or is not Swagger 2.0 JSON.
    :raises ConfigurationError: ``version`` is not a route version.
    """
    version = check_version(version or DEFAULT_VERSION, "version")
    path = Path(spec_file) if spec_file is not None else BUNDLED_SPEC
    key = (*_source_key(path), base_url.rstrip("/"), version)

    spec = _built.get(key)
    if spec is not None:
        return spec
    with _build_lock:
        spec = _built.get(key)
        if spec is None:
            spec = _build(path, base_url.rstrip("/"), version)
            _built[key] = spec
        return spec


def check_version(version: str, name: str) -> str:
    """Return ``version`` if it is an ESI route version.

    :raises ConfigurationError: naming ``name`` and the bad value.
    """
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ConfigurationError(
            f"{name} must be 'latest', 'legacy', 'dev' or 'v<N>', got {version!r}"
        )
    return version


def base_path(base_url: str, version: str) -> str:
    """The URL path prefix of every route of ``version`` under ``base_url``."""
    prefix = urlsplit(base_url).path.rstrip("/")
    return f"{prefix}/{version}"


def api_url(base_url: str, version: str) -> str:
    """The URL every route of ``version`` starts with."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}{base_path(base_url, version)}"


def _source_key(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise SpecError(
            f"cannot read ESI spec file {str(path)!r}: {exc.strerror or exc}",
            source=str(path),
        ) from exc
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _build(path: Path, base_url: str, version: str) -> Spec:
    log.debug("building ESI spec from %s for %s/%s", path, base_url, version)
    spec_dict = _read(path)
    _point_at(spec_dict, base_url, version)

    config = dict(SPEC_CONFIG, bravado=bravado_config_from_config_dict(BRAVADO_CONFIG))
    try:
        spec = Spec.from_dict(
            spec_dict, origin_url=path.resolve().as_uri(), config=config
        )
    except Exception as exc:  # bravado-core raises many kinds on bad specs
        raise SpecError(
            f"ESI spec file {str(path)!r} could not be built: "
            f"{type(exc).__name__}: {exc}",
            source=str(path),
        ) from exc
    log.info("ESI spec loaded from %s: %d resources", path.name, len(spec.resources))
    return spec


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SpecError(
            f"cannot read ESI spec file {str(path)!r}: {reason}", source=str(path)
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"ESI spec file {str(path)!r} is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}",
            source=str(path),
        ) from exc
    _check_swagger(path, data)
    return data


def _check_swagger(path: Path, data: Any) -> None:
    where = f"ESI spec file {str(path)!r}"
    if not isinstance(data, dict):
        problem = f"top level is a JSON {type(data).__name__}, not an object"
    elif "openapi" in data:
        problem = (
            f"it is OpenAPI {data['openapi']}; only Swagger 2.0 specs are "
            "supported so far"
        )
    elif data.get("swagger") != "2.0":
        problem = f"'swagger' is {data.get('swagger')!r}, expected '2.0'"
    elif not isinstance(data.get("paths"), dict) or not data["paths"]:
        problem = "it has no 'paths'"
    else:
        return
    raise SpecError(
        f"{where} is not a usable Swagger 2.0 spec: {problem}", source=str(path)
    )


def _point_at(spec_dict: dict[str, Any], base_url: str, version: str) -> None:
    parts = urlsplit(base_url)
    spec_dict["host"] = parts.netloc
    spec_dict["schemes"] = [parts.scheme]
    spec_dict["basePath"] = base_path(base_url, version)
