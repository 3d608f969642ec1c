"""ESI replay: route, check, limit, and answer from the recordings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import time
import uuid
from typing import Any

import jwt

from . import cursor, planner, synthetic
from .cache import (
    DEFAULT_LIFETIME_S,
    CacheGenerations,
    cache_headers,
    etag_matches,
    make_etag,
    mutate,
)
from .config import parse_limit
from .limits import BucketLimiter, ErrorLimiter
from .messages import (
    Request,
    Response,
    answer_after,
    error_response,
    http_date,
    json_bytes_response,
    json_response,
    text_response,
)
from .operations import Match, Operation, OperationTable, SpecDocuments
from .recordings import RecordingLibrary, Snapshot, normalize_language
from .state import EmulatorState

log = logging.getLogger(__name__)

LANGUAGES = ("en", "en-us", "de", "fr", "ja", "ru", "zh", "ko", "es")
_OPENAPI_DOCUMENTS = {"/meta/openapi.json": "3.1.0", "/meta/openapi-3.0.json": "3.0.3"}
_SPEC_PUBLISHED_S = 1_765_843_200.0  # 2025-12-16, the newest default date
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY_FLIP = dt.timedelta(hours=11)


@dataclasses.dataclass
class _Call:
    """What is known about one ESI request as it moves through the checks."""

    request: Request
    match: Match | None
    claims: dict[str, Any] | None = None
    auth_problem: str = ""
    character_id: int | None = None
    compatibility_date: str | None = None
    # An injected fault sent bare, as a game-side limiter's 429 comes.
    bare: bool = False


class ESIService:
    """Answers every path that is not SSO or admin, the way ESI would."""

    def __init__(
        self,
        state: EmulatorState,
        table: OperationTable,
        library: RecordingLibrary,
        documents: SpecDocuments,
    ) -> None:
        self._state = state
        self._table = table
        self._library = library
        self._documents = documents
        self.generations = CacheGenerations(state.clock)
        self.errors = ErrorLimiter(state.clock)
        self.buckets = BucketLimiter(state.clock)
        self._rate_limits: dict[str, tuple[str, str] | None] = {}

    def clear(self) -> None:
        """Forget cache generations and limiter history."""
        self.generations.clear()
        self.errors.clear()
        self.buckets.clear()

    def handle(self, request: Request) -> Response:
        """The full answer to one ESI request, limits and counters included."""
        started = time.monotonic()
        config = self._state.switches
        version, bare = self._table.split_version(request.path)
        call = _Call(request, self._table.match(request.method, bare))
        if call.match is not None and call.match.operation.authed:
            self._identify(call)

        bucket = self._bucket(call)
        remain, _ = self.errors.state(
            config.error_budget, config.error_window_s, config.reset_rounding
        )
        if remain <= 0:
            response = error_response(
                420,
                "This software has exceeded the error "
                "limit for ESI. Please fix the error rate.",
            )
        elif bucket is not None and (limited := self._bucket_refusal(call, bucket)):
            response = limited
        else:
            response = self._answer(call, version, bare)
        if _counts_as_error(config, response.status, bucket is not None):
            self.errors.record(response.status, config.error_window_s)

        if not call.bare:
            self._limit_headers(call, response, bucket, remain <= 0)
        if config.warning_headers and version is not None:
            _add_warning(response, version)
        response.headers.append(("X-Esi-Request-Id", str(uuid.uuid4())))
        if version is None and bare.startswith("/meta/") or bare == "/swagger.json":
            self._state.stats.spec_request(request.path, response.status)
        else:
            self._state.stats.esi_request(request.path, response.status)
        answer_after(started, config.esi_latency_s)
        return response

    def _answer(self, call: _Call, version: str | None, bare: str) -> Response:
        special = self._document(call.request, version, bare)
        if special is not None:
            return special
        if call.match is None:
            return self._not_found(version, bare)

        for check in (
            self._check_params,
            self._check_compatibility_date,
            self._check_fault,
            self._check_auth,
        ):
            refusal = check(call)
            if refusal is not None:
                return refusal
        if call.match.operation.operation_id == planner.OPERATION_ID:
            response = self._plan_route(call)
        else:
            response = self._replay(call)
        if call.compatibility_date:
            response.headers.append(("X-Compatibility-Date", call.compatibility_date))
        return response

    def _plan_route(self, call: _Call) -> Response:
        """The route planner's recorded answer to this very request."""
        assert call.match is not None
        try:
            body = call.request.json()
        except ValueError:
            return error_response(400, "Request body must be JSON")
        if not planner.is_valid(body):
            return error_response(400, "Request body does not fit the route planner")
        recording = planner.find(self._library, call.match.path_params, body)
        if recording is None:
            return error_response(
                404, "Not found: the emulator has no recording for this request"
            )
        # A POST: no cache headers, as recorded (X-Esi-Cache-Status DYNAMIC).
        language = recording.headers.get("content-language", "en")
        return json_bytes_response(
            recording.status, recording.body, [("Content-Language", language)]
        )

    def _document(
        self, request: Request, version: str | None, bare: str
    ) -> Response | None:
        """Spec and meta documents, or None for an ordinary route."""
        if request.method != "GET":
            return None
        if version is not None and bare == "/swagger.json":
            if not self._state.switches.legacy_swagger:
                # Today's ESI: the Swagger files are gone (ESI.md 3.1b).
                return text_response(404, "404 page not found")
            return json_bytes_response(200, self._documents.swagger(version))
        if version is None and bare in _OPENAPI_DOCUMENTS:
            return self._live_spec(request, _OPENAPI_DOCUMENTS[bare])
        if version is None and bare == "/meta/openapi-sample.json":
            return json_bytes_response(200, self._documents.openapi())
        if version is None:
            synthetic = cursor.answer(request, self._state.switches.cursor_records)
            if synthetic is not None:
                return synthetic
        if version is None and bare == "/meta/compatibility-dates":
            dates = sorted(self._state.switches.compatibility_dates, reverse=True)
            return json_response(
                200,
                {"compatibility_dates": dates},
                [("Cache-Control", "public, max-age=600")],
            )
        return None

    def _live_spec(self, request: Request, openapi_version: str) -> Response:
        """The full spec; answers 304 to its ETag like any cached route."""
        dates = tuple(sorted(self._state.switches.compatibility_dates, reverse=True))
        asked = request.query.get("compatibility_date") or request.header(
            "X-Compatibility-Date"
        )
        if asked is not None and asked not in dates:
            asked = max((d for d in dates if d <= asked), default=None)
            if asked is None:
                return error_response(400, "Invalid compatibility date")
        body = self._documents.live(openapi_version, dates, self._rate_limit_for)
        etag = make_etag(None, body, 0.0)
        headers = [
            ("ETag", etag),
            ("Last-Modified", http_date(_SPEC_PUBLISHED_S)),
            ("Cache-Control", "public, max-age=300"),
        ]
        if etag_matches(request.header("If-None-Match"), etag):
            return Response(304, headers, b"")
        return json_bytes_response(200, body, headers)

    def _rate_limit_for(self, operation_id: str) -> tuple[str, str] | None:
        op = self._table.by_id.get(operation_id)
        return self._rate_limit_of(op) if op is not None else None

    def _not_found(self, version: str | None, bare: str) -> Response:
        if self._table.path_exists(bare):
            return error_response(405, "Method not allowed on this route")
        if version is None:
            return text_response(404, "404 page not found")
        return error_response(404, "Not found")

    def _check_params(self, call: _Call) -> Response | None:
        assert call.match is not None
        for name in call.match.operation.int_params:
            if not call.match.path_params[name].isdigit():
                return error_response(
                    400,
                    f"path parameter {name} must be an "
                    f"integer, got {call.match.path_params[name]!r}",
                )
        page = call.request.query.get("page", "1")
        if not page.isdigit() or int(page) < 1:
            return error_response(400, f"page must be a positive integer, got {page!r}")
        return None

    def _check_compatibility_date(self, call: _Call) -> Response | None:
        assert call.match is not None
        dates = sorted(self._state.switches.compatibility_dates)
        asked = call.request.header("X-Compatibility-Date") or call.request.query.get(
            "compatibility_date"
        )
        if asked is None:
            call.compatibility_date = dates[0]
            if call.match.operation.since is not None:
                return text_response(404, "404 page not found")
            return None
        # ESI's day flips at 11:00 UTC (ESI.md 3.1b).
        today = (self._state.clock.now().astimezone(dt.UTC) - _DAY_FLIP).date()
        well_formed = bool(_DATE_RE.match(asked))
        in_range = well_formed and dates[0] <= asked <= today.isoformat()
        refusal = self._state.switches.bad_compatibility_date
        if not well_formed or (not in_range and refusal is not None):
            return error_response(
                refusal or 400,  # a malformed date cannot be clamped
                f"Invalid compatibility date {asked!r}: use "
                f"a date from {dates[0]} up to {today.isoformat()}",
            )
        asked = min(max(asked, dates[0]), today.isoformat())
        call.compatibility_date = max(d for d in dates if d <= asked)
        since = call.match.operation.since
        if since is not None:
            # A newer route exists from its own date on, and says so.
            if asked < since:
                return text_response(404, "404 page not found")
            call.compatibility_date = since
        return None

    def _check_fault(self, call: _Call) -> Response | None:
        page = call.request.query.get("page", "1")
        fault = self._state.take_esi_fault(
            _slashed(call.request.path), int(page) if page.isdigit() else 1
        )
        if fault is None:
            return None
        headers = []
        if fault.get("retry_after") is not None:
            retry_after = self._retry_after(float(fault["retry_after"]))
            headers.append(("Retry-After", retry_after))
        call.bare = not fault.get("limit_headers", True)
        status = int(fault["status"])
        if fault.get("cut_body") or fault.get("garbled_gzip"):
            return self._broken_body(call, status, fault)
        return error_response(status, "Injected fault", headers)

    def _broken_body(self, call: _Call, status: int, fault: Any) -> Response:
        """An answer whose body breaks on the way: cut off, or not the gzip
        its ``Content-Encoding`` claims."""
        response = self._replay(call) if 200 <= status < 300 else error_response(
            status, "Injected fault"
        )
        if fault.get("garbled_gzip"):
            response.set_header("Content-Encoding", "gzip")
            response.body = b"this is not gzip"
        else:
            response.cut = True
            response.body = response.body or b'{"error": "Injected fault"}'
        return response

    def _check_auth(self, call: _Call) -> Response | None:
        assert call.match is not None
        op = call.match.operation
        if not op.authed:
            return None
        if call.claims is None:
            return error_response(401, call.auth_problem)
        if op.scope not in _scopes_of(call.claims):
            return error_response(403, f"token not valid for scope(s): {op.scope}")
        path_character = call.match.path_params.get("character_id")
        if path_character is not None and int(path_character) != call.character_id:
            return error_response(403, "token is not valid for this character")
        if op.required_roles and not synthetic.holds_required_role(
            self._roles_of(call.character_id), op.required_roles
        ):
            return error_response(403, "Character does not have required role(s)")
        return None

    def _roles_of(self, character_id: int | None) -> tuple[str, ...]:
        roles = self._state.switches.character_roles
        return roles.get(str(character_id), ()) if character_id is not None else ()

    def _identify(self, call: _Call) -> None:
        """Verify the access token, if any, and note whose it is."""
        header = call.request.header("Authorization") or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or call.request.query.get("token", "")
        if not token:
            call.auth_problem = "authentication required: no access token sent"
            return

        try:
            call.claims = self._state.keys.verify(token)
        except jwt.ExpiredSignatureError:
            call.auth_problem = "token is expired"
            return
        except jwt.PyJWTError:
            call.auth_problem = "authentication failure: token is invalid"
            return
        subject = str(call.claims.get("sub", ""))
        call.character_id = (
            int(subject.rsplit(":", 1)[-1]) if subject[-1:].isdigit() else None
        )

    def _replay(self, call: _Call) -> Response:
        assert call.match is not None
        op, request = call.match.operation, call.request
        language: str | None = None
        language_tag = "en"
        if op.localized:
            language_tag = (
                request.query.get("language")
                or _first_language(request.header("Accept-Language"))
                or "en"
            ).lower()
            if language_tag not in LANGUAGES:
                if self._state.switches.unknown_language == "400":
                    return error_response(
                        400,
                        f"Unsupported language {language_tag!r}; "
                        f"use one of {', '.join(LANGUAGES)}",
                    )
                language_tag = "en"
            language = normalize_language(language_tag)

        found = self._synthetic(op, call)
        if found is None:
            found = self._library.find(
                op.operation_id, call.match.path_params, language
            )
        if found is None:
            return error_response(
                404, "Not found: the emulator has no recording for this request"
            )
        snapshot, served = found
        page = int(request.query.get("page", "1"))
        lifetime = (
            self._state.switches.cache_ttl_s
            or snapshot.lifetime_s()
            or op.cached_seconds
            or DEFAULT_LIFETIME_S
        )
        key = (op.operation_id, tuple(sorted(call.match.path_params.items())), served)
        gen = self.generations.current(key, lifetime)
        mutation = self._mutation(request.path)
        page_count = _page_count(snapshot.page_count, mutation, gen.number)
        recording = snapshot.pages.get(page) if page <= page_count else None
        if recording is None:
            return self._past_last_page(op, gen, page_count)

        if not 200 <= recording.status < 300:
            return json_bytes_response(recording.status, recording.body)
        body, etag = recording.body, None
        if mutation is not None:
            self.generations.served(
                key, mutation.get("bump_after"), int(mutation.get("bumps", 1))
            )
            body, etag = mutate(body, gen.number, page in mutation["stable_pages"])

        etag = etag or make_etag(recording.headers.get("etag"), body, gen.start)
        headers = cache_headers(gen.now, gen.start, gen.end, etag, private=op.authed)
        if op.paged:
            headers.append(("X-Pages", str(page_count)))
        if op.localized:
            headers.append(
                ("Content-Language", language_tag if served == language else "en")
            )
        if request.method == "GET" and etag_matches(
            request.header("If-None-Match"), etag
        ):
            return Response(304, headers, b"")
        return json_bytes_response(recording.status, body, headers)

    def _past_last_page(self, op: Operation, gen: Any, page_count: int) -> Response:
        """What ESI answers past the last page: 404 or an empty page (a switch)."""
        if self._state.switches.past_last_page == "404":
            return error_response(404, "Requested page does not exist!")
        etag = make_etag(None, b"[]", gen.start)
        headers = cache_headers(gen.now, gen.start, gen.end, etag, private=op.authed)
        headers.append(("X-Pages", str(page_count)))
        return json_bytes_response(200, b"[]", headers)

    def _retry_after(self, seconds: float) -> str:
        """A ``Retry-After`` value as the switches have ESI write it."""
        config = self._state.switches
        rounded = math.ceil if config.reset_rounding == "up" else math.floor
        if config.retry_after_format == "http-date":
            return http_date(rounded(self._state.clock.time() + seconds))
        return str(rounded(seconds))

    def _synthetic(
        self, op: Operation, call: _Call
    ) -> tuple[Snapshot, str | None] | None:
        """The generated answer of a synthetic route, else None (see synthetic)."""
        assert call.match is not None
        if op.operation_id == synthetic.ROLES_OPERATION:
            # _check_auth made sure the path names the token's character.
            return synthetic.roles_snapshot(self._roles_of(call.character_id)), None
        if _is_synthetic_market(op, call.match.path_params):
            return synthetic.market_snapshot(), None
        return None

    def _mutation(self, path: str) -> dict[str, Any] | None:
        for mutation in self._state.switches.esi_mutations:
            if str(mutation["path_contains"]) in _slashed(path):
                return {**mutation, "stable_pages": set(mutation.get("stable_pages", ()))}
        return None

    # -- limits ------------------------------------------------------------

    def _bucket(self, call: _Call) -> tuple[str, int, float] | None:
        """(group, max tokens, window) when the operation is bucket-limited."""
        if call.match is None:
            return None
        op = call.match.operation
        if op.operation_id not in self._rate_limits:
            self._rate_limits[op.operation_id] = self._rate_limit_of(op)
        found = self._rate_limits[op.operation_id]
        if found is None:
            return None
        group, limit = found
        limit = self._state.switches.bucket_overrides.get(group, limit)
        tokens, window_s = parse_limit(limit)
        return group, tokens, window_s

    def _rate_limit_of(self, op: Operation) -> tuple[str, str] | None:
        recorded = self._library.rate_limit(op.operation_id)
        if recorded is not None:
            return recorded
        if op.rate_limit is not None:
            group, tokens, window_s = op.rate_limit
            return group, f"{tokens}/{int(window_s // 60)}m"
        return None

    def _bucket_refusal(
        self, call: _Call, bucket: tuple[str, int, float]
    ) -> Response | None:
        group, tokens, window_s = bucket
        _remaining, wait_s = self.buckets.check(
            self._bucket_key(call, group), tokens, window_s
        )
        if not wait_s:
            return None
        headers = [("Retry-After", self._retry_after(wait_s))]
        return error_response(429, "Too many requests: rate limit exceeded", headers)

    def _limit_headers(
        self,
        call: _Call,
        response: Response,
        bucket: tuple[str, int, float] | None,
        error_limited: bool,
    ) -> None:
        # ESI sends one header set or the other on a response, never both.
        config = self._state.switches
        if bucket is None or error_limited:
            remain, reset_s = self.errors.state(
                config.error_budget, config.error_window_s, config.reset_rounding
            )
            response.headers.append(("X-Esi-Error-Limit-Remain", str(remain)))
            response.headers.append(("X-Esi-Error-Limit-Reset", str(reset_s)))
            return
        group, tokens, window_s = bucket
        cost, remaining = self.buckets.spend(
            self._bucket_key(call, group), response.status, tokens, window_s
        )
        if config.ratelimit_remaining == "before":
            remaining = min(tokens, remaining + cost)
        window = f"{int(window_s // 60)}m" if window_s >= 60 else f"{int(window_s)}s"
        response.headers += [
            ("X-Ratelimit-Group", group),
            ("X-Ratelimit-Limit", f"{tokens}/{window}"),
            ("X-Ratelimit-Remaining", str(remaining)),
            ("X-Ratelimit-Used", str(cost)),
        ]

    def _bucket_key(self, call: _Call, group: str) -> tuple[str, str]:
        if call.character_id is not None:
            return group, f"character:{call.character_id}"
        return group, f"ip:{call.request.client_ip}"


