"""The one place SSO token-endpoint answers are classified.

Every answer (or failure to get one) becomes ``None`` (usable) or one of
:class:`SSOGrantError` (the grant is dead), :class:`SSOConfigurationError`
(our client credentials were refused) and :class:`SSOTransientError`
(try again later; :class:`SSOIncompleteResponseError` when a 200 lacks
its access token); :func:`sso_class` names the class for metrics, and
:func:`may_have_acted` tells whether a failed request may still have
rotated the refresh token at the SSO.
"""

from __future__ import annotations

import json
import math
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    SSOIncompleteResponseError,
    SSOTransientError,
)
from ..httpdate import parse_http_date

GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token"})
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
SSO_CLASSES = ("success", "dead_grant", "config", "transient", "none")
# A Retry-After beyond this is read as this: an SSO (or a proxy) asking for
# days must not park a token until its refresh token idles out.
RETRY_AFTER_MAX_S = 3600.0


def classify_token_error(
    response: requests.Response | None = None,
    *,
    exc: BaseException | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> SSOError | None:
    """The error a token-endpoint answer amounts to; ``None`` when usable.

    :param response: the HTTP answer, when one came.
    :param exc: the exception raised instead of an answer (timeout, ...).
    """
    if response is None:
        return _no_answer(exc)

    status = response.status_code
    if status == 429:
        return SSOTransientError(
            "SSO throttled the request (429)",
            status=status,
            retry_after_s=_retry_after_s(response, clock),
        )
    if status >= 500:
        return SSOTransientError(f"SSO answered {status}", status=status)

    body = _json_object(response)
    if body is None:
        return SSOTransientError(
            f"SSO answered {status} without a JSON object", status=status
        )
    error = _error_code(body.get("error"))
    if error in GRANT_ERRORS:
        return SSOGrantError(
            f"SSO rejected the grant ({error})", status=status, error=error
        )
    if error in CLIENT_ERRORS:
        return SSOConfigurationError(
            f"SSO rejected the client credentials ({error}); check "
            "ESI_WORKER_SSO_CLIENT_ID and ESI_WORKER_SSO_CLIENT_SECRET",
            status=status,
            error=error,
        )
    if error is not None or status != 200:
        return SSOTransientError(
            f"SSO answered {status} ({error or 'no error code'})",
            status=status,
            error=error,
        )
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        # Both: incomplete (django-esi's name for it) and worth retrying.
        return SSOIncompleteResponseError(
            "SSO answered 200 without an access token", status=status
        )
    return None


def answer_body(response: requests.Response) -> dict[str, Any] | None:
    """The answer's JSON object, or ``None`` when the body is not one."""
    return _json_object(response)


def may_have_acted(error: BaseException) -> bool:
    """Whether the SSO may have carried out a request that failed this way.

    A refused grant or client, a throttled or rejected request, or a
    connection that never opened did nothing at the SSO. A timeout after
    the request went out, a dropped connection, a 5xx (a gateway can fail
    after the SSO answered) or a garbled 200 may have rotated the refresh
    token without our hearing of the new one.
    """
    if isinstance(error, (SSOGrantError, SSOConfigurationError)):
        return False
    if not isinstance(error, SSOError):
        return True
    status = error.status
    if status is None:
        return not _never_sent(error.__cause__)
    return status == 200 or status >= 500


def sso_class(error: BaseException | None, *, answered: bool = True) -> str:
    """The metric label of an SSO outcome; ``none`` when no SSO call was made."""
    if not answered:
        return "none"
    if error is None:
        return "success"
    if isinstance(error, SSOGrantError):
        return "dead_grant"
    if isinstance(error, SSOConfigurationError):
        return "config"
    return "transient"


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _no_answer(exc: BaseException | None) -> SSOTransientError:
    """The error for a request that got no HTTP answer at all."""
    kind = type(exc).__name__ if exc is not None else "no answer"
    if exc is None or _never_sent(exc):
        return SSOTransientError(f"SSO token endpoint unreachable ({kind})")
    # Unlike an unreachable endpoint, this one got the request: with
    # rotation, the refresh token sent may be spent already.
    return SSOTransientError(
        f"SSO token endpoint sent no answer ({kind}); unlike an unreachable "
        "endpoint, it got the request and may have acted on it"
    )


def _never_sent(exc: BaseException | None) -> bool:
    """Whether the request failed before a connection to the SSO was open."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _error_code(value: Any) -> str | None:
    """The OAuth error code; the SSO once sent ``"invalid_grant: <text>"``."""
    if not isinstance(value, str) or not value:
        return None
    code = value.split(":", 1)[0].strip().lower()
    return code if code.replace("_", "").isalpha() else "malformed"


def _retry_after_s(response: requests.Response, clock: Clock) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return _bounded(float(value))
    except ValueError:
        pass
    when = parse_http_date(value)
    if when is None:
        return None
    return _bounded((when - clock.now()).total_seconds())


def _bounded(seconds: float) -> float | None:
    """A wait between 0 and :data:`RETRY_AFTER_MAX_S`; ``None`` for NaN."""
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_MAX_S, max(0.0, seconds))
