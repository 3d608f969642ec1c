"""The redaction filter masks anything secret-shaped in log records."""

from __future__ import annotations

import logging

import pytest

from worker.logs import LIBRARY_LOGGERS, RedactingFilter, guard_library_loggers, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJDSEFSQUNURVI6RVZFOjEifQ.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"Authorization: Bearer {JWT}", JWT),
        ("grant_type=refresh_token&refresh_token=MDEyMzQ1Njc4OWFiY2RlZg==", "MDEyMzQ1Njc4OWFiY2RlZg"),
        ('{"access_token": "abc.def.ghi", "x": 1}', "abc.def.ghi"),
        ("client_secret=hunter2hunter2", "hunter2hunter2"),
        ("Basic ZXNpOnNlY3JldA==", "ZXNpOnNlY3JldA"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_filter_masks_arguments_and_exception_text() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "token %s", (JWT,), None)
    try:
        raise RuntimeError(f"failed with {JWT}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()

    RedactingFilter().filter(record)

    assert JWT not in record.getMessage()
    assert record.exc_text is not None and JWT not in record.exc_text


def test_plain_text_is_left_alone() -> None:
    assert redact("stored 2338 market orders of region 10000070") == (
        "stored 2338 market orders of region 10000070"
    )


@pytest.mark.parametrize(
    "text, secret",
    [
        ("GET /callback?code=Zm9vYmFyYmF6cXV4&state=abc HTTP/1.1", "Zm9vYmFyYmF6cXV4"),
        ("GET /latest/characters/1/assets/?datasource=x&token=tok3n.v4lue", "tok3n.v4lue"),
        ("data {'grant_type': 'authorization_code', 'code': 'c0de-value'}", "c0de-value"),
        ('{"code": "c0de-value"}', "c0de-value"),
        ("code=abc&amp;code=zyx", "zyx"),
    ],
)
def test_codes_and_query_tokens_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(
    "text",
    ["the process ended with exit code: 1", "ESI error code 420", "token 17 refreshed"],
)
def test_prose_about_codes_and_tokens_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_guarding_the_library_loggers_twice_adds_one_filter() -> None:
    guard_library_loggers()
    guard_library_loggers()

    for name in LIBRARY_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RedactingFilter) for f in filters) == 1
