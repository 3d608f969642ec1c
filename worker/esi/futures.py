"""The future an ESI operation call returns: cache, pages and languages.

Nothing is sent when an operation is called; :meth:`CachingHttpFuture.result`
and its siblings send (or answer from the cache) when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bravado.config import RequestConfig
from bravado.http_future import FutureAdapter, HttpFuture
from bravado_core.operation import Operation

from ..errors import PagesInconsistentError
from ..metrics import esi as metrics
from .cache import (
    KEPT_HEADERS,
    STALE_KEEP_S,
    CachedResponse,
    ResponseCache,
    cache_key,
    freshness_s,
)
from .operations import (
    allowed_languages,
    check_languages,
    check_token,
    is_paged,
    needs_token,
    operation_name,
)
from .pages import (
    CursorPage,
    disagreement,
    is_cursor_paged,
    stale_pages,
    walk_cursor,
)
from .response import EsiResponse, decode, error_for

if TYPE_CHECKING:
    from .http import EsiHttpClient

log = logging.getLogger(__name__)

CACHEABLE_METHODS = frozenset({"GET", "POST"})
_KEY_HEADERS = ("Accept-Language", "X-Tenant", "X-Compatibility-Date")


class _Answer:
    """A response and its data, decoded on first use.

    Page 1 of a walk is decoded only after the other pages were sent for,
    so its decoding overlaps their round trips.
    """

    def __init__(
        self,
        data: Any,
        response: EsiResponse,
        operation: Operation | None = None,
        on_decoded: Callable[[], None] | None = None,
    ) -> None:
        self.response = response
        self._operation = operation
        self._data = data
        self._pending = operation is not None
        self._on_decoded = on_decoded

    @property
    def data(self) -> Any:
        """The decoded body; a body that decodes is cached only then."""
        if self._pending:
            self._data = decode(self.response, self._operation)
            self._pending = False
            if self._on_decoded is not None:
                self._on_decoded()
        return self._data


class CachingHttpFuture(HttpFuture):
    """A bravado future that caches, walks pages and fetches languages.

    After a call, ``from_cache`` / ``not_modified`` tell where the answer
    came from (for :meth:`results`: true only if so for every page) and
    ``responses`` holds the responses of that call in page order.
    """

    def __init__(
        self,
        http_client: EsiHttpClient,
        request_params: dict[str, Any],
        operation: Operation | None = None,
        request_config: RequestConfig | None = None,
    ) -> None:
        adapter = PendingRequest(http_client, request_params, operation)
        super().__init__(adapter, _same, operation, request_config)
        self.http_client = http_client
        self.request_params = request_params
        self.from_cache = False
        self.not_modified = False
        self.responses: list[EsiResponse] = []

    def result(  # type: ignore[override]
        self,
        timeout: float | None = None,
        retries: int | None = None,
        language: str | None = None,
        ignore_cache: bool = False,
    ) -> Any:
        """The data of one request (one page), from the cache when fresh.

        :param timeout: seconds per HTTP request; ``settings.esi_timeout_s``
            when ``None``.
        :param retries: retries of 502/503/504 and connection errors;
            ``settings.esi_retries`` when ``None``.
        :param language: one of the operation's languages.
        :param ignore_cache: ask ESI even when a fresh answer is cached.
        :returns: the data, or ``(data, response)`` when the operation was
            called with ``_request_options={"also_return_response": True}``.
        :raises ScopeMissingError: no token, or one without the scope.
        :raises InvalidLanguageError: ``language`` is not allowed.
        :raises HTTPError: ESI answered an error (420 and 429 as subclasses).
        :raises ESITransientError: transient failures outlasted the retries.
        """
        self._check_token()
        answer = self._fetch(self._variant(language), timeout, retries, ignore_cache)
        self._note([answer])
        return self._shape(answer.data, answer.response)

    def results(self, **kwargs: Any) -> Any:
        """The data of every page, concatenated in page order.

        Page 1 is read first for ``X-Pages``; the other pages are fetched at
        most ``settings.esi_page_concurrency`` at a time. Takes the keyword
        arguments of :meth:`result`; with ``also_return_response`` the
        response of page 1 is returned alongside the data.
        """
        self._check_token()
        if not is_paged(self.operation):
            return self.result(**kwargs)
        language = kwargs.pop("language", None)
        args = _fetch_args(kwargs)
        name = operation_name(self.operation)

        tries = self.http_client.settings.esi_page_consistency_retries + 1
        for attempt in range(tries):
            fresh = attempt > 0 or bool(args.get("ignore_cache"))
            answers = self._walk(language, {**args, "ignore_cache": fresh})
            problem = disagreement([a.response for a in answers])
            if problem is None:
                break
            metrics.ESI_RETRIES.labels(name).inc()
            log.warning(
                "ESI %s pages disagree (%s); walk %d of %d",
                name,
                problem,
                attempt + 1,
                tries,
                extra={"operation": name},
            )
        else:
            raise PagesInconsistentError(
                f"{name}: pages kept coming from different snapshots after "
                f"{tries} walks: {problem}",
                operation=name,
            )

        self._note(answers)
        metrics.ESI_PAGES.labels(name).observe(len(answers))
        data: list[Any] = []
        for answer in answers:
            data.extend(_as_list(answer.data))
        return self._shape(data, answers[0].response)

    def results_cursor(
        self, after: str | None = None, *, max_pages: int = 1000, **kwargs: Any
    ) -> CursorPage:
        """Every record of a cursor-paged route, with the tokens to go on.

        :param after: a token from an earlier call: only records changed
            since are returned. Without one, all records (newest fetched
            first, returned oldest first).
        :returns: the records and ``after``, the token to poll with later.
        :raises TypeError: the operation is not cursor-paged.
        """
        operation = self._require_operation()
        self._check_token()
        if not is_cursor_paged(list(operation.params)):
            raise TypeError(f"{operation.operation_id} is not cursor-paged")
        args = _fetch_args(kwargs)

        def fetch(cursor: dict[str, Any]) -> Any:
            params = self._variant(None)
            params["params"].update(cursor)
            return self._fetch(params, **args).data

        return walk_cursor(fetch, after=after, max_pages=max_pages)

    def _walk(self, language: str | None, args: dict[str, Any]) -> list[_Answer]:
        """Page 1, then the others concurrently; 304s beside 200s fetched again."""
        first = self._fetch(self._variant(language, page=1), **args)
        pages = _page_count(first.response, operation_name(self.operation))
        answers = [first, *self._fetch_pages(range(2, pages + 1), language, args)]

        stale = stale_pages([a.response for a in answers])
        if stale:
            log.debug("ESI refetching pages %s answered 304 beside changed ones", stale)
            again = {**args, "ignore_cache": True}
            for index in stale:
                page = self._variant(language, page=index + 1)
                answers[index] = self._fetch(page, **again)
        return answers

    def results_localized(
        self, languages: Iterable[str] | str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """:meth:`results` for each language, keyed by language.

        :param languages: every language the operation allows when ``None``.
        :raises InvalidLanguageError: before any request, naming the
            unknown language and the allowed ones.
        """
        operation = self._require_operation()
        self._check_token()
        if languages is None:
            languages = allowed_languages(operation)
        elif isinstance(languages, str):
            languages = [languages]
        checked = check_languages(operation, languages)
        return {lang: self.results(language=lang, **kwargs) for lang in checked}

    # -- bravado's response() goes through these two hooks -------------------

    def _get_incoming_response(self, timeout: float | None = None) -> EsiResponse:
        self._check_token()
        answer = self._fetch(self._variant(None), timeout)
        self._note([answer])
        answer.response.swagger_result = answer.data
        return answer.response

    def _get_swagger_result(self, incoming_response: Any) -> Any:
        return getattr(incoming_response, "swagger_result", None)

    # -- steps ---------------------------------------------------------------

    def _fetch(
        self,
        params: dict[str, Any],
        timeout: float | None = None,
        retries: int | None = None,
        ignore_cache: bool = False,
    ) -> _Answer:
        cache = self._cache_for(params)
        key = self._key(params) if cache is not None else ""
        entry = None
        if cache is not None and not ignore_cache:
            entry = self._cache_get(cache, key)

        name = operation_name(self.operation)
        if entry is not None and entry.is_fresh(self.http_client.clock.time()):
            metrics.CACHE_HITS.labels(name).inc()
            return self._replay(entry, not_modified=False)
        if cache is not None:
            metrics.CACHE_MISSES.labels(name).inc()

        if entry is not None and entry.etag:
            params = _with_header(params, "If-None-Match", entry.etag)
            metrics.CACHE_REVALIDATIONS.labels(name).inc()
        response = self.http_client.send(
            params, self.operation, timeout_s=timeout, retries=retries
        )
        return self._settle(response, cache, key, entry)

    def _settle(
        self,
        response: EsiResponse,
        cache: ResponseCache | None,
        key: str,
        entry: CachedResponse | None,
    ) -> _Answer:
        status = response.status_code
        if status == 304:
            metrics.ESI_NOT_MODIFIED.labels(operation_name(self.operation)).inc()
        if status == 304 and entry is not None and cache is not None:
            return self._revalidated(response, cache, key, entry)
        if status == 304 and _has_header(self.request_params, "If-None-Match"):
            return _Answer(None, response)
        if not 200 <= status < 300:
            raise error_for(response, self.operation)

        store = None
        if cache is not None and status == 200:
            store = functools.partial(self._store, response, cache, key)
        return _Answer(None, response, self.operation, store)

    def _revalidated(
        self,
        response: EsiResponse,
        cache: ResponseCache,
        key: str,
        entry: CachedResponse,
    ) -> _Answer:
        lifetime = freshness_s(response.headers, self.http_client.clock.now())
        refreshed = dataclasses.replace(
            entry,
            headers={**entry.headers, **_kept(response.headers)},
            etag=response.headers.get("ETag") or entry.etag,
            expires_at=self.http_client.clock.time() + (lifetime or 0.0),
        )
        if lifetime is not None:
            self._cache_set(cache, key, refreshed, lifetime + STALE_KEEP_S)
        return self._replay(refreshed, not_modified=True)

    def _store(self, response: EsiResponse, cache: ResponseCache, key: str) -> None:
        lifetime = freshness_s(response.headers, self.http_client.clock.now())
        if lifetime is None:
            return
        try:
            body = response.raw_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return

        etag = response.headers.get("ETag")
        entry = CachedResponse(
            status=response.status_code,
            headers=_kept(response.headers),
            body=body,
            expires_at=self.http_client.clock.time() + lifetime,
            etag=etag,
        )
        self._cache_set(cache, key, entry, lifetime + (STALE_KEEP_S if etag else 0))

    def _replay(self, entry: CachedResponse, *, not_modified: bool) -> _Answer:
        response = EsiResponse.from_cached(entry, not_modified=not_modified)
        return _Answer(None, response, self.operation)

    def _fetch_pages(
        self, pages: range, language: str | None, kwargs: dict[str, Any]
    ) -> list[_Answer]:
        if not pages:
            return []
        workers = min(self.http_client.settings.esi_page_concurrency, len(pages))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esi-page")
        try:
            futures = [
                pool.submit(self._fetch_decoded, self._variant(language, page=n), kwargs)
                for n in pages
            ]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_decoded(self, params: dict[str, Any], kwargs: dict[str, Any]) -> _Answer:
        answer = self._fetch(params, **kwargs)
        answer.data  # noqa: B018 (decoded here, in the page's own thread)
        return answer

    # -- helpers -------------------------------------------------------------

    def _variant(self, language: str | None, page: int | None = None) -> dict[str, Any]:
        params = dict(self.request_params)
        params["params"] = dict(self.request_params["params"])
        params["headers"] = dict(self.request_params["headers"])
        if page is not None:
            params["params"]["page"] = page

        if language is not None:
            operation = self._require_operation()
            check_languages(operation, [language])
            if "language" in operation.params:
                params["params"]["language"] = language
            params["headers"]["Accept-Language"] = language
        return params

    def _key(self, params: dict[str, Any]) -> str:
        token = self.http_client.token
        authed = needs_token(self.operation) and token is not None
        sent = {**self.http_client.base_headers, **params["headers"]}
        body = params.get("data")
        if body is None and params.get("json") is not None:
            body = json.dumps(params["json"], sort_keys=True)
        return cache_key(
            params["method"],
            params["url"],
            params["params"],
            body=body,
            headers=[(h, str(sent[h])) for h in _KEY_HEADERS if h in sent],
            character_id=token.character_id if authed and token else None,
        )

    def _cache_for(self, params: dict[str, Any]) -> ResponseCache | None:
        if str(params["method"]).upper() not in CACHEABLE_METHODS:
            return None
        if _has_header(params, "If-None-Match"):
            return None  # the caller revalidates by hand
        return self.http_client.cache

    def _cache_get(self, cache: ResponseCache, key: str) -> CachedResponse | None:
        try:
            return cache.get(key)
        except Exception as exc:  # noqa: BLE001 (a cache never fails a call)
            self._cache_failed(cache, "get", exc)
            return None

    def _cache_set(
        self, cache: ResponseCache, key: str, entry: CachedResponse, ttl_s: float
    ) -> None:
        try:
            cache.set(key, entry, ttl_s)
        except Exception as exc:  # noqa: BLE001 (a cache never fails a call)
            self._cache_failed(cache, "set", exc)

    def _cache_failed(self, cache: ResponseCache, action: str, exc: Exception) -> None:
        backend = type(cache).__name__
        metrics.CACHE_ERRORS.labels(backend).inc()
        log.warning(
            "response cache %s failed on %s for %s, going on without it: %s",
            backend,
            action,
            operation_name(self.operation),
            type(exc).__name__,
            extra={"operation": operation_name(self.operation)},
        )

    def _check_token(self) -> None:
        if self.operation is not None:
            check_token(self.operation, self.http_client.token)

    def _require_operation(self) -> Operation:
        if self.operation is None:
            raise TypeError("this future has no ESI operation")
        return self.operation

    def _note(self, answers: list[_Answer]) -> None:
        self.responses = [answer.response for answer in answers]
        self.from_cache = all(r.from_cache for r in self.responses)
        self.not_modified = all(r.not_modified for r in self.responses)

    def _shape(self, data: Any, response: EsiResponse) -> Any:
        if self.request_config.also_return_response:
            return data, response
        return data


class PendingRequest(FutureAdapter):
    """bravado's future-adapter slot: sends the request once, uncached."""

    def __init__(
        self,
        http_client: EsiHttpClient,
        request_params: dict[str, Any],
        operation: Operation | None,
    ) -> None:
        self.http_client = http_client
        self.request = request_params
        self.operation = operation

    def result(self, timeout: float | None = None) -> EsiResponse:
        """Send the request as built."""
        return self.http_client.send(self.request, self.operation, timeout_s=timeout)

    def cancel(self) -> None:
        """Nothing runs in the background, so there is nothing to cancel."""


def _same(response: EsiResponse) -> EsiResponse:
    return response


def _fetch_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {"timeout", "retries", "ignore_cache"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return dict(kwargs)


def _page_count(response: EsiResponse, name: str) -> int:
    value = response.headers.get("X-Pages")
    if value is None:
        return 1
    try:
        return max(1, int(value))
    except ValueError:
        log.warning(
            "ESI %s sent an unreadable X-Pages %r; reading page 1 only",
            name,
            value,
            extra={"operation": name},
        )
        return 1


def _as_list(data: Any) -> list[Any]:
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _kept(headers: Any) -> dict[str, str]:
    return {h: str(headers[h]) for h in KEPT_HEADERS if h in headers}


def _has_header(params: dict[str, Any], name: str) -> bool:
    lowered = name.lower()
    return any(str(h).lower() == lowered for h in params.get("headers") or {})


def _with_header(params: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    return {**params, "headers": {**params["headers"], name: value}}
