"""A worker in its own process, for the crash and race tests (not a test module).

``python refresh_child.py MODE SETTINGS_JSON [ARG...]``:

- ``die-after-answer TOKEN_ID``: refresh; SIGKILL itself the moment the SSO
  answered (before the journal saw the new refresh token).
- ``die-after-journal TOKEN_ID``: refresh; SIGKILL itself right after the
  journal recorded the new refresh token, before the commit.
- ``refresh-due GO_FILE``: print ``ready``, wait for GO_FILE, run
  ``refresh_due`` once, print the summary as JSON.
- ``use-token TOKEN_ID GO_FILE``: like above, but ask one token for its
  access token with ``valid_access_token()``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from worker.runtime import Runtime
from worker.settings import Settings


def _wait_for(go_file: str) -> None:
    print("ready", flush=True)
    while not Path(go_file).exists():
        time.sleep(0.01)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    runtime = Runtime.from_settings(Settings(**config))
    store = runtime.tokens

    if mode == "die-after-answer":
        original = store.sso.refresh_answer

        def answer_then_die(*args, **kwargs):
            original(*args, **kwargs)
            _die()

        store.sso.refresh_answer = answer_then_die  # type: ignore[method-assign]
        store.refresh(store.get(int(sys.argv[3])))
    elif mode == "die-after-journal":
        original_received = store.journal.received

        def record_then_die(*args, **kwargs):
            original_received(*args, **kwargs)
            _die()

        store.journal.received = record_then_die  # type: ignore[method-assign]
        store.refresh(store.get(int(sys.argv[3])))
    elif mode == "refresh-due":
        _wait_for(sys.argv[3])
        summary = store.refresh_due(parallelism=2, batch_size=5)
        print(json.dumps({"success": summary.success, "total": summary.total}))
    elif mode == "use-token":
        token = store.get(int(sys.argv[3]))
        _wait_for(sys.argv[4])
        token.valid_access_token()
        print(json.dumps({"ok": True}))
    store.close()
    runtime.close()


if __name__ == "__main__":
    main()
