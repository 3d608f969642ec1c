"""The gauges read from the database: tokens by state, tokens about to be lost, queue."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics.collectors import register_database_collector


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _insert_token(pool: Any, character_id: int, *, state: str = "valid",
                  refresh: bool = True, expires_in_s: float = 1200.0,
                  refreshed_ago_s: float = 0.0) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(
        seconds=expires_in_s - refreshed_ago_s)
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO esi_token (access_token, refresh_token, access_expires,"
            " character_id, character_name, character_owner_hash, state)"
            " VALUES ('a', %s, %s, %s, 'Pilot', 'hash', %s)",
            ("r" if refresh else None, expires, character_id, state),
        )


def test_tokens_are_counted_by_state_with_every_state_present(
    runtime: Any, clean_db: Any
) -> None:
    # given two valid tokens and one revoked
    for character_id in (1, 2):
        _insert_token(clean_db, character_id)
    _insert_token(clean_db, 3, state="revoked")
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped
    samples = _samples(registry)

    # then each state has a series, zero where no token is in it
    assert samples[("esi_worker_tokens", (("state", "valid"),))] == 2
    assert samples[("esi_worker_tokens", (("state", "revoked"),))] == 1
    assert samples[("esi_worker_tokens", (("state", "owner_changed"),))] == 0


def test_healthy_tokens_are_not_about_to_be_lost_in_any_horizon(
    runtime: Any, clean_db: Any
) -> None:
    # given valid tokens with refresh tokens, just refreshed
    _insert_token(clean_db, 1)
    _insert_token(clean_db, 2, expires_in_s=60)
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped, then every horizon shows zero
    samples = _samples(registry)
    for horizon in ("300", "1200", "3600", "86400"):
        assert samples[("esi_worker_tokens_expiring", (("within", horizon),))] == 0


def test_tokens_without_refresh_or_long_unrefreshed_count_as_about_to_be_lost(
    runtime: Any, clean_db: Any
) -> None:
    # given a token without refresh token expiring in 10 minutes, and one whose
    # refresh token was last used 29.5 days ago (idle expiry 30 days)
    _insert_token(clean_db, 1, refresh=False, expires_in_s=600)
    _insert_token(clean_db, 2, refreshed_ago_s=29.5 * 86400)
    _insert_token(clean_db, 3, state="revoked", refresh=False, expires_in_s=10)
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped
    samples = _samples(registry)

    # then each is counted in the horizons its loss falls within; dead ones never
    within = {h: samples[("esi_worker_tokens_expiring", (("within", h),))]
              for h in ("300", "1200", "3600", "86400")}
    assert within == {"300": 0, "1200": 1, "3600": 1, "86400": 2}


def test_queue_depth_counts_runs_not_yet_started(runtime: Any, clean_db: Any) -> None:
    # given one finished run and, where the schema allows it, two queued ones
    now = dt.datetime.now(dt.UTC)
    with clean_db.connection() as conn:
        conn.execute("INSERT INTO esi_job_run (job, started, finished) VALUES"
                     " ('a', %s, %s)", (now, now))
        nullable = conn.execute(
            "SELECT is_nullable FROM information_schema.columns WHERE"
            " table_name = 'esi_job_run' AND column_name = 'started'").fetchone()[0]
        queued = 2 if nullable == "YES" else 0
        for subject in range(queued):
            conn.execute("INSERT INTO esi_job_run (job, subject, state, started)"
                         " VALUES ('b', %s, 'queued', NULL)", (subject,))
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped, then only the queued runs count
    assert _samples(registry)[("esi_worker_job_queue_depth", ())] == queued


def test_a_database_failure_leaves_the_scrape_working_without_the_gauges(
    runtime: Any, clean_db: Any
) -> None:
    # given a collector whose pool has been closed
    from worker.db import create_pool
    from worker.metrics.collectors import DatabaseCollector

    pool = create_pool(runtime.settings.database_url, max_size=1)
    pool.close()
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(pool))

    # when scraped, then the scrape succeeds and the gauges are simply absent
    assert not [k for k in _samples(registry) if k[0].startswith("esi_worker_tokens")]


def test_valid_tokens_are_counted_by_when_their_access_token_expires(
    runtime: Any, clean_db: Any
) -> None:
    # given access tokens expired, and expiring in 30 s, 200 s, 500 s and
    # 1000 s, and a revoked one long expired
    for character_id, expires_in_s in enumerate((-10, 30, 200, 500, 1000), start=1):
        _insert_token(clean_db, character_id, expires_in_s=expires_in_s)
    _insert_token(clean_db, 9, state="revoked", expires_in_s=-3600)
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped
    samples = _samples(registry)

    # then each horizon counts the valid ones expiring within it (0: expired)
    within = {h: samples[("esi_worker_access_tokens_expiring", (("within", h),))]
              for h in ("0", "60", "300", "600")}
    assert within == {"0": 1, "60": 2, "300": 3, "600": 4}


def test_tokens_a_client_refusal_blocks_are_counted_as_config_error(
    runtime: Any, clean_db: Any
) -> None:
    # given two refreshable valid tokens, one without a refresh token, and
    # a record that the SSO refuses our client credentials
    for character_id in (1, 2):
        _insert_token(clean_db, character_id)
    _insert_token(clean_db, 3, refresh=False)
    with clean_db.connection() as conn:
        conn.execute(
            "INSERT INTO esi_sso_client_refusal (client_id, first_refused,"
            " last_refused, error) VALUES (%s, now(), now(), 'invalid_client')",
            (runtime.settings.sso_client_id or "",),
        )
    registry = CollectorRegistry()
    register_database_collector(runtime, registry)

    # when scraped
    samples = _samples(registry)

    # then the refreshable ones count as config_error, as `tokens list`
    # shows them; the one needing no refresh stays valid
    assert samples[("esi_worker_tokens", (("state", "config_error"),))] == 2
    assert samples[("esi_worker_tokens", (("state", "valid"),))] == 1
