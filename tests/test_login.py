"""Login: begin/complete for web apps, the loopback flow with PKCE, the CLI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading

import pytest
import requests

from worker.clock import FrozenClock
from worker.errors import ConfigurationError, SSOGrantError
from worker.login import begin_login, complete_login, loopback_login, pending_redirect
from worker.runtime import Runtime
from worker.sso import SSOClient
from worker.tokens import TokenStore

ASSETS = "esi-assets.read_assets.v1"
SKILLS = "esi-skills.read_skills.v1"


def _consent(url: str) -> tuple[str, str]:
    """Let the emulator's auto-consent answer; the code and state it sends back."""
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    code = re.search(r"[?&]code=([^&]+)", location).group(1)
    state = re.search(r"[?&]state=([^&]+)", location).group(1)
    return code, state


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_web_app_login_stores_a_verified_token(runtime, emulator):
    # given a login begun for a user, with a page to return to
    url, state = begin_login([SKILLS, ASSETS], user="alice", redirect_to="/home")

    # when the browser consents and the app completes the login
    code, returned_state = _consent(url)
    assert pending_redirect(returned_state) == "/home"
    token = complete_login(code, returned_state)

    # then the token is stored for the user with the scopes granted
    assert returned_state == state
    assert token.user_id == "alice" and token.scopes == (ASSETS, SKILLS)
    assert token.character_id == 2112000001 and token.refresh_token


def test_logging_in_twice_merges_into_the_equivalent_token(runtime, emulator):
    # given a character that logged in once
    first = complete_login(*_consent(begin_login([ASSETS], user="alice")[0]))

    # when it logs in again with the same scopes for the same user
    second = complete_login(*_consent(begin_login([ASSETS], user="alice")[0]))

    # then there is still one token, holding the newest grant
    assert second.id == first.id
    assert runtime.tokens.query().count() == 1
    assert second.refresh_token != first.refresh_token


@pytest.mark.parametrize("case", ["unknown", "used"])
def test_an_unknown_or_used_state_is_refused_and_stores_nothing(
    runtime, emulator, case
):
    # given a consented login, completed once already when "used"
    code, state = _consent(begin_login([ASSETS])[0])
    if case == "used":
        complete_login(code, state)
        code, _ = _consent(begin_login([ASSETS])[0])
    else:
        state = "forged-state"
    count = runtime.tokens.query().count()

    # when the callback arrives with that state
    with pytest.raises(SSOGrantError, match="login state") as caught:
        complete_login(code, state)

    # then it is refused as a dead login, and nothing new is stored
    assert caught.value.error == "invalid_state"
    assert runtime.tokens.query().count() == count


def test_an_expired_login_is_refused(settings, clean_db, emulator):
    # given a login begun with a clock that then moves past the TTL
    clock = FrozenClock()
    sso = SSOClient(settings, clock=clock)
    store = TokenStore(clean_db, sso, settings, clock=clock)
    code, state = _consent(begin_login([ASSETS], store=store)[0])
    clock.advance(settings.pending_login_ttl_s + 1)

    # when it is completed
    with pytest.raises(SSOGrantError, match="expired"):
        complete_login(code, state, store=store)

    # then nothing was stored
    assert store.query().count() == 0
    sso.close()


def test_a_native_app_logs_in_through_the_loopback_server_with_pkce(
    settings, clean_db, emulator
):
    # given a native application (no secret) with a loopback callback
    native = settings.replace(
        sso_client_id=emulator.native_client_id,
        sso_client_secret=None,
        sso_callback_url="http://127.0.0.1:0/callback",
    )
    runtime = Runtime.from_settings(native, pool=clean_db)
    urls: list[str] = []
    follow = threading.Event()

    def browser() -> None:
        follow.wait(10)
        requests.get(urls[0], timeout=10)

    # when the login runs and a browser follows the URL it prints
    thread = threading.Thread(target=browser)
    thread.start()
    token = loopback_login(
        [ASSETS],
        store=runtime.tokens,
        on_url=lambda url: (urls.append(url), follow.set()),
        timeout_s=20,
    )
    thread.join(10)

    # then the URL carried a PKCE challenge, and the token was stored
    assert "code_challenge=" in urls[0] and "code_challenge_method=S256" in urls[0]
    assert token.scopes == (ASSETS,) and token.refresh_token
    assert runtime.tokens.get(token.id) is not None


