"""The demo wiring of ``esi-worker run --emulator``: emulator, settings, seeded tokens."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from .emulator import Emulator
    from .runtime import Runtime

log = logging.getLogger(__name__)

# Characters whose ESI answers are in the emulator's recordings. The first
# one's private data (assets) was recorded; the others have public data.
DEMO_CHARACTERS = (
    (2112000001, "Test Pilot One", (
        "esi-assets.read_assets.v1",
        "esi-skills.read_skills.v1",
        "esi-wallet.read_character_wallet.v1",
    )),
    (2113024536, "Bokobo Shahni", ("esi-skills.read_skills.v1",)),
    (96224792, "Mitani", ("esi-wallet.read_character_wallet.v1",)),
)
# The one region with a complete recorded order book (3 pages).
DEMO_REGION = 10000070
# The owner recorded on demo tokens: only these are ever handed to an
# emulator, so a real token sharing the database is never rewritten.
DEMO_USER = "esi-worker-demo"


def start_emulator(port: int = 0) -> Emulator:
    """Start the ESI + SSO emulator on 127.0.0.1 in this process."""
    from .emulator import Emulator, EmulatorConfig

    # The strictest rotation: a refresh token stops working once rotated, so
    # a worker that failed to store the new one would lose the token.
    config = EmulatorConfig(port=port, rotation="rotate_reject_old")
    emulator = Emulator(config).start()
    log.info("emulator serving ESI and SSO on %s", emulator.base_url)
    return emulator


def demo_settings(settings: Settings, emulator: Emulator) -> Settings:
    """``settings`` pointed at the emulator, with the recorded region.

    With no database URL the demo keeps its embedded PostgreSQL (and its
    token key) in a ``demo`` folder of its own, apart from real tokens.
    """
    if not settings.database_url:
        settings = settings.replace(data_dir=settings.data_dir / "demo")
    return settings.replace(
        sso_base_url=emulator.base_url,
        esi_base_url=emulator.base_url,
        sso_client_id=emulator.client_id,
        sso_client_secret=emulator.client_secret,
        market_regions=[DEMO_REGION],
        contact_email=settings.contact_email or "demo@esi-worker.invalid",
        # The emulator has no daily downtime; without this a demo started
        # at 11:00 UTC would defer every run for a quarter of an hour.
        esi_downtime_utc="",
    )


def seed_tokens(runtime: Runtime, emulator: Emulator) -> int:
    """Give the emulator a grant for every demo character and store the tokens.

    Tokens stored by an earlier demo run are adopted by the new emulator
    (it starts empty), so nothing already in the database goes stale.
    """
    adopted = _adopt_existing(runtime, emulator)
    seeded = 0
    for character_id, name, scopes in DEMO_CHARACTERS:
        # A character is seeded again when no adopted token covers its
        # scopes (its demo token was revoked or pruned, say).
        if any(c == character_id and set(scopes) <= s for c, s in adopted):
            continue
        grant = emulator.create_grant(
            character_id=character_id, character_name=name, scopes=list(scopes)
        )
        runtime.tokens.import_grant(grant, user=DEMO_USER)
        seeded += 1
    log.info("demo tokens: %d seeded, %d adopted from earlier runs", seeded, len(adopted))
    return seeded + len(adopted)


def _adopt_existing(
    runtime: Runtime, emulator: Emulator
) -> list[tuple[int, set[str]]]:
    adopted: list[tuple[int, set[str]]] = []
    tokens = list(runtime.tokens.query().filter(state="valid", user=DEMO_USER))
    for token in tokens:
        if not token.refresh_token:
            continue
        emulator.create_grant(
            character_id=token.character_id,
            character_name=token.character_name,
            scopes=list(token.scopes),
            owner_hash=token.character_owner_hash,
            refresh_token=token.refresh_token,
        )
        adopted.append((token.character_id, set(token.scopes)))
    # The new emulator signs with new keys: access tokens from the last run
    # would be refused by its ESI, so they are marked due for refresh.
    with runtime.pool.connection() as conn:
        conn.execute(
            "UPDATE esi_token SET access_expires = now() WHERE id = ANY(%s)",
            ([t.id for t in tokens if t.refresh_token],),
        )
    return adopted
