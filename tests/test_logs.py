"""The redaction filter masks anything secret-shaped in log records."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from requests_oauthlib import OAuth2Session

from worker.logs import LIBRARY_LOGGERS, RedactingFilter, guard_library_loggers, redact

ASSETS = "esi-assets.read_assets.v1"

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


class _Everything(logging.Handler):
    """Keeps every record of every logger, formatted the way a handler would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {self.format(record)}")


@pytest.fixture
def everything() -> Iterator[_Everything]:
    """Every logger at DEBUG into a plain handler, as a web app might set it.

    The libraries' loggers are turned up too: an earlier CLI test in this
    process may have set them to WARNING.
    """
    root = logging.getLogger()
    handler, level = _Everything(), root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in libraries:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)
    for name, old in libraries.items():
        logging.getLogger(name).setLevel(old)


def test_a_library_user_logging_everything_at_debug_sees_no_secret(
    everything, runtime, emulator
):
    # given the worker used as a library, with no CLI logging set-up, and
    # an SSO that rotates refresh tokens
    emulator.configure(rotation="rotate_reject_old")
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])
    token = runtime.tokens.import_grant(grant)

    # when the token is refreshed twice and revoked
    first = runtime.tokens.refresh(token)
    second = runtime.tokens.refresh(first)
    runtime.tokens.revoke(second)

    # then no log line of any library holds any of the secrets
    text = "\n".join(everything.lines)
    secrets = [grant.refresh_token, first.refresh_token, second.refresh_token]
    secrets += [first.access_token, second.access_token, emulator.client_secret]
    assert everything.lines
    for secret in secrets:
        assert secret not in text


def test_requests_oauthlib_called_directly_is_masked_too(everything, runtime, emulator):
    # given an SSO client created (as any runtime does), and application
    # code that uses requests-oauthlib itself
    grant = emulator.create_grant(2112000001, "Test Pilot One", [ASSETS])
    session = OAuth2Session(emulator.client_id)

    # when it refreshes a token with it
    answer = session.refresh_token(
        f"{emulator.base_url}/v2/oauth/token",
        refresh_token=grant.refresh_token,
        auth=(emulator.client_id, emulator.client_secret),
    )

    # then requests-oauthlib logged the exchange, with the secrets masked
    logged = [line for line in everything.lines if line.startswith("requests_oauthlib")]
    assert logged
    text = "\n".join(logged)
    for secret in (grant.refresh_token, answer["refresh_token"], answer["access_token"]):
        assert secret not in text


def test_guarding_the_library_loggers_twice_adds_one_filter() -> None:
    guard_library_loggers()
    guard_library_loggers()

    for name in LIBRARY_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RedactingFilter) for f in filters) == 1


def test_a_log_line_names_the_job_character_and_run_it_is_about() -> None:
    from worker.logs import ContextFormatter

    formatter = ContextFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("jobs.wallet", logging.INFO, __file__, 1, "ran", (), None)
    record.job, record.character_id, record.run_id = "wallet", 2112000001, 7
    plain = logging.LogRecord("worker.db", logging.INFO, __file__, 1, "up", (), None)

    assert formatter.format(record) == (
        "INFO jobs.wallet: ran [job=wallet character_id=2112000001 run_id=7]"
    )
    assert formatter.format(plain) == "INFO worker.db: up"


def test_a_runs_logger_keeps_a_calls_own_extra_beside_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.jobs import JobContext, job

    @job("logged", every=600)
    def logged(ctx: JobContext) -> None: ...

    ctx = JobContext(job=logged, runtime=None, character_id=96224792, run_id=3)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="jobs.logged")

    ctx.log.info("read %d pages", 2, extra={"operation": "get_markets"})

    [record] = caplog.records
    assert (record.job, record.character_id, record.run_id) == ("logged", 96224792, 3)
    assert record.operation == "get_markets"  # type: ignore[attr-defined]
