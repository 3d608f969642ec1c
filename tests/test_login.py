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
from worker.errors import SSOGrantError
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
