"""The job API: what a plugin declares, how it is found and what a run receives.

A job is a function taking a :class:`JobContext`, declared with :func:`job`
and registered under the ``esi_worker.jobs`` entry-point group::

    @job(scopes=["esi-assets.read_assets.v1"], fan_out="per_character",
         every=3600)
    def assets(ctx):
        ...
"""

from __future__ import annotations

from .context import CountingClient, JobContext
from .declaration import ROLES_SCOPE, FanOut, Job, job
from .decorators import single_use_token, token_required, tokens_required
from .registry import ENTRY_POINT_GROUP, JobRegistry, esi_scopes
from .schedule import Schedule, stable_fraction
from .stats import RunStats, record_esi_call

__all__ = [
    "ENTRY_POINT_GROUP",
    "ROLES_SCOPE",
    "CountingClient",
    "FanOut",
    "Job",
    "JobContext",
    "JobRegistry",
    "RunStats",
    "Schedule",
    "esi_scopes",
    "job",
    "record_esi_call",
    "single_use_token",
    "stable_fraction",
    "token_required",
    "tokens_required",
]