def test_the_login_command_prints_the_url_and_stores_the_token(
    settings, clean_db, emulator
):
    # given the CLI configured for the emulator with a free callback port
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER")}
    env.update(
        ESI_WORKER_DATABASE_URL=settings.database_url,
        ESI_WORKER_DATA_DIR=str(settings.data_dir),
        ESI_WORKER_SSO_BASE_URL=emulator.base_url,
        ESI_WORKER_SSO_CLIENT_ID=emulator.client_id,
        ESI_WORKER_SSO_CLIENT_SECRET=emulator.client_secret,
        ESI_WORKER_SSO_CALLBACK_URL=f"http://127.0.0.1:{port}/callback",
    )
    script = os.path.join(os.path.dirname(sys.executable), "esi-worker")
    command = [script, "login", "--scopes", ASSETS]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )

    # when a browser follows the printed URL
    line = ""
    while not line.startswith("http"):
        line = proc.stdout.readline().strip()
        assert line or proc.poll() is None, proc.stderr.read()
    page = requests.get(line, timeout=20)
    out, err = proc.communicate(timeout=30)

    # then the callback page says so and the token is stored
    assert page.status_code == 200 and "Logged in" in page.text
    assert proc.returncode == 0, err
    assert "stored token" in out
    with clean_db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM esi_token").fetchone()[0] == 1
    assert emulator.client_secret not in out + err


def test_begin_login_purges_logins_older_than_the_ttl(settings, clean_db, emulator):
    # given a pending login left behind long ago
    clock = FrozenClock()
    store = TokenStore(
        clean_db, SSOClient(settings, clock=clock), settings, clock=clock
    )
    _, abandoned = begin_login([ASSETS], store=store)
    clock.advance(settings.pending_login_ttl_s + 60)

    # when another login begins
    begin_login([ASSETS], store=store)

    # then the abandoned one is gone
    with clean_db.connection() as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM esi_pending_login")]
    assert abandoned not in states and len(states) == 1


def _login(scopes, *, user=None, store=None, **authorize):
    """A whole web login: begin, consent (optionally as another character), complete."""
    url, _ = begin_login(scopes, user=user, store=store)
    for name, value in authorize.items():
        url += f"&{name}={value}"
    return complete_login(*_consent(url), store=store)


def test_a_users_login_merges_into_a_token_without_user_and_takes_it_over(
    runtime, emulator
):
    # given a token logged in without a user (from the CLI, say)
    anonymous = _login([ASSETS])

    # when the same character logs in with the same scopes for alice
    alices = _login([ASSETS], user="alice")

    # then there is one token, now alice's, holding the newest grant
    assert alices.id == anonymous.id and alices.user_id == "alice"
    assert runtime.tokens.query().including_dead().count() == 1
    assert alices.refresh_token != anonymous.refresh_token


def test_the_same_users_token_is_preferred_over_one_without_user(runtime, emulator):
    # given alice's token, then a token without user for the same grant
    alices = _login([ASSETS], user="alice")
    anonymous = _login([ASSETS])
    assert anonymous.id != alices.id and anonymous.user_id is None

    # when alice logs in again
    again = _login([ASSETS], user="alice")

    # then her own token got the grant; the one without user is untouched
    assert again.id == alices.id
    assert runtime.tokens.get(anonymous.id).user_id is None


@pytest.mark.parametrize(
    ("first", "second"),
    [("alice", "bob"), ("alice", None)],
    ids=["other-user", "no-user-after-a-user"],
)
def test_logins_of_another_user_are_not_merged(runtime, emulator, first, second):
    # given a token of one user
    token = _login([ASSETS], user=first)

    # when the same character logs in for another user, or for nobody
    other = _login([ASSETS], user=second)

    # then that is a token of its own
    assert other.id != token.id and other.user_id == second
    assert runtime.tokens.get(token.id).user_id == first


