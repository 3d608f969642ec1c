"""Token upkeep: refresh tokens before they expire, prune dead ones."""

from __future__ import annotations

from worker.jobs import JobContext, job


@job(every=60, timeout=900)
def refresh_tokens(ctx: JobContext) -> None:
    """Refresh every token that expires within the look-ahead window."""
    summary = ctx.runtime.tokens.refresh_due()
    ctx.stats.items = summary.total
    ctx.log.info("token refresh finished: %s", summary)


@job(every=3600, timeout=300)
def prune_tokens(ctx: JobContext) -> None:
    """Delete tokens that stopped working longer ago than the grace period."""
    pruned = ctx.runtime.tokens.prune()
    ctx.stats.items = pruned
    ctx.log.info("token pruning removed %d dead tokens", pruned)
