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


@pytest.mark.parametrize("name", ["ESI_WORKER_TYPE_IDS", "ESI_WORKER_MARKET_REGIONS"])
def test_ids_must_be_positive(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # given an id list holding a negative id
    monkeypatch.setenv(name, "[-5, 34]")

    # when the settings are read
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env()

    # then the setting and the bad id are named
    assert name in str(caught.value) and "[-5]" in str(caught.value)


def test_a_bad_downtime_is_explained_in_a_human_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a downtime without minutes
    monkeypatch.setenv("ESI_WORKER_ESI_DOWNTIME_UTC", "11-12")

    # when the settings are read
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env()

    # then the message shows the format to write, not a regular expression
    text = str(caught.value)
    assert "ESI_WORKER_ESI_DOWNTIME_UTC" in text and "HH:MM-HH:MM" in text
    assert "^" not in text and "\\d" not in text and "Value error" not in text


def test_a_downtime_in_the_human_format_and_an_empty_one_are_accepted() -> None:
    assert Settings.from_env(esi_downtime_utc="23:50-00:10").esi_downtime_utc
    assert Settings.from_env(esi_downtime_utc="").esi_downtime_utc == ""


def test_unknown_variables_are_named_with_the_closest_setting() -> None:
    # given the environment of an operator with two typos and a stranger
    environ = {
        "ESI_WORKER_DATABSE_URL": "postgresql://u:secret@db/esi",
        "esi_worker_type_id": "[34]",
        "ESI_WORKER_NOTHING_LIKE_IT": "1",
        "ESI_WORKER_METRICS_PORT": "9108",
        "PATH": "/usr/bin",
    }

    # when the unknown names are looked for
    unknown = Settings.unknown_env_names(environ)

    # then each unknown one is named, with a guess only when one is close
    assert unknown == {
        "ESI_WORKER_DATABSE_URL": "ESI_WORKER_DATABASE_URL",
        "ESI_WORKER_NOTHING_LIKE_IT": None,
        "esi_worker_type_id": "ESI_WORKER_TYPE_IDS",
    }


def test_an_sso_client_id_alone_is_an_application() -> None:
    # given a native application: a client id, and a secret left empty
    settings = Settings.from_env(sso_client_id="native-app", sso_client_secret="  ")

    # then it counts as configured, with no secret
    assert settings.has_sso_credentials
    assert settings.sso_client_secret is None
