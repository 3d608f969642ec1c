"""Benchmark: bulk refresh of many tokens against the emulator's SSO.

Runs the emulator in its own process (so its CPU does not share our GIL),
gives it a fixed SSO latency, stores N expired tokens in a scratch
PostgreSQL database and times one ``refresh_due`` run. Prints the rate, the
ideal rate (parallelism / latency), the share of the ideal reached, and two
database figures per token:

- "database time per token": the time the PostgreSQL server spent
  executing the run's statements (``pg_stat_database.active_time`` of the
  scratch database, before and after the run), divided by the tokens;
- "time in database calls": the wall time this process's threads spent
  inside psycopg and the pool (every statement, fetch, pipeline sync,
  commit and pool checkout, the refresh journal included), summed over
  threads and divided by the tokens. It also holds the network round trips
  and the threads' waits for the GIL, so it grows with the thread count.

Targets (issue 3): at least 85 % of the ideal, under 2 ms of database time
per token, for 10,000 tokens, 50 ms latency and a parallelism of 8.

    python bench/bench_refresh.py [--tokens 10000] [--latency 0.05]
        [--parallelism 8] [--admin-db postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from worker.crypto import TokenCipher
from worker.db import create_pool, migrate
from worker.settings import Settings
from worker.sso import SSOClient
from worker.tokens import TokenStore

SCOPES = ["esi-assets.read_assets.v1", "esi-skills.read_skills.v1"]


class DatabaseTimer:
    """Adds up the time threads spend inside psycopg and the pool.

    Every entry point that can wait for the server is timed: statements,
    fetches, pipeline syncs, transaction begin and end, commits, pool
    checkouts. A call made inside another timed call (a pipeline's sync
    inside a transaction's exit) is counted once, by the outer one.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._depth = threading.local()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds

    def install(self, pool: Any) -> None:
        """Wrap the psycopg entry points the token store uses."""
        for owner, names in (
            (psycopg.Connection, ("execute", "commit", "rollback")),
            (psycopg.Cursor, ("execute", "executemany", "fetchone", "fetchall")),
            (psycopg.Transaction, ("__enter__", "__exit__")),
            (psycopg.Pipeline, ("__enter__", "__exit__", "sync")),
            (type(pool), ("getconn", "putconn")),
        ):
            for name in names:
                self._wrap(owner, name)

    def _wrap(self, owner: type, name: str) -> None:
        original = getattr(owner, name)
        timer, depth = self, self._depth

        def timed(*args: Any, **kwargs: Any) -> Any:
            level = getattr(depth, "level", 0)
            depth.level = level + 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth.level = level
                if level == 0:
                    timer.add(time.perf_counter() - started)

        setattr(owner, name, timed)


def main() -> None:
    """Parse the arguments, run the benchmark, print the figures."""
    args = _arguments()
    port = _free_port()
    with _emulator(port) as base_url, _scratch_database(args.admin_db) as db_url:
        admin = requests.Session()
        admin.patch(
            f"{base_url}/_emulator/config",
            json={"sso_latency_s": args.latency, "rotation": "rotate"},
            timeout=10,
        ).raise_for_status()
        settings = Settings(
            database_url=db_url,
            sso_base_url=base_url,
            esi_base_url=base_url,
            sso_client_id="esi-worker-emulator",
            sso_client_secret="emulator-secret",
            refresh_parallelism=args.parallelism,
            token_keys=[TokenCipher.new_key()],
        )
        sso = SSOClient(settings)
        print(f"seeding {args.tokens} tokens ...", flush=True)
        with create_pool(db_url, max_size=8) as seeding:
            _seed(TokenStore(seeding, sso, settings), base_url, args.tokens)
        # The timed run gets sessions of its own, so the server's statistics
        # of the seeding (reported as sessions end) stay out of its figure.
        time.sleep(1.0)
        pool = create_pool(db_url, max_size=args.parallelism + 4)
        store = TokenStore(pool, sso, settings)
        # Discovery and the key set are fetched once, before timing.
        sso.keys.key_for("JWT-Signature-Key", "RS256")
        before = admin.get(f"{base_url}/_emulator/stats", timeout=10).json()

        timer = DatabaseTimer()
        timer.install(pool)
        server_before = _server_active_s(db_url)
        started = time.perf_counter()
        summary = store.refresh_due(parallelism=args.parallelism, batch_size=200)
        wall_s = time.perf_counter() - started
        stats = admin.get(f"{base_url}/_emulator/stats", timeout=10).json()
        stats["sso_token_requests"] -= before["sso_token_requests"]
        # Sessions report their statistics when they end: end them first.
        pool.close()
        store.journal.close()
        sso.close()
        time.sleep(1.0)
        server_s = _server_active_s(db_url) - server_before
        _report(args, summary, wall_s, timer.seconds, server_s, stats)


def _report(
    args: argparse.Namespace,
    summary: Any,
    wall_s: float,
    db_s: float,
    server_s: float,
    stats: Any,
) -> None:
    rate = summary.success / wall_s
    ideal = args.parallelism / args.latency
    db_ms = 1000 * db_s / max(1, summary.total)
    server_ms = 1000 * server_s / max(1, summary.total)
    print(f"refresh run: {summary}")
    print(f"tokens refreshed:        {summary.success} in {wall_s:.1f} s")
    print(f"rate:                    {rate:.1f} tokens/s")
    print(f"ideal (parallelism/lat): {ideal:.1f} tokens/s")
    print(f"share of ideal:          {100 * rate / ideal:.1f} %  (target >= 85 %)")
    print(f"database time per token: {server_ms:.2f} ms  (target < 2 ms; the "
          "server's own, pg_stat_database.active_time)")
    print(f"time in database calls:  {db_ms:.2f} ms per token  (wall time in "
          "psycopg and the pool, summed over threads; also holds the round "
          "trips and this process's waits for the GIL)")
    print(
        f"SSO token requests:      {stats['sso_token_requests']} "
        f"(max in flight {stats['sso_max_in_flight']})"
    )


def _server_active_s(db_url: str) -> float:
    """Seconds the server has spent executing statements in this database.

    ``pg_stat_database`` is updated when a session ends a transaction, and
    reported up to ``stats_fetch_consistency`` later; the snapshot is
    cleared first so the reading is current.
    """
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT active_time FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return float(row[0] or 0.0) / 1000 if row else 0.0


def _seed(store: TokenStore, base_url: str, count: int) -> None:
    """Grants at the emulator, stored as expired tokens (8 threads at a time)."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))

    def one(n: int) -> None:
        answer = session.post(
            f"{base_url}/_emulator/grants",
            json={
                "character_id": 2_000_000_000 + n,
                "character_name": f"Bench Pilot {n}",
                "scopes": SCOPES,
            },
            timeout=30,
        )
        answer.raise_for_status()
        grant = answer.json()
        store.add(
            access_token=grant["access_token"],
            refresh_token=grant["refresh_token"],
            character_id=grant["character_id"],
            character_name=grant["character_name"],
            character_owner_hash=grant["owner_hash"],
            scopes=grant["scopes"],
            access_expires=dt.datetime.fromisoformat(grant["expires_at"]),
        )

    with ThreadPoolExecutor(max_workers=8) as executor:
        list(executor.map(one, range(count)))


@contextlib.contextmanager
def _emulator(port: int) -> Iterator[str]:
    """``python -m worker.emulator`` in a child process; its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base_url}/_emulator/config", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the emulator did not start") from None
                time.sleep(0.1)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _scratch_database(admin_url: str) -> Iterator[str]:
    """A migrated database that is dropped afterwards."""
    name = f"esi_worker_bench_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(admin_url), "dbname": name})
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument(
        "--admin-db", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
