"""Encryption at rest: ciphertext in the table, key rotation, plaintext rows."""

from __future__ import annotations

import logging
import stat
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from worker.crypto import KEY_FILE, PREFIX, TokenCipher
from worker.errors import ConfigurationError
from worker.sso import SSOClient
from worker.tokens import VALID, TokenStore

from .conftest import stored

OLD_KEY = TokenCipher.new_key()
NEW_KEY = TokenCipher.new_key()


def _raw(pool, token_id: int) -> tuple[str, str | None]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT access_token, refresh_token FROM esi_token WHERE id = %s",
            (token_id,),
        ).fetchone()
    return row[0], row[1]


def _store(settings, pool, keys: list[str]) -> TokenStore:
    configured = settings.replace(token_keys=keys)
    return TokenStore(pool, SSOClient(configured), configured)


def test_secrets_are_stored_encrypted_and_read_back_in_clear(sso_token, store):
    # given a token refreshed once (so both write paths ran)
    token = sso_token()
    token.valid_access_token()

    # when its row is read straight from the table
    access, refresh = _raw(store.pool, token.id)

    # then both secrets are ciphertext, and the store reads them in clear
    assert access.startswith(PREFIX) and refresh.startswith(PREFIX)
    assert token.access_token not in access and token.refresh_token not in refresh
    assert stored(store, token).refresh_token == token.refresh_token


def test_a_new_first_key_reads_old_rows_and_reencrypt_moves_them(
    settings, clean_db, add_token
):
    # given tokens written under the old key
    old = _store(settings, clean_db, [OLD_KEY])
    token = old.add(**_fields())
    before = _raw(clean_db, token.id)

    # when the new key is put first and the secrets re-encrypted
    rotated = _store(settings, clean_db, [NEW_KEY, OLD_KEY])
    readable = rotated.get(token.id)
    count = rotated.reencrypt()

    # then the old rows were readable, and afterwards the new key alone suffices
    assert readable.refresh_token == "refresh-secret"
    assert count == 1 and _raw(clean_db, token.id) != before
    new_only = _store(settings, clean_db, [NEW_KEY])
    assert new_only.get(token.id).access_token == "access-secret"
    assert rotated.reencrypt() == 0


def test_a_removed_key_gives_a_clear_error_and_changes_nothing(settings, clean_db):
    # given a token written under a key the operator then removed
    token = _store(settings, clean_db, [OLD_KEY]).add(**_fields())
    before = _raw(clean_db, token.id)

    # when a store without that key reads it
    with pytest.raises(ConfigurationError, match="ESI_WORKER_TOKEN_KEYS") as caught:
        _store(settings, clean_db, [NEW_KEY]).get(token.id)

    # then the error says what to do, shows no secret, and the row is intact
    assert "refresh-secret" not in str(caught.value)
    assert _raw(clean_db, token.id) == before


def test_plaintext_rows_from_before_encryption_keep_working_and_get_encrypted(
    emulator, store
):
    # given a row written in plaintext, as before encryption existed
    grant = emulator.create_grant(
        character_id=95000001,
        character_name="Old Row",
        scopes=["esi-assets.read_assets.v1"],
    )
    token = store.import_grant(grant)
    with store.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_token SET access_token = %s, refresh_token = %s WHERE id = %s",
            (grant.access_token, grant.refresh_token, token.id),
        )

    # when it is read, then a refresh run passes over it
    readable = store.get(token.id)
    store.refresh_due()

    # then it was readable as is, is now encrypted, and was refreshed
    assert readable.refresh_token == grant.refresh_token
    access, refresh = _raw(store.pool, token.id)
    assert access.startswith(PREFIX) and refresh.startswith(PREFIX)
    assert stored(store, token).state == VALID and not stored(store, token).expired


