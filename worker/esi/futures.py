"""The future an ESI operation call returns: cache, pages and languages.

Nothing is sent when an operation is called; :meth:`CachingHttpFuture.result`
and its siblings send (or answer from the cache) when asked.
"""

from __future__ import annotations

import contextlib
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

from ..errors import ESIError, HTTPError, PagesInconsistentError
from ..metrics import esi as metrics
from .cache import (
    DAY_S,
    KEPT_HEADERS,
    STALE_KEEP_S,
    CachedResponse,
    ResponseCache,
    cache_key,
    freshness_s,
)
from .copies import JsonCopier
from .operations import (
    allowed_languages,
    check_languages,
    check_token,
    facts,
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

    The pages of a walk are decoded by the caller's thread while the page
    threads go on sending, so decoding overlaps the round trips.
    """

    def __init__(
        self, response: EsiResponse, decoder: Callable[[], Any] | None = None
    ) -> None:
        self.response = response
        self._decoder = decoder
        self._data: Any = None

    @property
    def data(self) -> Any:
        """The decoded body; a body that decodes is cached only then."""
        if self._decoder is not None:
            self._data = self._decoder()
            self._decoder = None
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
        # A call made with its own If-None-Match revalidates by hand.
        self._cacheable = str(
            request_params["method"]
        ).upper() in CACHEABLE_METHODS and not _has_header(
            request_params, "If-None-Match"
        )
        self._keys: dict[tuple[Any, ...], str] = {}

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
            metrics.ESI_RETRIES.labels(name, "pages").inc()
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
        pages = self._page_count(first.response)
        answers = [first]
        answers += self._fetch_pages(range(2, pages + 1), language, args, first)

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
        cache = self.http_client.cache if self._cacheable else None
        key = self._key(params) if cache is not None else ""
        entry = None
        if cache is not None and not ignore_cache:
            entry = self._cache_get(cache, key)

        name = operation_name(self.operation)
        fresh = entry is not None and entry.is_fresh(self.http_client.clock.time())
        if fresh and entry is not None and cache is not None:
            _child(metrics.CACHE_HITS, name).inc()
            answer = self._replay(entry, cache, key, not_modified=False)
            if self._readable(answer, cache, key):
                return answer
            return self._fetch(params, timeout, retries, ignore_cache=True)
        if cache is not None:
            _child(metrics.CACHE_MISSES, name).inc()

        sent = params
        if entry is not None and entry.etag:
            sent = _with_header(params, "If-None-Match", entry.etag)
            _child(metrics.CACHE_REVALIDATIONS, name).inc()
        response = self.http_client.send(
            sent, self.operation, timeout_s=timeout, retries=retries
        )
        answer = self._settle(response, cache, key, entry)
        replayed = answer.response.not_modified
        if cache is None or not replayed or self._readable(answer, cache, key):
            return answer
        return self._fetch(params, timeout, retries, ignore_cache=True)

    def _readable(self, answer: _Answer, cache: ResponseCache, key: str) -> bool:
        """Whether a cached answer decodes; one that does not is dropped.

        Decoded now rather than by the caller, so a bad entry (an old
        format, a tampered shared cache) costs one fetch, never the call.
        """
        try:
            answer.data  # noqa: B018
        except ESIError as exc:
            self._cache_failed(cache, "decode", exc)
            with contextlib.suppress(Exception):
                cache.delete(key)
            return False
        return True

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
            return _Answer(response)
        if not 200 <= status < 300:
            raise error_for(response, self.operation, self.http_client.clock.time())

        if self.operation is None:
            return _Answer(response)  # bravado's raw use: nothing to decode
        store = cache if status == 200 else None
        return _Answer(response, functools.partial(self._decode, response, store, key))

    def _revalidated(
        self,
        response: EsiResponse,
        cache: ResponseCache,
        key: str,
        entry: CachedResponse,
    ) -> _Answer:
        lifetime = self._lifetime(response)
        refreshed = dataclasses.replace(
            entry,
            headers={**entry.headers, **_kept(response.headers)},
            etag=response.headers.get("ETag") or entry.etag,
            expires_at=self.http_client.clock.time() + (lifetime or 0.0),
        )
        if lifetime is not None:
            self._cache_set(cache, key, refreshed, lifetime + STALE_KEEP_S)
        return self._replay(refreshed, cache, key, not_modified=True)

    def _decode(
        self, response: EsiResponse, cache: ResponseCache | None, key: str
    ) -> Any:
        data = decode(response, self.operation)
        if cache is not None:
            self._store(response, cache, key)
        return data

    def _store(self, response: EsiResponse, cache: ResponseCache, key: str) -> None:
        lifetime = self._lifetime(response)
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

    def _lifetime(self, response: EsiResponse) -> float | None:
        cap_s = facts(self.operation).cache_cap_s if self.operation else DAY_S
        return freshness_s(response.headers, self.http_client.clock.now(), cap_s=cap_s)

    def _replay(
        self,
        entry: CachedResponse,
        cache: ResponseCache,
        key: str,
        *,
        not_modified: bool,
    ) -> _Answer:
        response = EsiResponse.from_cached(entry, not_modified=not_modified)
        if self.operation is None:
            return _Answer(response)
        copier = entry.decoded(_kind(self.operation))
        if copier is not None:
            return _Answer(response, copier.copy)
        decoder = functools.partial(self._decode_cached, response, entry, cache, key)
        return _Answer(response, decoder)

    def _decode_cached(
        self,
        response: EsiResponse,
        entry: CachedResponse,
        cache: ResponseCache,
        key: str,
    ) -> Any:
        """A cached body parsed; an in-process cache keeps the parsed answer.

        Each hit gets its own copy of a kept answer (see
        :mod:`worker.esi.copies`).
        """
        data = decode(response, self.operation)
        keep = getattr(cache, "keep_decoded", None)
        if keep is None:
            return data
        copier = JsonCopier.of(data, len(entry.body))
        if copier is None:
            return data
        try:
            keep(key, entry, copier, _kind(self.operation))
        except Exception as exc:  # noqa: BLE001 (a cache never fails a call)
            self._cache_failed(cache, "keep_decoded", exc)
            return data
        return copier.copy()

    def _fetch_pages(
        self,
        pages: range,
        language: str | None,
        kwargs: dict[str, Any],
        first: _Answer,
    ) -> list[_Answer]:
        """The pages, each decoded as it arrives, ``first`` in the meantime.

        The page threads only send: a thread decoding its page would send
        its next page that much later, and every page thread waits on
        the slowest of its pages.
        """
        if not pages:
            return []
        workers = min(self.http_client.settings.esi_page_concurrency, len(pages))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esi-page")
        try:
            futures = [
                pool.submit(self._fetch_page, self._variant(language, page=n), kwargs)
                for n in pages
            ]
            first.data  # noqa: B018 (decoded while the pages are on their way)
            answers = []
            for future in futures:
                answers.append(future.result())
                answers[-1].data  # noqa: B018
            return answers
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_page(self, params: dict[str, Any], kwargs: dict[str, Any]) -> _Answer:
        """A page past the first; a 404 is kept as an answer, not raised.

        ESI may answer 404 past the last page (ESI.md 3.8, unverified): when
        the snapshot shrank mid-walk that means "walk again", which
        :func:`~worker.esi.pages.disagreement` then says.
        """
        try:
            return self._fetch(params, **kwargs)
        except HTTPError as exc:
            if exc.status != 404:
                raise
            return _Answer(EsiResponse(404, exc.headers, b"", reason="Not Found"))

    def _page_count(self, response: EsiResponse) -> int:
        """``X-Pages`` of page 1, within ``settings.esi_max_pages``.

        :raises ESIError: ESI named more pages than that; none was fetched.
        """
        name = operation_name(self.operation)
        pages = _page_count(response, name)
        ceiling = self.http_client.settings.esi_max_pages
        if pages > ceiling:
            raise ESIError(
                f"ESI {name} says X-Pages {pages}, more than esi_max_pages "
                f"({ceiling}); the walk was not started"
            )
        return pages

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
        """The cache key of ``params``, worked out once per future and variant.

        The memo is keyed by what a call can change after the future was
        made: the query (page, language, cursor), the Accept-Language
        header and the client's token and headers.
        """
        http = self.http_client
        token = http.token if needs_token(self.operation) else None
        character_id = token.character_id if token is not None else None
        query = params["params"]
        memo = (
            tuple(query.items()),
            params["headers"].get("Accept-Language"),
            params["headers"].get("X-Tenant"),
            character_id,
            http.datasource,
            http.settings.esi_compatibility_date,
        )
        try:
            return self._keys[memo]
        except (KeyError, TypeError):  # TypeError: a list in the query
            pass

        sent = {**http.base_headers, **params["headers"]}
        body = params.get("data")
        if body is None and params.get("json") is not None:
            body = json.dumps(params["json"], sort_keys=True)
        key = cache_key(
            params["method"],
            params["url"],
            query,
            body=body,
            headers=[(h, str(sent[h])) for h in _KEY_HEADERS if h in sent],
            character_id=character_id,
        )
        with contextlib.suppress(TypeError):
            self._keys[memo] = key
        return key

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
        self.responses = responses = [answer.response for answer in answers]
        if len(responses) == 1:
            self.from_cache = responses[0].from_cache
            self.not_modified = responses[0].not_modified
            return
        self.from_cache = all(r.from_cache for r in responses)
        self.not_modified = all(r.not_modified for r in responses)

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


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, label: str) -> Any:
    # prometheus' labels() takes a lock and builds a tuple on every call:
    # a tenth of a cache hit. Its children live as long as the metric.
    return metric.labels(label)


def _kind(operation: Operation | None) -> str:
    """How answers of ``operation`` are decoded: dates as text or as objects."""
    plain = operation is not None and getattr(
        operation.swagger_spec, "plain_json", False
    )
    return "plain" if plain else "formats"


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
