"""Requests and responses as the emulator's handlers see them."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from .. import httpdate


@dataclasses.dataclass
class Request:
    """One parsed HTTP request; header names are matched case-insensitively."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    client_ip: str = "127.0.0.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name``, or ``default``."""
        value = self.headers.get(name)
        return default if value is None else value

    def form(self) -> dict[str, str] | None:
        """The body as an urlencoded form, or None when it is not one."""
        content_type = (self.header("Content-Type") or "").split(";")[0].strip()
        if content_type.lower() != "application/x-www-form-urlencoded":
            return None
        try:
            pairs = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return None
        return {name: values[0] for name, values in pairs.items()}

    def json(self) -> Any:
        """The body parsed as JSON.

        :raises ValueError: the body is not JSON.
        """
        return json.loads(self.body.decode("utf-8") or "null")


@dataclasses.dataclass
class Response:
    """Status, header pairs and the exact body bytes to send."""

    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    # Fault injection: send half the body under the full Content-Length,
    # then drop the connection, as a connection broken mid-body looks.
    cut: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of header ``name`` by ``value``."""
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]
        self.headers.append((name, value))


# Not an answer: the server closes the connection without writing anything,
# as a proxy dropping it would.
DROP_CONNECTION = Response(0)


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A JSON response with ``payload`` serialised compactly."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return json_bytes_response(status, body, headers)


def json_bytes_response(
    status: int, body: bytes, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A JSON response around already serialised bytes."""
    all_headers = [("Content-Type", "application/json; charset=UTF-8")]
    return Response(status, all_headers + list(headers or ()), body)


def text_response(status: int, text: str) -> Response:
    """A plain-text response."""
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    return Response(status, headers, text.encode("utf-8"))


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    """ESI's error shape: ``{"error": message}``."""
    return json_response(status, {"error": message}, headers)


def http_date(epoch_s: float) -> str:
    """An RFC 7231 date for ``epoch_s``."""
    return email.utils.formatdate(epoch_s, usegmt=True)


def parse_http_date(text: str | None) -> float | None:
    """Seconds since the epoch for an RFC 7231 date, or None."""
    parsed = httpdate.parse_http_date(text)
    return parsed.timestamp() if parsed is not None else None


def answer_after(started: float, latency_s: float) -> None:
    """Hold an answer until ``latency_s`` after ``started`` (monotonic).

    The configured latency is the time to answer: the emulator's own work
    on the request counts towards it instead of adding to it, so a
    benchmark at 50 ms sees 50 ms, however long signing a JWT took.
    """
    if latency_s > 0:
        remaining = latency_s - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
