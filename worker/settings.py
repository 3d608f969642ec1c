"""Settings: the environment is read once, here, into a frozen object."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from .errors import ConfigurationError

ENV_PREFIX = "ESI_WORKER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRODUCTION_SSO_URL = "https://login.eveonline.com"
PRODUCTION_ESI_URL = "https://esi.evetech.net"

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DOWNTIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
OLDEST_COMPATIBILITY_DATE = dt.date(2020, 1, 1)
"""The oldest date ESI's ``/meta/compatibility-dates`` lists (ESI.md 3.1b)."""
ESI_DAY_STARTS_UTC = dt.timedelta(hours=11)
"""ESI's compatibility "day" flips at 11:00 UTC, not midnight (ESI.md 3.1b)."""


def esi_today(now: dt.datetime) -> dt.date:
    """The newest compatibility date ESI accepts at ``now`` (an aware instant)."""
    return (now.astimezone(dt.UTC) - ESI_DAY_STARTS_UTC).date()


class Settings(BaseSettings):
    """Every knob of the worker; built by :meth:`from_env` and passed down.

    Each field is read from ``ESI_WORKER_<FIELD>`` (upper case). Lists and
    mappings are given as JSON.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True
    )

    # -- storage and broker --
    database_url: str | None = None
    data_dir: Path = Field(default_factory=lambda: _default_data_dir())
    broker_url: str | None = None
    redis_url: str | None = None
    db_pool_max: int = Field(default=10, ge=1)

    # -- SSO --
    sso_base_url: str = PRODUCTION_SSO_URL
    sso_client_id: str | None = None
    sso_client_secret: SecretStr | None = None
    sso_callback_url: str = "http://127.0.0.1:8765/callback"
    sso_timeout_s: float = Field(default=20.0, gt=0)
    jwks_max_age_s: float = Field(default=300.0, ge=0)

    # -- ESI --
    esi_base_url: str = PRODUCTION_ESI_URL
    esi_compatibility_date: str = "2025-12-16"
    esi_datasource: str = "tranquility"
    esi_spec_file: Path | None = None
    esi_timeout_s: float = Field(default=30.0, gt=0)
    esi_retries: int = Field(default=3, ge=0)
    esi_retry_backoff_s: float = Field(default=1.0, ge=0)
    esi_page_concurrency: int = Field(default=8, ge=1)
    app_name: str = "esi-worker"
    app_version: str = ""
    contact_email: str = ""

    # -- tokens --
    refresh_parallelism: int = Field(default=4, ge=1)
    refresh_ahead_s: float = Field(default=300.0, ge=0)
    # Tokens are also due up to this much earlier than refresh_ahead_s, each
    # by a fixed share, so renewals that coincide drift apart (0: off).
    refresh_spread_s: float = Field(default=120.0, ge=0)
    prune_grace_s: float = Field(default=7 * 86400.0, ge=0)
    # -- token lifecycle: login, encryption at rest --
    # Fernet keys, newest first: the first encrypts, all decrypt. Given as a
    # JSON list or comma-separated; empty means a key kept in data_dir.
    token_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    pending_login_ttl_s: float = Field(default=600.0, gt=0)
    login_timeout_s: float = Field(default=300.0, gt=0)

    @field_validator("token_keys", mode="before")
    @classmethod
    def _split_token_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    # -- ESI protocol: spec loading, limits --
    # Where the spec comes from: "auto" tries ESI's live OpenAPI spec, then
    # the legacy swagger.json, then the bundled snapshot.
    esi_spec_source: str = Field(
        default="auto", pattern=r"^(auto|openapi|swagger|bundled)$"
    )
    esi_spec_max_age_s: float = Field(default=3600.0, ge=0)
    # Date-time and date fields as datetime/date objects, as bravado and
    # django-esi return them; False leaves them as ESI's ISO 8601 text.
    esi_parse_formats: bool = True
    # Namespace of every Redis key the ESI client writes (limits, response
    # cache, spec cache), so several deployments can share one Redis.
    esi_redis_prefix: str = Field(default="esi-worker:", min_length=1)
    # A paged walk refuses an X-Pages above this rather than sending that
    # many requests (the biggest real result, The Forge's orders, ~400).
    esi_max_pages: int = Field(default=2000, ge=1)
    esi_error_budget: int = Field(default=100, ge=1)
    esi_error_limit_threshold: int = Field(default=20, ge=0)
    esi_rate_limit_margin: float = Field(default=0.05, ge=0, lt=1)
    esi_limit_max_wait_s: float = Field(default=900.0, ge=0)
    esi_page_consistency_retries: int = Field(default=3, ge=0)

    # -- worker and scheduler --
    worker_threads: int = Field(default=8, ge=1)
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    job_intervals: dict[str, float] = Field(default_factory=dict)
    disabled_jobs: list[str] = Field(default_factory=list)
    market_regions: list[int] = Field(default_factory=lambda: [10000002])
    type_ids: list[int] = Field(default_factory=lambda: [34, 35, 36, 37, 38, 39, 40])
    log_level: str = "INFO"
    # -- jobs and scheduling --
    # ESI's daily downtime (HH:MM-HH:MM, UTC; empty: none): runs are deferred.
    esi_downtime_utc: str = "11:00-11:15"
    scheduler_tick_s: float = Field(default=5.0, gt=0)
    scheduler_lock_key: int = 0x45534957  # "ESIW": the advisory lock of the leader
    job_requeue_after_s: float = Field(default=900.0, gt=0)
    job_run_retention_days: float = Field(default=30.0, gt=0)
    esi_status_check: bool = True
    esi_status_max_age_s: float = Field(default=60.0, ge=0)
    # -- observability --
    # Idle time after which SSO is reported to refuse a refresh token
    # (about 30 days, unverified); drives esi_worker_tokens_expiring.
    token_idle_expiry_s: float = Field(default=30 * 86400.0, gt=0)
    # Where `worker --processes N` keeps prometheus-client's per-process
    # files; unset = a fresh temporary directory per launch.
    metrics_multiproc_dir: Path | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Read the environment once; a bad value raises a clear error.

        :raises ConfigurationError: naming each invalid setting.
        """
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except SettingsError as exc:
            # Raised before validation for list and dict settings whose
            # text is not JSON; the value itself is not repeated.
            raise ConfigurationError(_describe_unparsed(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        data = self.model_dump()
        data.update(changes)
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None

    @field_validator("job_intervals")
    @classmethod
    def _positive_intervals(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {
            name: every for name, every in value.items()
            if not math.isfinite(every) or every < 1
        }
        if bad:
            raise ValueError(
                f"intervals are seconds, finite and at least 1, got {bad}"
            )
        return value

    @field_validator("market_regions", "type_ids")
    @classmethod
    def _positive_ids(cls, value: list[int]) -> list[int]:
        bad = [number for number in value if number < 1]
        if bad:
            raise ValueError(f"ids are positive whole numbers, got {bad}")
        return value

    @field_validator("esi_downtime_utc")
    @classmethod
    def _check_downtime(cls, value: str) -> str:
        if value and not _DOWNTIME_RE.match(value):
            raise ValueError(
                "expected HH:MM-HH:MM in UTC (24-hour clock, e.g. 11:00-11:15), "
                f"or empty for none; got {value!r}"
            )
        return value

    @field_validator("sso_client_secret", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: Any) -> Any:
        # An exported but empty variable means no secret: a native app.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("esi_compatibility_date")
    @classmethod
    def _check_compatibility_date(cls, value: str) -> str:
        if not _DATE_RE.match(value):
            raise ValueError(f"expected YYYY-MM-DD, got {value!r}")
        day = dt.date.fromisoformat(value)
        today = esi_today(dt.datetime.now(dt.UTC))
        if day > today:
            raise ValueError(
                f"{value} is in the future for ESI, whose day starts at "
                f"11:00 UTC (today is {today}); ESI refuses future dates"
            )
        if day < OLDEST_COMPATIBILITY_DATE:
            raise ValueError(
                f"{value} is older than ESI's oldest compatibility date, "
                f"{OLDEST_COMPATIBILITY_DATE}"
            )
        return value

    @field_validator("sso_base_url", "esi_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @classmethod
    def unknown_env_names(
        cls, environ: Mapping[str, str] | None = None
    ) -> dict[str, str | None]:
        """``ESI_WORKER_*`` variables naming no setting, each with the
        closest setting's name when one is close (a typo, most likely).

        :param environ: the variables to look at (default: the process's).
        """
        known = [name.upper() for name in cls.model_fields]
        found = os.environ if environ is None else environ
        unknown = sorted(
            name
            for name in found
            if name.upper().startswith(ENV_PREFIX)
            and name.upper().removeprefix(ENV_PREFIX) not in known
        )
        return {name: _closest(name, known) for name in unknown}

    @property
    def has_sso_credentials(self) -> bool:
        """An SSO application is configured: its client id (a native
        application has no secret; a web one also sets it)."""
        return bool(self.sso_client_id)

    @property
    def user_agent(self) -> str:
        """The User-Agent ESI asks for: app, version, contact, then us."""
        from . import __version__

        contact = f" ({self.contact_email})" if self.contact_email else ""
        if self.app_name == "esi-worker":
            # Run as it is: one product, so name it once.
            return f"esi-worker/{__version__}{contact}"
        app = self.app_name + (f"/{self.app_version}" if self.app_version else "")
        return f"{app}{contact} esi-worker/{__version__}"

    def __repr_args__(self) -> Any:
        # SecretStr already hides the secret; URLs may hold passwords.
        for name, value in super().__repr_args__():
            if name in {"database_url", "broker_url", "redis_url"} and value:
                value = _hide_password(str(value))
            yield name, value


def _closest(name: str, known: list[str]) -> str | None:
    """The setting ``name`` most likely misspells, if any is close."""
    bare = name.upper().removeprefix(ENV_PREFIX)
    found = difflib.get_close_matches(bare, known, n=1, cutoff=0.8)
    return f"{ENV_PREFIX}{found[0]}" if found else None


def _hide_password(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def _default_data_dir() -> Path:
    # The XDG base directory rule: $XDG_DATA_HOME, else ~/.local/share.
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base) / "esi-worker"


def _describe_unparsed(exc: SettingsError) -> str:
    match = re.search(r'field "(\w+)"', str(exc))
    name = f"{ENV_PREFIX}{match.group(1).upper()}" if match else "a setting"
    reason = f" ({exc.__cause__})" if exc.__cause__ else ""
    return (
        f"invalid settings: {name} is not valid JSON{reason}; lists are "
        'written like ["a", "b"] or [1, 2] and maps like {"market_orders": 600}'
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        # A validator's message reads better without pydantic's label.
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{ENV_PREFIX}{field.upper()}: {message}")
    return "invalid settings: " + "; ".join(parts)
