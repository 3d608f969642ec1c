"""The one place SSO token-endpoint answers are classified.

Every answer (or failure to get one) becomes ``None`` (usable) or one of
:class:`SSOGrantError` (the grant is dead), :class:`SSOConfigurationError`
(our client credentials were refused) and :class:`SSOTransientError`
(try again later); :func:`sso_class` names the class for metrics.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from typing import Any

import requests

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    SSOConfigurationError,
    SSOError,
    SSOGrantError,
    SSOTransientError,
)

GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token"})
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
SSO_CLASSES = ("success", "dead_grant", "config", "transient", "none")


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
        kind = type(exc).__name__ if exc is not None else "no answer"
        return SSOTransientError(f"SSO token endpoint unreachable ({kind})")

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
        return SSOTransientError(
            "SSO answered 200 without an access token", status=status
        )
    return None


def raise_for_answer(response: requests.Response) -> requests.Response:
    """requests-oauthlib compliance hook: our classification before its parser."""
    error = classify_token_error(response)
    if error is not None:
        raise error
    return response


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
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


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
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - clock.now()).total_seconds())
