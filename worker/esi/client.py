"""The django-esi entry points: ``esi_client_factory`` and ``EsiClientProvider``.

Every client made in a process shares the built spec of its source; what
differs per client (token, tenant, User-Agent, cache) lives in its own
:class:`~worker.esi.http.EsiHttpClient`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bravado.client import CallableOperation, SwaggerClient
from bravado.config import RequestConfig
from bravado_core.param import marshal_param
from bravado_core.spec import Spec

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, InvalidParameterError
from ..settings import Settings
from .cache import ResponseCache, cache_from_settings
from .futures import CachingHttpFuture
from .http import EsiHttpClient
from .limits import Limiter
from .openapi import ALIAS_KEY, pascal_case, snake_case
from .operations import TokenLike
from .spec import api_url, check_version, load_spec

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_MARSHAL_LOCK = threading.Lock()


class EsiSwaggerClient(SwaggerClient):
    """A bravado ``SwaggerClient`` on a shared spec with its own HTTP client.

    :param resource_urls: per resource name, the URL prefix replacing the
        spec's (a resource pinned to another route version).
    """

    def __init__(
        self,
        swagger_spec: Spec,
        http_client: EsiHttpClient,
        *,
        also_return_response: bool = False,
        resource_urls: dict[str, str] | None = None,
    ) -> None:
        super().__init__(swagger_spec, also_return_response=also_return_response)
        self.http_client = http_client
        self.also_return_response = also_return_response
        self.resource_urls = resource_urls or {}

    def _get_resource(self, item: str) -> EsiResource:
        resource = self.swagger_spec.resources.get(item)
        if resource is None:
            raise AttributeError(
                f"ESI has no resource {item!r}; known: "
                f"{', '.join(sorted(self.swagger_spec.resources))}"
            )
        return EsiResource(resource, self, self.resource_urls.get(item))

    def __repr__(self) -> str:
        return f"EsiSwaggerClient({self.swagger_spec.api_url})"


class EsiResource:
    """One resource (``Market``, ``Assets``...) of an :class:`EsiSwaggerClient`."""

    def __init__(self, resource: Any, client: EsiSwaggerClient, url: str | None):
        self.resource = resource
        self.client = client
        self.url = url

    def __getattr__(self, name: str) -> EsiOperation:
        operation = self.resource.operations.get(name)
        if operation is None:
            operation = self.resource.operations.get(snake_case(name))
        if operation is None:
            raise AttributeError(
                f"ESI resource {self.resource.name} has no operation {name!r}"
            )
        return EsiOperation(operation, self.client, self.url)

    def __dir__(self) -> list[str]:
        names = list(self.resource.operations)
        return names + [pascal_case(name) for name in names]


class EsiOperation(CallableOperation):
    """A callable operation that sends through its client's HTTP client."""

    def __init__(self, operation: Any, client: EsiSwaggerClient, url: str | None):
        super().__init__(operation, client.also_return_response)
        self.client = client
        self.url = url

    def __call__(self, **op_kwargs: Any) -> CachingHttpFuture:
        """Build the request and return its future; nothing is sent yet.

        ``datasource=`` picks the tenant of this call (``X-Tenant``, and the
        ``datasource`` query on Swagger-era specs), as in django-esi.

        :raises InvalidParameterError: an access token was passed as
            ``token``, or the arguments do not fit the operation (unknown
            or missing parameter, wrong type, a value outside its enum).
        """
        name = self.operation.operation_id
        if "token" in op_kwargs:
            raise InvalidParameterError(
                f"{name}: do not pass 'token'; give the token to "
                "esi_client_factory(token=...) so it is sent as a header",
                operation=name,
                parameter="token",
            )
        http = self.client.http_client
        language = self.operation.params.get("language")
        if "language" in op_kwargs and language and ALIAS_KEY in language.param_spec:
            op_kwargs.setdefault("Accept_Language", op_kwargs["language"])
        tenant = self._tenant(op_kwargs, http.datasource)
        log.debug("%s(%s)", name, _loggable(op_kwargs))

        options = dict(op_kwargs.pop("_request_options", {}))
        if tenant != http.datasource:
            options["headers"] = {**(options.get("headers") or {}), "X-Tenant": tenant}
        config = RequestConfig(options, self.also_return_response)
        params = build_request(self.operation, options, op_kwargs)
        if self.url is not None:
            params["url"] = self.url + params["url"][len(self._spec_url()) :]
        return http.request(params, operation=self.operation, request_config=config)

    def _tenant(self, op_kwargs: dict[str, Any], default: str) -> str:
        """The tenant of this call; ``datasource`` is consumed where no such
        parameter exists (today's spec names the tenant in ``X-Tenant`` only).
        """
        tenant = op_kwargs.pop("datasource", None) or default
        if "datasource" in self.operation.params:
            op_kwargs["datasource"] = tenant
        return str(tenant)

    def _spec_url(self) -> str:
        return str(self.operation.swagger_spec.api_url).rstrip("/")


