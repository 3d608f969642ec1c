"""The redaction filter masks anything secret-shaped in log records."""

from __future__ import annotations

import logging

import pytest

from worker.logs import RedactingFilter, redact

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