def test_without_a_configured_key_one_is_generated_privately_with_a_warning(
    settings, tmp_path, caplog
):
    # given settings without keys and an empty data directory
    configured = settings.replace(token_keys=[], data_dir=tmp_path / "fresh")

    # when two ciphers are built from them
    with caplog.at_level(logging.WARNING, logger="worker.crypto"):
        first = TokenCipher.from_settings(configured)
    second = TokenCipher.from_settings(configured)

    # then one key file was made, readable by the owner only, and reused
    path = tmp_path / "fresh" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert second.decrypt(first.encrypt("x")) == "x"
    assert "ESI_WORKER_TOKEN_KEYS" in caplog.text and str(path) in caplog.text
    assert path.read_text().strip() not in caplog.text


@pytest.mark.parametrize("bad", ["not-a-key", "", "short==", "é" * 44])
def test_a_malformed_key_is_refused_naming_its_position(bad):
    # given a good key followed by a malformed one
    keys = [NEW_KEY, bad]

    # when a cipher is built
    with pytest.raises(ConfigurationError, match="entry 2") as caught:
        TokenCipher(keys)

    # then the message names the entry but never echoes a key
    assert NEW_KEY not in str(caught.value)


def test_keys_can_be_given_comma_separated_or_as_json(monkeypatch):
    from worker.settings import Settings

    # given the environment in both forms
    monkeypatch.setenv("ESI_WORKER_TOKEN_KEYS", f"{NEW_KEY}, {OLD_KEY}")
    comma = Settings.from_env()
    monkeypatch.setenv("ESI_WORKER_TOKEN_KEYS", f'["{NEW_KEY}", "{OLD_KEY}"]')
    listed = Settings.from_env()

    # then both give the same two keys, newest first, hidden in the repr
    for settings in (comma, listed):
        assert [k.get_secret_value() for k in settings.token_keys] == [NEW_KEY, OLD_KEY]
        assert NEW_KEY not in repr(settings)


def _fields() -> dict:
    import datetime as dt

    return {
        "access_token": "access-secret",
        "refresh_token": "refresh-secret",
        "character_id": 95000002,
        "character_name": "Crypto Pilot",
        "character_owner_hash": "owner-crypto",
        "scopes": ["esi-assets.read_assets.v1"],
        "access_expires": dt.datetime.now(dt.UTC),
    }


