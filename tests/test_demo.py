"""The demo of `run --emulator`: only its own tokens, and every job at each start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from worker import demo


def test_demo_adopts_only_its_own_tokens_and_reseeds_a_revoked_one(
    runtime: Any, emulator: Any
) -> None:
    # given a real token of a demo character, not seeded by the demo
    real = emulator.create_grant(
        character_id=2112000001, character_name="Test Pilot One",
        scopes=["esi-skills.read_skills.v1"],
    )
    stored = runtime.tokens.import_grant(real, user="alice")
    before = (stored.refresh_token, stored.access_token)

    # when the demo seeds its tokens twice (a second run adopts the first's)
    first = demo.seed_tokens(runtime, emulator)
    second = demo.seed_tokens(runtime, emulator)

    # then the real token is untouched and every demo character has a token
    after = runtime.tokens.query().filter(user="alice").first()
    assert (after.refresh_token, after.access_token) == before
    assert first == second == len(demo.DEMO_CHARACTERS)
    demo_tokens = list(runtime.tokens.query().filter(user=demo.DEMO_USER))
    assert {t.character_id for t in demo_tokens} == {
        c for c, *_ in demo.DEMO_CHARACTERS
    }


def test_demo_seeds_a_character_again_when_its_token_died(
    runtime: Any, emulator: Any
) -> None:
    # given a first demo run, then the assets character's token marked revoked
    demo.seed_tokens(runtime, emulator)
    with runtime.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_token SET state = 'revoked' WHERE character_id = 2112000001"
        )

    # when the demo runs again
    demo.seed_tokens(runtime, emulator)

    # then a new usable token holds the assets scope again
    holders = runtime.tokens.query().require_scopes("esi-assets.read_assets.v1")
    assert [t.character_id for t in holders] == [2112000001]


def test_every_start_of_the_demo_runs_each_job_at_once(
    database_url: str, clean_db: Any, tmp_path: Path
) -> None:
    # given: the demo has run once on this database, every job within its
    # period (market orders every 5 min, assets hourly, type names daily)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")},
        "ESI_WORKER_DATABASE_URL": database_url,
        "ESI_WORKER_DATA_DIR": str(tmp_path / "data"),
        "ESI_WORKER_METRICS_PORT": "0",
    }
    _start_demo_until(env, tmp_path, runs_each=1)

    # when: it starts again at once
    _start_demo_until(env, tmp_path, runs_each=2)

    # then: each job ran again at the second start, once (token refreshes
    # may have come round again meanwhile: every minute)
    runs = _runs(database_url)
    assert runs.pop("refresh_tokens") >= 2
    assert runs == dict.fromkeys(set(DEMO_JOBS) - {"refresh_tokens"}, 2)


DEMO_JOBS = (
    "character_assets", "market_orders", "prune_tokens", "refresh_tokens", "type_names"
)


def _start_demo_until(env: dict[str, str], tmp_path: Path, runs_each: int) -> None:
    """Run the demo until every job has ``runs_each`` successful runs."""
    log_path = tmp_path / f"demo-{runs_each}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--emulator",
             "--use-configured-services"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while _fewest_runs(env["ESI_WORKER_DATABASE_URL"]) < runs_each:
                output = log_path.read_text(errors="replace")
                assert proc.poll() is None, output
                assert time.monotonic() < deadline, (
                    f"not every job had {runs_each} runs within 120 s: "
                    f"{_runs(env['ESI_WORKER_DATABASE_URL'])}\n{output[-3000:]}"
                )
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")


def _fewest_runs(database_url: str) -> int:
    found = _runs(database_url)
    return min(found.get(job, 0) for job in DEMO_JOBS)


def _runs(database_url: str) -> dict[str, int]:
    """Successful runs per job."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT job, count(*) FROM esi_job_run WHERE outcome = 'success'"
            " GROUP BY job"
        ).fetchall()
    return dict(rows)
