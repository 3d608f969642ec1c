"""The HTTP side of the ESI client: headers, the access token, retries.

The ``Authorization`` header is added to the prepared request at send
time, so it never passes through bravado's request logging, a URL, a cache
key or an exception text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import requests
from bravado.config import RequestConfig
from bravado.requests_client import RequestsClient
from bravado_core.operation import Operation
from requests.adapters import HTTPAdapter

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, ESIError, ESITransientError
from ..jobs.stats import current_stats
from ..metrics import esi as metrics
from .cache import ResponseCache
from .futures import CachingHttpFuture
from .limits import Limiter, Permit, declared_bucket, limiter_from_settings
from .operations import TokenLike, needs_token, operation_name
from .response import EsiResponse

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({502, 503, 504})
# A body cut off mid-way (ChunkedEncodingError, also for a short
# Content-Length) is a broken connection like any other: sent again.
TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
MAX_BACKOFF_S = 10.0
DEFAULT_BACKOFF_S = 1.0
# The counters of the run that made a request (worker.jobs.stats) travel
# in its parameters: page threads do not see the run's context variable.
RUN_STATS_KEY = "_esi_worker_run_stats"
_MISC_OPTIONS = ("timeout", "connect_timeout", "follow_redirects", RUN_STATS_KEY)


class EsiHttpClient(RequestsClient):
    """Sends ESI requests for one client: its token, tenant and User-Agent.

    :param settings: where ESI is, the User-Agent, timeouts and retries.
    :param token: any object with ``character_id``, ``scopes`` and
        ``valid_access_token()``; used on authenticated operations only.
    :param datasource: the tenant (``X-Tenant``); ``settings.esi_datasource``
        when ``None``.
    :param app_info_text: put in front of the User-Agent.
    :param cache: where answers are cached; ``None`` caches nothing.
    :param clock: for cache lifetimes and retry backoff.
    :raises ConfigurationError: ``app_info_text`` would break the header.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        token: TokenLike | None = None,
        datasource: str | None = None,
        app_info_text: str | None = None,
        cache: ResponseCache | None = None,
        clock: Clock = SYSTEM_CLOCK,
        limiter: Limiter | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.token = token
        self.datasource = datasource or settings.esi_datasource
        self.user_agent = _user_agent(settings, app_info_text)
        self.cache = cache
        self.clock = clock
        self.backoff_s = settings.esi_retry_backoff_s
        self.limiter = limiter or limiter_from_settings(settings, clock)
        self._configure_session()

    def request(
        self,
        request_params: MutableMapping[str, Any],
        operation: Operation | None = None,
        request_config: RequestConfig | None = None,
    ) -> CachingHttpFuture:
        """A future for the request; nothing is sent until it is asked."""
        params = dict(request_params)
        params["params"] = dict(params.get("params") or {})
        params["headers"] = dict(params.get("headers") or {})
        params[RUN_STATS_KEY] = current_stats()
        return CachingHttpFuture(self, params, operation, request_config)

    def send(
        self,
        request_params: dict[str, Any],
        operation: Operation | None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> EsiResponse:
        """Send one request, retrying transient failures with backoff.

        :returns: the answer, whatever its status (except 502/503/504).
        :raises ESITransientError: 502/503/504 or connection errors outlasted
            ``retries`` (``settings.esi_retries`` when ``None``).
        :raises TokenError: the token could not give a valid access token.
        """
        retries = self.settings.esi_retries if retries is None else retries
        name = operation_name(operation)
        metrics.prime_operation(name)
        attempt = 0
        renewed = False
        while True:
            try:
                response = self._send_once(request_params, operation, timeout_s)
            except TRANSIENT_EXCEPTIONS as exc:
                failure = f"{type(exc).__name__}: {exc}"
                status = None
            else:
                if response.status_code == 401 and not renewed:
                    renewed = self._renew_access_token(operation, name)
                    if renewed:
                        continue
                if response.status_code not in TRANSIENT_STATUSES:
                    return response
                failure = f"status {response.status_code}"
                status = response.status_code

            if attempt >= retries:
                raise ESITransientError(
                    f"{name} failed after {attempt + 1} attempts; last: {failure}",
                    status=status,
                    operation=name,
                )
            self._back_off(name, attempt, failure)
            attempt += 1

    @property
    def base_headers(self) -> dict[str, str]:
        """The headers every request carries (none of them secret)."""
        return {
            "User-Agent": self.user_agent,
            "X-Compatibility-Date": self.settings.esi_compatibility_date,
            "X-Tenant": self.datasource,
            "Accept": "application/json",
        }

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __repr__(self) -> str:
        who = getattr(self.token, "character_id", None)
        return f"EsiHttpClient(character_id={who!r}, datasource={self.datasource!r})"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def _configure_session(self) -> None:
        # No proxies or ~/.netrc from the environment: a netrc entry would
        # otherwise add its own Authorization header to public calls.
        self.session.trust_env = False
        size = max(10, self.settings.esi_page_concurrency)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _send_once(
        self,
        request_params: dict[str, Any],
        operation: Operation | None,
        timeout_s: float | None,
    ) -> EsiResponse:
        name = operation_name(operation)
        try:
            prepared = self._prepare(request_params, operation)
        except requests.RequestException as exc:
            raise ESIError(
                f"ESI {name}: the request cannot be built: {type(exc).__name__}: "
                f"{str(exc)[:200]}"
            ) from exc
        timeout = self._timeout(request_params, timeout_s)
        permit = self._acquire(operation, name)

        stats = request_params.get(RUN_STATS_KEY) or current_stats()
        if stats is not None:
            stats.note_request()  # every request of a run, whatever its answer

        started = time.perf_counter()
        response = None
        try:
            response = self._exchange(prepared, timeout, name)
        except TRANSIENT_EXCEPTIONS:
            # A connection that failed took time too: the latency panel
            # must show a slow, failing ESI, not only the answers.
            metrics.ESI_REQUEST_SECONDS.labels(name).observe(
                time.perf_counter() - started
            )
            raise
        finally:
            # Whatever happened, the reservation goes back: a permit left
            # behind would count as in flight for minutes.
            status = response.status_code if response is not None else None
            headers = response.headers if response is not None else {}
            self.limiter.settle(permit, status, headers, name, self.clock)

        metrics.ESI_REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)
        metrics.ESI_REQUESTS.labels(name, str(response.status_code)).inc()
        log.debug(
            "ESI %s %s answered %d",
            name,
            prepared.path_url.split("?", 1)[0],
            response.status_code,
            extra={"operation": name, "status": response.status_code},
        )
        if "Warning" in response.headers:
            _warn_once(name, response.headers["Warning"])
        return response

    def _exchange(
        self, prepared: requests.PreparedRequest, timeout: Any, name: str
    ) -> EsiResponse:
        """One request on the wire; requests' errors become ours here.

        :raises TRANSIENT_EXCEPTIONS: for :meth:`send` to retry.
        :raises ESIError: any other failure of requests.
        """
        try:
            # Streamed, so the body is read in one go rather than in 10 kB
            # pieces, each taking the GIL again beside the other page threads.
            raw = self.session.send(
                prepared, timeout=timeout, allow_redirects=False, stream=True
            )
            with raw:
                return EsiResponse.from_requests(raw)
        except TRANSIENT_EXCEPTIONS as exc:
            metrics.ESI_REQUESTS.labels(name, type(exc).__name__).inc()
            raise
        except requests.RequestException as exc:
            metrics.ESI_REQUESTS.labels(name, type(exc).__name__).inc()
            raise ESIError(
                f"ESI {name} failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    def _renew_access_token(self, operation: Operation | None, name: str) -> bool:
        """After a 401, refresh the token once and say whether to send again.

        ESI answers 401 to an access token it no longer accepts before its
        expiry (the SSO rotated its signing key, or the grant was revoked);
        one forced refresh tells which, and a dead grant raises from here.
        """
        token = self.token
        if token is None or not needs_token(operation):
            return False
        if not getattr(token, "can_refresh", False) or not hasattr(token, "refresh"):
            return False
        log.info(
            "ESI %s refused the access token of character %r; refreshing it once",
            name, token.character_id, extra={"operation": name},
        )
        token.refresh()
        return True

    def _acquire(self, operation: Operation | None, name: str) -> Permit:
        declared = declared_bucket(operation.op_spec) if operation else None
        token = self.token if needs_token(operation) else None
        caller = f"character:{token.character_id}" if token else "public"
        return self.limiter.acquire(name, declared, caller, self.clock)

    def _prepare(
        self, request_params: dict[str, Any], operation: Operation | None
    ) -> requests.PreparedRequest:
        params = {k: v for k, v in request_params.items() if k not in _MISC_OPTIONS}
        params["headers"] = {
            **self.session.headers,
            **self.base_headers,
            **params["headers"],
        }
        params["params"] = {k: v for k, v in params["params"].items() if k != "token"}
        # Not session.prepare_request: it merges cookies, auth and hooks we
        # never set, through typing-Protocol checks costing ~0.1 ms a call.
        prepared = requests.Request(**params).prepare()

        if needs_token(operation) and self.token is not None:
            access_token = self.token.valid_access_token()
            prepared.headers["Authorization"] = f"Bearer {access_token}"
        return prepared

    def _timeout(
        self, request_params: dict[str, Any], timeout_s: float | None
    ) -> float | tuple[float, float]:
        timeout = (
            timeout_s or request_params.get("timeout") or self.settings.esi_timeout_s
        )
        connect = request_params.get("connect_timeout")
        return (connect, timeout) if connect else timeout

    def _back_off(self, name: str, attempt: int, failure: str) -> None:
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)
        metrics.ESI_RETRIES.labels(name, "transient").inc()
        log.warning(
            "ESI %s failed (%s); retry %d in %.2f s",
            name,
            failure,
            attempt + 1,
            delay,
            extra={"operation": name},
        )
        self.clock.sleep(delay)


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(name: str, warning: str) -> None:
    """Log ESI's ``Warning`` header (199 newer version, 299 deprecated) once.

    Whether today's ESI still sends it is unverified (ESI.md 3.1a); when it
    does, it says a route is going away, which an operator must hear of.
    """
    key = (name, warning[:200])
    with _warned_lock:
        if key in _warned or len(_warned) > 1000:
            return
        _warned.add(key)
    log.warning(
        "ESI warns about %s: %s", name, warning[:200], extra={"operation": name}
    )


def _user_agent(settings: Settings, app_info_text: str | None) -> str:
    if not app_info_text:
        return settings.user_agent
    if any(ch in app_info_text for ch in "\r\n\0"):
        raise ConfigurationError(
            "app_info_text must be one line of text (it goes into User-Agent)"
        )
    return f"{app_info_text.strip()} {settings.user_agent}"