def build_request(
    operation: Any, options: dict[str, Any], op_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The request dict bravado's ``construct_request`` builds, errors ours.

    Each parameter is marshalled on its own so a failure names it. Done
    under one lock: bravado-core memoizes schema work per spec in a way
    that raises ``RecursiveCallException`` when two threads fill the same
    entry at once (``bravado_core.util.memoize_by_id``).

    :raises InvalidParameterError: naming the operation and parameter.
    """
    name = operation.operation_id
    request: dict[str, Any] = {
        "method": str(operation.http_method.upper()),
        "url": operation.swagger_spec.api_url.rstrip("/") + operation.path_name,
        "params": {},
        "headers": dict(options.get("headers") or {}),
    }
    for option in ("connect_timeout", "timeout"):
        if option in options:
            request[option] = options[option]

    remaining = dict(operation.params)
    with _MARSHAL_LOCK:
        for param_name, value in op_kwargs.items():
            param = remaining.pop(param_name, None)
            if param is None:
                raise InvalidParameterError(
                    f"{name} has no parameter {param_name!r}; it takes "
                    f"{', '.join(sorted(operation.params)) or 'none'}",
                    operation=name,
                    parameter=param_name,
                )
            _marshal(name, param, value, request)
        for param in remaining.values():
            if param.location == "header" and param.name in request["headers"]:
                _marshal(name, param, request["headers"][param.name], request)
            elif param.required:
                raise InvalidParameterError(
                    f"{name} needs the parameter {param.name!r}",
                    operation=name,
                    parameter=param.name,
                )
            elif param.has_default():
                _marshal(name, param, None, request)
    return request


def _marshal(name: str, param: Any, value: Any, request: dict[str, Any]) -> None:
    try:
        marshal_param(param, value, request)
    except Exception as exc:  # jsonschema's, bravado's: foreign, turned into ours
        reason = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
        raise InvalidParameterError(
            f"{name}: parameter {param.name!r} does not accept "
            f"{_clip(repr(value))}: {_clip(str(reason))}",
            operation=name,
            parameter=param.name,
        ) from exc


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _loggable(op_kwargs: dict[str, Any]) -> dict[str, Any]:
    # bravado's own redaction reads its header list from a config key that
    # its factory removes, so it redacts nothing; ours does not rely on it.
    options = dict(op_kwargs.get("_request_options") or {})
    headers = {
        name: "*redacted*" if str(name).lower() in SECRET_HEADERS else value
        for name, value in (options.get("headers") or {}).items()
    }
    if headers:
        options["headers"] = headers
    return {**op_kwargs, "_request_options": options} if options else op_kwargs


def esi_client_factory(
    token: TokenLike | None = None,
    datasource: str | None = None,
    spec_file: str | Path | None = None,
    version: str | None = None,
    app_info_text: str | None = None,
    *,
    settings: Settings | None = None,
    cache: ResponseCache | None = None,
    clock: Clock | None = None,
    limiter: Limiter | None = None,
    **resource_versions: str,
) -> SwaggerClient:
    """A bravado client for ESI, as django-esi's factory makes one.

    :param token: sent on authenticated operations; any object with
        ``character_id``, ``scopes`` and ``valid_access_token()``.
    :param datasource: tenant; ``settings.esi_datasource`` when ``None``.
    :param spec_file: a Swagger 2.0 JSON file; else ``settings.esi_spec_file``,
        else the bundled spec.
    :param version: route version of every resource (``latest`` by default).
    :param app_info_text: put in front of the User-Agent.
    :param settings: the current runtime's, else ``Settings.from_env()``.
    :param cache: the current runtime's, else the process-wide one.
    :param limiter: shares ESI's limits; the process-wide one (in Redis when
        ``settings.redis_url`` is set) when ``None``.
    :param resource_versions: a route version per resource, e.g.
        ``Character="v5"``.
    :raises SpecError: the spec file cannot be read or built.
    :raises ConfigurationError: a bad version or unknown resource name.
    """
    settings, cache, clock = _resolve(settings, cache, clock)
    spec = load_spec(
        settings,
        version=version,
        spec_file=spec_file,
        versioned=version is not None or bool(resource_versions),
        clock=clock,
    )
    http = EsiHttpClient(
        settings,
        token=token,
        datasource=datasource,
        app_info_text=app_info_text,
        cache=cache,
        clock=clock,
        limiter=limiter,
    )
    urls = _resource_urls(spec, settings.esi_base_url, resource_versions)
    return EsiSwaggerClient(spec, http, resource_urls=urls)


class EsiClientProvider:
    """A lazily built, shared ESI client, as django-esi apps keep one.

    Safe to create at import time: nothing is read or built until
    :attr:`client` is first used, and then only once across threads.
    """

    def __init__(
        self,
        token: TokenLike | None = None,
        datasource: str | None = None,
        spec_file: str | Path | None = None,
        version: str | None = None,
        app_info_text: str | None = None,
        *,
        runtime: Runtime | None = None,
        **resource_versions: str,
    ) -> None:
        self._token = token
        self._datasource = datasource
        self._spec_file = spec_file
        self._version = version
        self._app_info_text = app_info_text
        self._runtime = runtime
        self._resource_versions = resource_versions
        self._client: SwaggerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> SwaggerClient:
        """The client, built on first use."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def __str__(self) -> str:
        return "EsiClientProvider"

    def __repr__(self) -> str:
        return f"EsiClientProvider(built={self._client is not None})"

    def _build(self) -> SwaggerClient:
        options: dict[str, Any] = dict(self._resource_versions)
        if self._runtime is not None:
            rt = self._runtime
            options.update(settings=rt.settings, cache=rt.cache, clock=rt.clock)
        log.debug("building the shared ESI client")
        return esi_client_factory(
            self._token,
            self._datasource,
            self._spec_file,
            self._version,
            self._app_info_text,
            **options,
        )


def _resolve(
    settings: Settings | None, cache: ResponseCache | None, clock: Clock | None
) -> tuple[Settings, ResponseCache, Clock]:
    from ..runtime import current_or_none

    runtime = current_or_none()
    if settings is None:
        settings = runtime.settings if runtime is not None else Settings.from_env()
    if cache is None:
        same = runtime is not None and runtime.settings is settings
        cache = runtime.cache if same and runtime else cache_from_settings(settings)
    if clock is None:
        clock = runtime.clock if runtime is not None else SYSTEM_CLOCK
    return settings, cache, clock


def _resource_urls(
    spec: Spec, base_url: str, resource_versions: dict[str, str]
) -> dict[str, str]:
    urls = {}
    for resource, version in resource_versions.items():
        if resource not in spec.resources:
            raise ConfigurationError(
                f"unknown ESI resource {resource!r} given a version; known: "
                f"{', '.join(sorted(spec.resources))}"
            )
        check_version(version, f"version of {resource}")
        urls[resource] = api_url(base_url, version)
    return urls
