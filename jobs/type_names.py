"""Type names and descriptions in every language ESI serves (public, localized)."""

from __future__ import annotations

from typing import Any

from worker.jobs import JobContext, job


@job(every=86400, timeout=900, routes=["/universe/types/{type_id}/"])
def type_names(ctx: JobContext) -> None:
    """Store the configured types' names in each language of the operation."""
    operation = ctx.esi.Universe.get_universe_types_type_id
    rows = []
    for type_id in ctx.settings.type_ids:
        answers = operation(
            type_id=type_id, _request_options={"also_return_response": True}
        ).results_localized()
        rows += _rows(ctx, type_id, answers)
    _store(ctx, rows)
    ctx.stats.items = len(rows)
    languages = {row[1] for row in rows}
    ctx.log.info(
        "stored %d type names in %d languages (%s)",
        len(rows), len(languages), ", ".join(sorted(languages)),
    )


def _rows(ctx: JobContext, type_id: int, answers: dict[str, Any]) -> list[tuple]:
    rows = []
    for language, (data, response) in answers.items():
        served = (response.headers or {}).get("Content-Language", language)
        if _base(served) != _base(language):
            # ESI (or a mirror) fell back to another language: storing it
            # under the asked-for one would put English in the German column.
            ctx.log.debug("type %r: asked for %r, served %r", type_id, language, served)
            continue
        rows.append((
            type_id, _stored_language(language), data["name"],
            data.get("description"), data.get("group_id"), data.get("published"),
            ctx.clock.now(),
        ))
    return rows


def _base(language: str) -> str:
    return language.lower().split("-")[0]


def _stored_language(language: str) -> str:
    # The Swagger-era spec says "en-us", today's OpenAPI spec says "en": one
    # column value for English whichever spec the client was built from.
    return "en" if _base(language) == "en" else language


def _store(ctx: JobContext, rows: list[tuple]) -> None:
    with ctx.connection() as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO esi_type_name (type_id, language, name, description, group_id,"
            " published, fetched) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (type_id, language) DO UPDATE SET name = EXCLUDED.name,"
            " description = EXCLUDED.description, group_id = EXCLUDED.group_id,"
            " published = EXCLUDED.published, fetched = EXCLUDED.fetched",
            rows,
        )