def _is_synthetic_market(op: Operation, path_params: dict[str, str]) -> bool:
    return (
        op.operation_id == "get_markets_region_id_orders"
        and path_params.get("region_id") == synthetic.SYNTHETIC_REGION
    )


def _slashed(path: str) -> str:
    """The path with a trailing slash, so Swagger-era fault paths match both."""
    return path if path.endswith("/") else path + "/"


def _scopes_of(claims: dict[str, Any]) -> set[str]:
    scp = claims.get("scp")
    if scp is None:
        return set()
    return set(scp.split()) if isinstance(scp, str) else set(scp)


def _first_language(header: str | None) -> str | None:
    if not header:
        return None
    first = header.split(",")[0].split(";")[0].strip()
    return first or None


def _counts_as_error(config: Any, status: int, bucket_route: bool) -> bool:
    """Whether an answer spends the error budget, as the switches have it."""
    if status < 400 or status == 420:
        return False
    if status == 429 and not config.errors_count_429:
        return False
    return config.bucket_errors_count or not bucket_route


def _page_count(recorded: int, mutation: dict[str, Any] | None, generation: int) -> int:
    """X-Pages of a generation: fewer than recorded when a mutation says so."""
    counts = (mutation or {}).get("pages") or []
    if not counts:
        return recorded
    return min(recorded, counts[min(generation, len(counts) - 1)])


def _add_warning(response: Response, version: str) -> None:
    """The legacy ``Warning`` header (ESI.md 3.1a, L-ESI warning_header)."""
    if version == "legacy":
        response.headers.append(("Warning", '299 - "This route is deprecated."'))
    elif version.startswith("v"):
        response.headers.append(
            ("Warning", '199 - "This route has an upgrade available."')
        )
