"""``esi-worker tokens``: list, show, revoke, import, re-encrypt, new key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.crypto import PREFIX, TokenCipher
from worker.errors import SSOGrantError

ASSETS = "esi-assets.read_assets.v1"
SCRIPT = os.path.join(os.path.dirname(sys.executable), "esi-worker")


@pytest.fixture
def cli(settings, emulator):
    """Run ``esi-worker`` in a process of its own, on the test settings."""

    def run(
        *args: str, keys: str | None = None, sso: bool = True,
        secret: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER")}
        env.update(
            ESI_WORKER_DATABASE_URL=settings.database_url,
            ESI_WORKER_DATA_DIR=str(settings.data_dir),
            ESI_WORKER_SSO_BASE_URL=emulator.base_url,
        )
        if sso:
            env.update(
                ESI_WORKER_SSO_CLIENT_ID=emulator.client_id,
                ESI_WORKER_SSO_CLIENT_SECRET=secret or emulator.client_secret,
            )
        if keys is not None:
            env["ESI_WORKER_TOKEN_KEYS"] = keys
        return subprocess.run(
            [SCRIPT, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def token(runtime, emulator):
    grant = emulator.create_grant(
        character_id=97000001, character_name="Cli Pilot", scopes=[ASSETS]
    )
    return runtime.tokens.import_grant(grant, user="alice")


def test_list_and_show_describe_tokens_without_their_secrets(cli, token):
    # when the tokens are listed and one is shown
    listed = cli("tokens", "list")
    shown = cli("tokens", "show", str(token.id))

    # then both name the token, and neither shows a secret
    assert listed.returncode == 0 and "Cli Pilot" in listed.stdout
    assert shown.returncode == 0, shown.stderr
    assert "97000001 (Cli Pilot)" in shown.stdout and ASSETS in shown.stdout
    for output in (listed.stdout + listed.stderr, shown.stdout + shown.stderr):
        assert token.refresh_token not in output
        assert token.access_token not in output


def test_revoke_tells_the_sso_and_marks_the_token(cli, token, runtime, emulator):
    # when the operator revokes the token
    result = cli("tokens", "revoke", str(token.id), "--reason", "left the corp")

    # then it is revoked with the reason, kept, and dead at the SSO too
    assert result.returncode == 0, result.stderr
    row = runtime.tokens.get(token.id)
    assert (row.state, row.state_reason) == ("revoked", "left the corp")
    assert "revoked" in cli("tokens", "list", "--all").stdout
    with pytest.raises(SSOGrantError, match="invalid_grant"):
        runtime.tokens.sso.refresh(token.refresh_token)


@pytest.mark.parametrize("client_auth", ["ignore", "require"])
def test_revoke_with_refused_credentials_changes_nothing(
    cli, token, runtime, emulator, client_auth
):
    # given an SSO that answers every revocation with 200 ("ignore", as
    # documented) or refuses unknown client credentials ("require")
    emulator.configure(revoke_client_auth=client_auth)

    # when the operator revokes with a wrong client secret
    result = cli("tokens", "revoke", str(token.id), secret="wrong-secret-1234")

    # then the secret never shows; under "require" the command fails naming
    # the credentials and the token is untouched, still refreshable
    assert "wrong-secret-1234" not in result.stdout + result.stderr
    if client_auth == "require":
        assert result.returncode == 1
        assert "invalid_client" in result.stderr or "credentials" in result.stderr
        assert "Traceback" not in result.stderr
        assert runtime.tokens.get(token.id).state == "valid"
        runtime.tokens.sso.refresh(token.refresh_token)
    else:
        assert result.returncode == 0, result.stderr


def test_show_and_revoke_of_a_missing_token_fail_clearly(cli, runtime):
    # when a token id that does not exist is shown and revoked
    for command in ("show", "revoke"):
        result = cli("tokens", command, "424242")

        # then the command fails naming the id
        assert result.returncode != 0 and "424242" in result.stderr


def test_reencrypt_moves_every_secret_to_a_new_first_key(cli, token, settings):
    # given the key the tokens were written with, and a new one
    old = (settings.data_dir / "token.key").read_text().strip()
    new = cli("tokens", "new-key").stdout.strip()
    TokenCipher([new])

    # when the new key is put first and the secrets re-encrypted
    result = cli("tokens", "reencrypt", keys=f"{new},{old}")

    # then the token now reads with the new key alone
    assert result.returncode == 0 and "1 token," in result.stdout
    shown = cli("tokens", "show", str(token.id), keys=new)
    assert shown.returncode == 0, shown.stderr
    without = cli("tokens", "show", str(token.id), keys=old)
    assert without.returncode != 0 and "ESI_WORKER_TOKEN_KEYS" in without.stderr
    assert PREFIX not in shown.stdout


def test_import_django_esi_reports_a_missing_source_table(cli, settings, runtime):
    # when our own database is given as the django-esi source
    result = cli("tokens", "import-django-esi", "--from", settings.database_url)

    # then the command fails naming the missing table
    assert result.returncode != 0 and "esi_token_scopes" in result.stderr


def _state_column(listed: str, token_id: int) -> str:
    """The state column of one token's line of ``tokens list``."""
    for line in listed.splitlines():
        fields = line.split()
        if fields and fields[0] == str(token_id):
            return fields[fields.index("expires") - 1]
    raise AssertionError(f"token {token_id} not listed:\n{listed}")