def _secret_columns(pool) -> list[str]:
    """Every stored secret of the three tables that hold them."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT access_token FROM esi_token UNION ALL"
            " SELECT refresh_token FROM esi_token UNION ALL"
            " SELECT refresh_token FROM esi_token_refresh_journal UNION ALL"
            " SELECT code_verifier FROM esi_pending_login"
        ).fetchall()
    return [r[0] for r in rows if r[0] is not None]


@pytest.mark.parametrize("esi_settings_overrides", [{"db_pool_max": 4}])
def test_reencrypt_covers_the_journal_and_pending_logins(
    emulator, settings, clean_db, child
):
    # given, under the old key: a token a dying worker left a saved refresh
    # token for (the SSO rejects the stored one), and a pending PKCE login
    from worker.login import begin_login, complete_login

    emulator.configure(rotation="rotate_reject_old")
    old = _store(settings, clean_db, [OLD_KEY])
    grant = emulator.create_grant(
        95100001, "Journal Pilot", ["esi-assets.read_assets.v1"]
    )
    token = old.import_grant(grant)
    proc = child("die-after-journal", token.id, keys=[OLD_KEY])
    proc.wait(timeout=60)
    url, state = begin_login(["esi-assets.read_assets.v1"], pkce=True, store=old)

    # when the new key is put first, everything re-encrypted, the old key
    # dropped
    rotated = _store(settings, clean_db, [NEW_KEY, OLD_KEY])
    report = rotated.reencrypt_report()
    new_only = _store(settings, clean_db, [NEW_KEY])

    # then every secret of every table opens with the new key alone
    assert proc.returncode == -9
    assert (report.tokens, report.journal_entries, report.pending_logins) == (1, 1, 1)
    assert report.locked == 0 and rotated.reencrypt() == 0
    assert all(TokenCipher([NEW_KEY]).is_current(v) for v in _secret_columns(clean_db))

    # and the token refreshes with the saved refresh token, and the login
    # completes
    fresh = new_only.refresh(new_only.get(token.id))
    assert fresh.state == VALID and not fresh.expired
    answer = requests.get(url, allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    assert complete_login(code, state, store=new_only).scopes


def test_reencrypt_waits_for_a_row_being_refreshed(emulator, settings, clean_db):
    # given a token under the old key, locked by a refresh in flight
    old = _store(settings, clean_db, [OLD_KEY])
    token = old.add(**_fields())
    rotated = _store(settings, clean_db, [NEW_KEY, OLD_KEY])
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with clean_db.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT 1 FROM esi_token WHERE id = %s FOR UPDATE", (token.id,)
            )
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    locked.wait(10)

    # when the secrets are re-encrypted while the lock is held, briefly
    threading.Timer(0.3, release.set).start()
    report = rotated.reencrypt_report(lock_timeout_s=10)
    holder.join(10)

    # then the row was waited for and re-encrypted, nothing left behind
    assert (report.tokens, report.locked) == (1, 0)
    assert TokenCipher([NEW_KEY]).is_current(_raw(clean_db, token.id)[1])


def test_reencrypt_reports_a_row_that_stays_locked(emulator, settings, clean_db):
    # given a token under the old key, locked longer than reencrypt waits
    old = _store(settings, clean_db, [OLD_KEY])
    token = old.add(**_fields())
    rotated = _store(settings, clean_db, [NEW_KEY, OLD_KEY])
    with clean_db.connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM esi_token WHERE id = %s FOR UPDATE", (token.id,))

        # when the secrets are re-encrypted
        report = rotated.reencrypt_report(lock_timeout_s=0.2)

    # then the locked row is reported, so the old key is not dropped yet
    assert (report.tokens, report.locked) == (0, 1)
    assert "run it again" in str(report)
    assert rotated.reencrypt_report().tokens == 1


def test_an_undecryptable_journal_entry_does_not_block_the_refresh(
    sso_token, store, settings, clean_db
):
    # given a journal entry written under a key that was since dropped
    token = sso_token()
    lost = TokenCipher([OLD_KEY]).encrypt("a-refresh-token-nobody-can-read")
    with clean_db.connection() as conn:
        conn.execute(
            "INSERT INTO esi_token_refresh_journal (token_id, started, refresh_token)"
            " VALUES (%s, now(), %s)",
            (token.id, lost),
        )

    # when the token is refreshed
    fresh = store.refresh(token)

    # then the refresh went on with the stored refresh token
    assert fresh.state == VALID and not fresh.expired


def test_a_token_under_a_dropped_key_does_not_stop_the_others(
    emulator, settings, clean_db
):
    # given a token written under a key since dropped, and one under the
    # key in use, both due
    def grant(character_id: int) -> dict:
        g = emulator.create_grant(
            character_id, "Key Pilot", ["esi-assets.read_assets.v1"]
        )
        return {
            "access_token": g.access_token,
            "refresh_token": g.refresh_token,
            "character_id": g.character_id,
            "character_name": g.character_name,
            "character_owner_hash": g.owner_hash,
            "scopes": list(g.scopes),
            "access_expires": g.expires_at,
        }

    lost = _store(settings, clean_db, [OLD_KEY]).add(**grant(95200001))
    store = _store(settings, clean_db, [NEW_KEY])
    kept = store.add(**grant(95200002))

    # when due tokens are refreshed, twice
    first = store.refresh_due()
    second = store.refresh_due()

    # then the readable one was refreshed; the other is reported, left
    # alone for a while, and otherwise untouched
    assert (first.success, first.config_error) == (1, 1)
    assert second.total == 0
    assert not store.get(kept.id).expired
    with clean_db.connection() as conn:
        state, error, retry = conn.execute(
            "SELECT state, last_refresh_error, next_refresh_attempt"
            " FROM esi_token WHERE id = %s",
            (lost.id,),
        ).fetchone()
    assert state == VALID and "ESI_WORKER_TOKEN_KEYS" in error and retry is not None
