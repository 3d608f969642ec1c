"""Settings are read once, validated, and never show a secret."""

from __future__ import annotations

import datetime as dt

import pytest

from worker.errors import ConfigurationError
from worker.settings import Settings


def test_invalid_values_are_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_WORKER_METRICS_PORT", "not-a-port")
    monkeypatch.setenv("ESI_WORKER_ESI_COMPATIBILITY_DATE", "yesterday")

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env()

    assert "ESI_WORKER_METRICS_PORT" in str(caught.value)
    assert "ESI_WORKER_ESI_COMPATIBILITY_DATE" in str(caught.value)


def test_a_future_compatibility_date_is_refused() -> None:
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()

    with pytest.raises(ConfigurationError, match="future"):
        Settings.from_env(esi_compatibility_date=tomorrow)


def test_lists_and_mappings_are_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_WORKER_MARKET_REGIONS", "[10000002, 10000043]")
    monkeypatch.setenv("ESI_WORKER_JOB_INTERVALS", '{"market_orders": 600}')

    settings = Settings.from_env()

    assert settings.market_regions == [10000002, 10000043]
    assert settings.job_intervals == {"market_orders": 600.0}


def test_repr_hides_the_client_secret_and_url_passwords() -> None:
    settings = Settings.from_env(
        sso_client_secret="very-secret-value",
        database_url="postgresql://app:db-password@db.example/esi",
        broker_url="redis://:redis-password@cache.example:6379/0",
    )

    text = repr(settings)

    assert "very-secret-value" not in text
    assert "db-password" not in text
    assert "redis-password" not in text


def test_user_agent_names_app_version_and_contact() -> None:
    settings = Settings.from_env(
        app_name="AllianceTool", app_version="2.1", contact_email="ops@example.org"
    )

    assert settings.user_agent.startswith("AllianceTool/2.1 (ops@example.org) esi-worker/")


def test_replace_validates_the_new_values() -> None:
    settings = Settings.from_env()

    with pytest.raises(ConfigurationError, match="ESI_WORKER_ESI_BASE_URL"):
        settings.replace(esi_base_url="esi.example")


def test_user_agent_of_the_worker_run_as_it_is_names_it_once() -> None:
    from worker import __version__

    settings = Settings(contact_email="ops@example.org")

    assert settings.user_agent == f"esi-worker/{__version__} (ops@example.org)"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ESI_WORKER_JOB_INTERVALS", "not json"),
        ("ESI_WORKER_MARKET_REGIONS", "[abc]"),
        ("ESI_WORKER_TYPE_IDS", "34,35"),
        ("ESI_WORKER_DISABLED_JOBS", "market_orders"),
    ],
)
def test_a_list_or_mapping_that_is_not_json_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    monkeypatch.setenv(name, text)

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env()

    assert name in str(caught.value)
    assert "JSON" in str(caught.value)


@pytest.mark.parametrize("every", [-5, 0, 0.5, float("inf"), float("nan")])
def test_job_intervals_must_be_finite_seconds_of_at_least_one(every: float) -> None:
    with pytest.raises(ConfigurationError, match="ESI_WORKER_JOB_INTERVALS"):
        Settings.from_env(job_intervals={"market_orders": every})


def test_an_unknown_log_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="ESI_WORKER_LOG_LEVEL.*DEBUG"):
        Settings.from_env(log_level="chatty")
