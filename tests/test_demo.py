"""The demo of ``run --emulator`` touches only the tokens it seeded itself."""

from __future__ import annotations

from typing import Any

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