def test_an_expired_token_shows_as_expired_and_a_fresh_one_as_valid(
    cli, token, runtime, emulator
):
    # given the expired token as imported, and one freshly refreshed
    grant = emulator.create_grant(
        character_id=97000002, character_name="Cli Two", scopes=[ASSETS]
    )
    fresh = runtime.tokens.refresh(runtime.tokens.import_grant(grant))

    # when the tokens are listed and the expired one shown
    listed = cli("tokens", "list").stdout
    shown = cli("tokens", "show", str(token.id)).stdout

    # then the expired one says so, with what happens next
    assert _state_column(listed, token.id) == "expired"
    assert _state_column(listed, fresh.id) == "valid"
    assert "expired (the access token lapsed; the next refresh renews it)" in shown


def test_refused_client_credentials_show_in_list_and_show(
    cli, token, runtime, emulator
):
    # given a refresh run that met invalid_client
    emulator.configure(sso_faults=[{"kind": "invalid_client"}])
    assert runtime.tokens.refresh_due().config_error == 1

    # when the tokens are listed and the token shown
    listed = cli("tokens", "list")
    shown = cli("tokens", "show", str(token.id))

    # then both say the refresh is blocked by the credentials, and how to
    # fix it; the token itself is untouched
    assert _state_column(listed.stdout, token.id) == "config_error"
    assert "invalid_client" in listed.stderr
    assert "config_error" in shown.stdout
    assert "ESI_WORKER_SSO_CLIENT_SECRET" in shown.stdout
    assert runtime.tokens.get(token.id).state == "valid"

    # and once a refresh works again, the warning is gone
    assert runtime.tokens.refresh_due().success == 1
    listed = cli("tokens", "list")
    assert _state_column(listed.stdout, token.id) == "valid"
    assert "invalid_client" not in listed.stderr


def test_reencrypt_reports_every_table_it_covers(cli, token, settings, runtime):
    # given a pending login beside the token, under the old key
    from worker.login import begin_login

    begin_login([ASSETS], pkce=True, store=runtime.tokens)
    old = (settings.data_dir / "token.key").read_text().strip()
    new = cli("tokens", "new-key").stdout.strip()

    # when the secrets are re-encrypted under a new first key
    result = cli("tokens", "reencrypt", keys=f"{new},{old}")

    # then the output counts the token and the pending login
    assert result.returncode == 0, result.stderr
    assert "1 token," in result.stdout
    assert result.stdout.rstrip().endswith("and 1 pending login")


def _rows(pool, table: str) -> int:
    with pool.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize(
    "command",
    [
        ("tokens", "refresh"),
        ("tokens", "revoke", "{id}"),
        ("login", "--scopes", ASSETS),
    ],
    ids=["refresh", "revoke", "login"],
)
def test_commands_that_need_the_sso_stop_up_front_without_its_settings(
    cli, token, runtime, emulator, clean_db, command
):
    # given a stored expired token, and no SSO application in the settings
    before = runtime.tokens.get(token.id)

    # when a command that talks to the SSO runs
    result = cli(*(part.format(id=token.id) for part in command), sso=False)

    # then it fails at once with one line naming the settings to set
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "ESI_WORKER_SSO_CLIENT_ID" in errors[0]
    assert "ESI_WORKER_SSO_CLIENT_SECRET" in errors[0]

    # and it wrote nothing, counted no failure, asked the SSO nothing
    after = runtime.tokens.get(token.id)
    assert (after.state, after.refresh_failures) == (before.state, 0)
    assert (after.next_refresh_attempt, after.updated) == (None, before.updated)
    assert _rows(clean_db, "esi_token_refresh_journal") == 0
    assert _rows(clean_db, "esi_pending_login") == 0
    assert emulator.stats()["sso_token_requests"] == 0