def test_a_login_with_other_scopes_or_character_is_not_merged(runtime, emulator):
    # given a token without user
    token = _login([ASSETS])

    # when alice logs in with more scopes, or as another character
    wider = _login([ASSETS, SKILLS], user="alice")
    other = _login([ASSETS], user="alice", character_id=2112000002)

    # then each is a token of its own
    assert len({token.id, wider.id, other.id}) == 3
    assert runtime.tokens.get(token.id).user_id is None


@pytest.mark.parametrize("scopes", [[ASSETS], [ASSETS, SKILLS]])
def test_a_login_whose_access_token_names_no_scopes_stores_the_requested_ones(
    runtime, emulator, scopes
):
    # given an SSO that leaves scp out of its access tokens
    emulator.configure(scp_form="absent")

    # when a character logs in for scopes
    token = _login(scopes)

    # then the token holds the scopes asked for and is found by them, and a
    # refresh (scp absent again) keeps them
    assert token.scopes == tuple(sorted(scopes)) and token.refresh_token
    assert runtime.tokens.query().require_scopes(scopes).count() == 1
    refreshed = runtime.tokens.refresh(token)
    assert refreshed.scopes == tuple(sorted(scopes))


def test_a_scopeless_login_stays_scopeless_when_scp_is_absent(runtime, emulator):
    # given an SSO that leaves scp out, and a login asking for nothing
    emulator.configure(scp_form="absent")

    # when it completes
    token = _login([])

    # then it holds no scope and no refresh token
    assert token.scopes == () and token.refresh_token is None


def _corrupt_pending_verifiers(pool) -> None:
    """Make every pending login's PKCE verifier unreadable (its key is gone)."""
    from worker.crypto import TokenCipher

    lost = TokenCipher([TokenCipher.new_key()]).encrypt("verifier")
    with pool.connection() as conn:
        conn.execute("UPDATE esi_pending_login SET code_verifier = %s", (lost,))


def test_the_loopback_login_fails_at_once_on_an_unexpected_error(
    settings, clean_db, emulator
):
    # given a loopback login whose pending record cannot be read back
    runtime = Runtime.from_settings(
        settings.replace(sso_callback_url="http://127.0.0.1:0/callback"), pool=clean_db
    )
    urls: list[str] = []
    pages: list[requests.Response] = []

    def browser(url: str) -> None:
        urls.append(url)
        _corrupt_pending_verifiers(clean_db)
        threading.Thread(
            target=lambda: pages.append(requests.get(url, timeout=10))
        ).start()

    # when the browser comes back with the code
    with pytest.raises(ConfigurationError, match="ESI_WORKER_TOKEN_KEYS"):
        loopback_login([ASSETS], store=runtime.tokens, on_url=browser, timeout_s=60)

    # then the login failed with that error (not a timeout a minute later),
    # and the browser was told
    for _ in range(100):
        if pages:
            break
        threading.Event().wait(0.05)
    assert pages and pages[0].status_code == 400 and "Login failed" in pages[0].text
    runtime.close()


