"""A character's assets (authed, paged), for the first token with the scope."""

from __future__ import annotations

from typing import Any

from worker.jobs import JobContext, job, token_required
from worker.tokens import Token

SCOPE = "esi-assets.read_assets.v1"
_COLUMNS = (
    "item_id", "type_id", "location_id", "location_flag", "location_type",
    "quantity", "is_singleton", "is_blueprint_copy",
)


@job(every=3600, timeout=600, routes=["/characters/{character_id}/assets/"])
@token_required(scopes=SCOPE)
def character_assets(ctx: JobContext, token: Token) -> None:
    """Store every asset of the first character whose token grants the scope."""
    client = ctx.esi_for(token)
    operation = client.Assets.get_characters_character_id_assets
    assets = operation(character_id=token.character_id).results()
    _replace_assets(ctx, token.character_id, assets)
    ctx.stats.items = len(assets)
    ctx.log.info(
        "stored %d assets of character %r", len(assets), token.character_id,
        extra={"character_id": token.character_id},
    )


def _replace_assets(ctx: JobContext, character_id: int, assets: list[dict[str, Any]]) -> None:
    now = ctx.clock.now()
    rows = [(character_id, *(a.get(c) for c in _COLUMNS), now) for a in assets]
    with ctx.connection() as conn, conn.transaction():
        conn.execute(
            "DELETE FROM esi_character_asset WHERE character_id = %s", (character_id,)
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO esi_character_asset (character_id, item_id, type_id,"
                " location_id, location_flag, location_type, quantity, is_singleton,"
                " is_blueprint_copy, fetched) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
