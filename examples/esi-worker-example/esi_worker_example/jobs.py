"""Two example jobs: skills of each character, and the server status."""

from __future__ import annotations

from worker.jobs import JobContext, job, tokens_required
from worker.tokens import Token

SKILLS = "esi-skills.read_skills.v1"


@job(
    scopes=SKILLS,
    fan_out="per_character",
    every=3600,
    timeout=300,
    retries=2,
    routes=["/characters/{character_id}/skills/"],
)
def example_skills(ctx: JobContext) -> None:
    """Count the skills and skill points of the run's character."""
    operation = ctx.esi.Skills.get_characters_character_id_skills
    skills = operation(character_id=ctx.character_id).result()
    ctx.stats.items = len(skills["skills"])
    ctx.log.info(
        "character %r: %d skills, %d SP",
        ctx.character_id,
        ctx.stats.items,
        skills["total_sp"],
        extra={"character_id": ctx.character_id},
    )


@job(every=300, jitter=60, routes=["/status/"])
@tokens_required(scopes=SKILLS)
def example_server_status(ctx: JobContext, tokens: list[Token]) -> None:
    """Read the server status once, and count the characters we watch."""
    status = ctx.esi.Status.get_status().result()
    ctx.stats.items = len(tokens)
    ctx.log.info(
        "%d players online; %d characters granted %s",
        status["players"],
        len(tokens),
        SKILLS,
    )
