"""The fixtures esi-worker ships for plugin authors: clean_db empties every table.

The two tests run in file order: the first leaves a row in every table of
the schema, the second checks that clean_db emptied them all.
"""

from __future__ import annotations

import datetime as dt

ASSETS = "esi-assets.read_assets.v1"


def _tables(pool) -> list[str]:
    with pool.connection() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename LIKE 'esi\\_%' ORDER BY tablename"
            )
        ]


def _counts(pool) -> dict[str, int]:
    with pool.connection() as conn:
        return {
            table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in _tables(pool)
        }


def test_a_test_leaves_rows_behind_in_every_token_table(runtime, make_token, clean_db):
    # given a token revoked and pruned, a refresh journal entry, a pending
    # login, and a record that the SSO refused the client
    from worker.login import begin_login

    store = runtime.tokens
    pruned = make_token(scopes=[ASSETS])
    store.revoke(pruned)
    assert store.prune(grace_s=0) == 1
    kept = make_token(2112000002, "Test Pilot Two", [ASSETS])
    store.journal.started(kept.id, dt.datetime.now(dt.UTC))
    begin_login([ASSETS])
    with clean_db.connection() as conn:
        conn.execute(
            "INSERT INTO esi_sso_client_refusal VALUES (%s, now(), now(), %s)",
            (runtime.settings.sso_client_id, "invalid_client"),
        )

    # then those tables hold rows now
    counts = _counts(clean_db)
    for table in (
        "esi_token",
        "esi_token_pruned",
        "esi_token_refresh_journal",
        "esi_pending_login",
        "esi_sso_client_refusal",
    ):
        assert counts[table] >= 1, table


def test_the_next_test_starts_with_every_table_empty(clean_db):
    # when the next test asks for a clean database
    counts = _counts(clean_db)

    # then no esi_* table holds a row of the earlier test
    assert counts and all(n == 0 for n in counts.values()), counts