def test_the_login_command_reports_an_unexpected_error_at_once(
    settings, clean_db, emulator
):
    # given the CLI login waiting for its callback
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER")}
    env.update(
        ESI_WORKER_DATABASE_URL=settings.database_url,
        ESI_WORKER_DATA_DIR=str(settings.data_dir),
        ESI_WORKER_SSO_BASE_URL=emulator.base_url,
        ESI_WORKER_SSO_CLIENT_ID=emulator.client_id,
        ESI_WORKER_SSO_CLIENT_SECRET=emulator.client_secret,
        ESI_WORKER_SSO_CALLBACK_URL=f"http://127.0.0.1:{port}/callback",
        ESI_WORKER_LOGIN_TIMEOUT_S="300",
    )
    script = os.path.join(os.path.dirname(sys.executable), "esi-worker")
    proc = subprocess.Popen(
        [script, "login", "--scopes", ASSETS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = ""
    while not line.startswith("http"):
        line = proc.stdout.readline().strip()
        assert line or proc.poll() is None, proc.stderr.read()

    # when the pending login turns unreadable before the browser returns
    _corrupt_pending_verifiers(clean_db)
    page = requests.get(line, timeout=20)
    out, err = proc.communicate(timeout=30)

    # then the command ended at once with the error, well before its timeout
    assert page.status_code == 400
    assert proc.returncode != 0 and "ESI_WORKER_TOKEN_KEYS" in err
    assert emulator.client_secret not in out + err


@pytest.mark.parametrize(
    ("asked", "other"),
    [([ASSETS], [ASSETS, SKILLS]), ([ASSETS, SKILLS], [ASSETS]), ([ASSETS], [])],
    ids=["more-scopes", "fewer-scopes", "no-scopes"],
)
def test_a_callback_with_the_code_of_another_login_stores_nothing(
    runtime, emulator, asked, other
):
    # given two pending logins for different scopes
    _, state = begin_login(asked)
    other_code, other_state = _consent(begin_login(other)[0])

    # when the callback carries the first login's state but the other's code
    with pytest.raises(SSOGrantError, match="another login") as caught:
        complete_login(other_code, state)

    # then it is refused, saying what differs, and no token is stored
    assert caught.value.error == "scope_mismatch"
    assert all(scope in str(caught.value) for scope in set(asked) ^ set(other))
    assert runtime.tokens.query().including_dead().count() == 0
    # and the other login's own callback cannot smuggle it in later: its
    # code is spent
    with pytest.raises(SSOGrantError):
        complete_login(other_code, other_state)
    assert runtime.tokens.query().including_dead().count() == 0


def test_a_callback_with_the_code_of_an_equal_login_is_stored(runtime, emulator):
    # given two pending logins for the same scopes
    _, state = begin_login([SKILLS, ASSETS])
    code, _ = _consent(begin_login([ASSETS, SKILLS])[0])

    # when one's state completes with the other's code
    token = complete_login(code, state)

    # then that is the same request, so the token is stored
    assert token.scopes == (ASSETS, SKILLS)


def test_a_taken_callback_port_is_named_with_the_setting_to_change(
    settings, clean_db, emulator
):
    # given the callback port of the settings held by another program
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        runtime = Runtime.from_settings(
            settings.replace(sso_callback_url=f"http://127.0.0.1:{port}/callback"),
            pool=clean_db,
        )

        # when the loopback login starts
        with pytest.raises(ConfigurationError) as caught:
            loopback_login([ASSETS], store=runtime.tokens, on_url=print, timeout_s=5)

    # then the error names the port and the setting, and nothing is pending
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "ESI_WORKER_SSO_CALLBACK_URL" in str(caught.value)
    with clean_db.connection() as conn:
        pending = conn.execute("SELECT count(*) FROM esi_pending_login").fetchone()
    assert pending[0] == 0
    runtime.close()


def test_the_login_command_names_a_taken_port_without_a_traceback(
    settings, clean_db, emulator
):
    # given the CLI configured with a callback port another program holds
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = _cli_env(settings, emulator)
        env["ESI_WORKER_SSO_CALLBACK_URL"] = f"http://127.0.0.1:{port}/callback"

        # when the login command runs
        result = subprocess.run(
            [_SCRIPT, "login", "--scopes", ASSETS],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    # then it fails at once with one line naming the port and the setting
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0]
    assert "ESI_WORKER_SSO_CALLBACK_URL" in errors[0]


def _cli_env(settings, emulator) -> dict[str, str]:
    """The environment of an ``esi-worker`` process on the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER")}
    env.update(
        ESI_WORKER_DATABASE_URL=settings.database_url,
        ESI_WORKER_DATA_DIR=str(settings.data_dir),
        ESI_WORKER_SSO_BASE_URL=emulator.base_url,
        ESI_WORKER_SSO_CLIENT_ID=emulator.client_id,
        ESI_WORKER_SSO_CLIENT_SECRET=emulator.client_secret,
    )
    return env


_SCRIPT = os.path.join(os.path.dirname(sys.executable), "esi-worker")
