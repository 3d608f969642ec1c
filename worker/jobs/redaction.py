"""A run's error text, free of secrets, before it is stored or shown.

A job may fail with an exception that quotes its token (a helper that
put the access token in a URL, a message that names the refresh token):
the text goes to ``esi_job_run.error``, to ``esi-worker jobs runs`` and
to the logs. The secrets the run held are replaced wherever they appear,
then anything secret-shaped is masked as the log filter masks it.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..logs import REDACTED, redact

if TYPE_CHECKING:
    from ..settings import Settings

# A secret in a query string or a URL's user info, which the log
# filter's patterns (made for headers and bodies) leave alone.
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:token|code|state|secret|password|key|assertion)=)[^&\s'\"#]+"
)
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+(@)")
# Shorter strings would mask ordinary words; no secret is this short.
_MIN_SECRET_LEN = 8


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without any of ``secrets`` and without anything secret-shaped."""
    known = {s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = redact(text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)


def error_text(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """``Type: message`` of ``exc``, scrubbed."""
    return scrub(f"{type(exc).__name__}: {exc}", secrets)


def traceback_text(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """The whole traceback of ``exc`` (with its causes), scrubbed."""
    return scrub("".join(traceback.format_exception(exc)).rstrip(), secrets)


def settings_secrets(settings: Settings) -> list[str]:
    """The secrets of the worker's own configuration."""
    values = [settings.sso_client_secret, *settings.token_keys]
    found = [value.get_secret_value() for value in values if value is not None]
    return [*found, *_url_passwords(settings.broker_url, settings.database_url)]


def _url_passwords(*urls: str | None) -> list[str]:
    passwords = []
    for url in urls:
        try:
            passwords.append(urlsplit(url or "").password)
        except ValueError:  # malformed (an unclosed IPv6 bracket): no user info
            continue
    # A password may be quoted in the URL and appear unquoted in a message.
    return [form for p in passwords if p for form in {p, unquote(p)}]