def test_refresh_with_the_sso_settings_refreshes_the_due_tokens(cli, token, runtime):
    # when the due tokens are refreshed with the SSO configured
    result = cli("tokens", "refresh")

    # then the expired token was renewed
    assert result.returncode == 0, result.stderr
    assert "success=1" in result.stdout
    assert not runtime.tokens.get(token.id).expired


def test_list_starts_with_a_header_row_naming_the_columns(cli, token):
    # when the tokens are listed
    lines = cli("tokens", "list").stdout.splitlines()

    # then a header names each column, and the token's row follows
    header = lines[0].split()
    assert header[:4] == ["id", "character", "name", "status"]
    assert "expires" in lines[0] and lines[0].rstrip().endswith("scopes")
    assert lines[1].split()[0] == str(token.id)


def test_show_help_promises_only_what_show_shows(cli, token):
    # when show's help is read and a token shown
    help_text = cli("tokens", "show", "--help").stdout
    shown = cli("tokens", "show", str(token.id)).stdout

    # then the help names refresh failures, which show lists, and no history
    assert "history" not in help_text and "refresh failures" in help_text
    for label in ("refresh failures:", "last refresh error:", "next refresh attempt:"):
        assert label in shown


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("notaurl", "not a PostgreSQL connection string"),
        ("postgresql://admin:hunter2secret@127.0.0.1:1/aa", "Connection refused"),
    ],
    ids=["not-a-url", "unreachable"],
)
def test_import_django_esi_names_a_bad_source_in_one_line(
    cli, runtime, source, expected
):
    # when the import is pointed at a bad source
    result = cli("tokens", "import-django-esi", "--from", source)

    # then one line says what is wrong, never the password
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr


def test_list_with_a_wrong_key_prints_the_error_and_no_half_table(cli, token):
    # given a key that did not encrypt the stored token
    wrong = cli("tokens", "new-key").stdout.strip()

    # when the tokens are listed with it
    result = cli("tokens", "list", keys=wrong)

    # then only the error is printed: no header, no row
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "ESI_WORKER_TOKEN_KEYS" in errors[0], result.stderr


def test_show_of_a_revoked_token_says_it_is_not_refreshable(cli, token):
    # given a token the operator revoked; it keeps its refresh token
    assert cli("tokens", "revoke", str(token.id)).returncode == 0

    # when it is shown
    shown = cli("tokens", "show", str(token.id)).stdout

    # then it is revoked and, so, not refreshable
    assert "revoked (" in shown
    assert "refreshable:          no (the token is revoked)" in shown


def test_a_token_with_one_scope_counts_it_in_the_singular(cli, token):
    # when the token holding one scope is listed
    listed = cli("tokens", "list").stdout

    # then its row says "1 scope"
    row = next(line for line in listed.splitlines() if line.split()[0] == str(token.id))
    assert row.rstrip().endswith("  1 scope")


def test_refresh_exits_1_when_the_sso_refuses_the_client_credentials(
    cli, token, emulator
):
    # given an SSO that refuses the client credentials
    emulator.configure(sso_faults=[{"kind": "invalid_client"}])

    # when the due tokens are refreshed
    result = cli("tokens", "refresh")

    # then the counts are printed, and one error line says what to fix
    assert result.returncode == 1
    assert "config_error=1" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    assert "invalid_client" in errors[0]
    assert "ESI_WORKER_SSO_CLIENT_SECRET" in errors[0]


def test_refresh_help_says_what_the_exit_codes_mean(cli):
    # when refresh's help is read
    help_text = " ".join(cli("tokens", "refresh", "--help").stdout.split())

    # then it names each exit code
    assert "Exits 0 when" in help_text and "1 when" in help_text
    assert "2 on a usage error" in help_text
