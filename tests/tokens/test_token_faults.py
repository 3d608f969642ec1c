"""Faults: SSO outages mid-run, workers killed mid-refresh, processes racing."""

from __future__ import annotations

import json
import threading

import pytest

from worker.errors import TokenInvalidError
from worker.tokens import REVOKED, VALID

from .conftest import ASSETS, CHARACTER_NAME, stored, token_count


def _grant_token(emulator, store, character_id: int):
    grant = emulator.create_grant(
        character_id=character_id, character_name=CHARACTER_NAME, scopes=[ASSETS]
    )
    return store.import_grant(grant)


@pytest.mark.parametrize(
    "outage",
    [
        [{"status": 503}] * 50,
        [{"status": 502}, {"kind": "non_json"}, {"status": 504}] * 20,
        [{"status": 429, "retry_after": 30}, {"kind": "no_access_token"}] * 30,
    ],
    ids=["503", "mixed-5xx-and-garbage", "throttled-and-incomplete"],
)
def test_an_sso_outage_in_the_middle_of_a_bulk_refresh_deletes_nothing(
    emulator, frozen_store, clock, outage
):
    # given twelve expired tokens, an SSO that will fail part-way through
    emulator.configure(sso_latency_s=0.05, rotation="rotate_reject_old")
    tokens = [_grant_token(emulator, frozen_store, 91000000 + n) for n in range(12)]
    before = {t.id: t.refresh_token for t in tokens}

    def outage_after_four_requests() -> None:
        while emulator.stats()["sso_token_requests"] < 4:
            threading.Event().wait(0.005)
        emulator.configure(sso_faults=outage)

    trigger = threading.Thread(target=outage_after_four_requests)
    trigger.start()

    # when a bulk refresh runs into the outage
    summary = frozen_store.refresh_due(parallelism=1, batch_size=3)
    trigger.join(timeout=10)

    # then every token is still stored and valid; the failed ones kept
    # their refresh token and wait for a retry
    assert summary.success >= 3 and summary.transient >= 1
    assert summary.success + summary.transient == 12
    assert token_count(frozen_store) == 12
    rows = [stored(frozen_store, t) for t in tokens]
    assert all(r.state == VALID for r in rows)
    failed = [r for r in rows if r.refresh_failures]
    assert len(failed) == summary.transient
    assert all(r.refresh_token == before[r.id] for r in failed)

    # and once the SSO is back, the next run after the back-off renews them
    emulator.configure(sso_faults=[])
    clock.advance(400)
    assert frozen_store.refresh_due().success == summary.transient
    rows = [stored(frozen_store, t) for t in tokens]
    assert all(r.state == VALID and not r.expired for r in rows)


# With rotation off there is no new refresh token to journal: that case is
# the "killed right after the answer" one below.
@pytest.mark.parametrize("rotation", ["rotate", "rotate_reject_old"])
@pytest.mark.parametrize("esi_settings_overrides", [{"db_pool_max": 4}])
def test_a_worker_killed_after_the_journal_saved_the_answer_loses_nothing(
    emulator, store, child, rotation
):
    # given an expired token
    emulator.configure(rotation=rotation)
    token = _grant_token(emulator, store, 92000001)

    # when a worker process dies after the SSO answered and the journal
    # recorded the answer, before its transaction committed
    proc = child("die-after-journal", token.id)
    proc.wait(timeout=60)

    # then the next refresh succeeds, with the token still valid
    assert proc.returncode == -9
    fresh = store.refresh(store.get(token.id))
    assert fresh.state == VALID and not fresh.expired
    assert stored(store, token).refresh_failures == 0


@pytest.mark.parametrize("rotation", ["off", "rotate"])
def test_a_worker_killed_right_after_the_sso_answer_leaves_a_refreshable_token(
    emulator, store, child, rotation
):
    # given an expired token and an SSO that keeps old refresh tokens valid
    emulator.configure(rotation=rotation)
    token = _grant_token(emulator, store, 92000002)

    # when a worker process dies the moment the SSO answered
    proc = child("die-after-answer", token.id)
    proc.wait(timeout=60)

    # then the next refresh succeeds with the stored refresh token
    assert proc.returncode == -9
    fresh = store.refresh(store.get(token.id))
    assert fresh.state == VALID and not fresh.expired


def test_a_worker_killed_right_after_a_rejecting_rotation_reports_a_new_login(
    emulator, store, child
):
    # given an expired token and an SSO that rejects rotated-out tokens
    emulator.configure(rotation="rotate_reject_old")
    token = _grant_token(emulator, store, 92000003)

    # when a worker process dies the moment the SSO answered (the new
    # refresh token existed only in that process)
    proc = child("die-after-answer", token.id)
    proc.wait(timeout=60)
    assert proc.returncode == -9

    # then the next refresh marks the token as needing a new login, says
    # why, and keeps it
    with pytest.raises(TokenInvalidError, match="new login"):
        store.refresh(store.get(token.id))
    row = stored(store, token)
    assert row.state == REVOKED
    assert "log in again" in row.state_reason
    assert "never finished" in row.state_reason
    assert token_count(store) == 1


@pytest.mark.parametrize("rotation", ["off", "rotate", "rotate_reject_old"])
@pytest.mark.parametrize("esi_settings_overrides", [{"db_pool_max": 4}])
def test_worker_processes_racing_over_the_same_tokens_call_the_sso_once_each(
    emulator, store, child, tmp_path, rotation
):
    # given twenty expired tokens and four worker processes ready to go,
    # whatever the SSO does with used refresh tokens
    emulator.configure(sso_latency_s=0.05, rotation=rotation)
    tokens = [_grant_token(emulator, store, 93000000 + n) for n in range(20)]
    go = tmp_path / "go"
    procs = [child("refresh-due", go) for _ in range(4)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"

    # when they all run refresh_due at the same moment
    go.touch()
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]

    # then each token was refreshed exactly once, by one of them
    stats = emulator.stats()
    assert stats["sso_token_requests"] == 20
    assert set(stats["sso_refreshes_by_character"].values()) == {1}
    assert sum(r["success"] for r in results) == 20
    assert all(stored(store, t).state == VALID for t in tokens)


@pytest.mark.parametrize("rotation", ["off", "rotate", "rotate_reject_old"])
@pytest.mark.parametrize("esi_settings_overrides", [{"db_pool_max": 4}])
def test_processes_asking_one_token_for_its_access_token_call_the_sso_once(
    emulator, store, child, tmp_path, rotation
):
    # given one expired token, a slow SSO and five processes holding it
    emulator.configure(sso_latency_s=0.3, rotation=rotation)
    token = _grant_token(emulator, store, 93100001)
    go = tmp_path / "go"
    procs = [child("use-token", token.id, go) for _ in range(5)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"

    # when all of them ask for its access token at once
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]

    # then one SSO call served them all
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outputs]
    assert emulator.stats()["sso_token_requests"] == 1
    assert stored(store, token).state == VALID
