"""Zero-valued series for every bounded label value known up front.

A counter series that first appears at 1 hides its first event from
``rate()`` and ``increase()``: an alert on "any 420 in 5 minutes" would
miss the first one. Creating the series at zero when a process starts
makes the first event count and lets dashboards show 0 instead of
"no data".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from types import ModuleType

from prometheus_client.metrics import MetricWrapperBase

log = logging.getLogger(__name__)

JOB_OUTCOMES = ("success", "failure", "skipped", "deferred")
DEFER_REASONS = ("downtime", "route_down", "limits")
# Each refresh outcome with the class of SSO answer that leads to it.
REFRESH_SERIES = (
    {"outcome": "success", "sso_class": "success"},
    {"outcome": "dead", "sso_class": "dead_grant"},
    {"outcome": "owner_changed", "sso_class": "success"},
    {"outcome": "transient", "sso_class": "transient"},
    {"outcome": "config_error", "sso_class": "config"},
    {"outcome": "skipped", "sso_class": "none"},
)
# Label sets every process knows without configuration, by metric name.
STATIC_SERIES: Mapping[str, tuple[Mapping[str, str], ...]] = {
    "esi_worker_esi_limited": ({"status": "420"}, {"status": "429"}),
    "esi_worker_esi_held_seconds": ({"reason": "error_limit"}, {"reason": "rate_limit"}),
    "esi_worker_cache_errors": ({"backend": "MemoryCache"}, {"backend": "RedisCache"}),
    "esi_worker_token_refreshes": REFRESH_SERIES,
}


def prime_series(jobs: Iterable[str] = ()) -> int:
    """Create every known series at zero; returns how many were created.

    Metrics not defined (yet) or with other label names are left alone.
    """
    names = sorted({str(job) for job in jobs})
    wanted = dict(STATIC_SERIES)
    wanted["esi_worker_job_runs"] = tuple(
        {"job": job, "outcome": outcome} for job in names for outcome in JOB_OUTCOMES
    )
    wanted["esi_worker_job_runs_deferred"] = tuple(
        {"job": job, "reason": reason} for job in names for reason in DEFER_REASONS
    )

    metrics = _metrics_by_name()
    created = 0
    for name, label_sets in wanted.items():
        metric = metrics.get(name)
        if metric is not None:
            created += _prime(metric, label_sets)
    log.debug("primed %d metric series at zero", created)
    return created


def _prime(metric: MetricWrapperBase, label_sets: Iterable[Mapping[str, str]]) -> int:
    created = 0
    for labels in label_sets:
        try:
            metric.labels(**labels)
        except ValueError:  # the metric has other label names: not ours to guess
            return created
        created += 1
    return created


def _metrics_by_name() -> dict[str, MetricWrapperBase]:
    from . import esi, jobs, tokens

    return {
        family.name: metric
        for metric in _metric_objects((esi, jobs, tokens))
        for family in metric.describe()
    }


def _metric_objects(modules: Iterable[ModuleType]) -> Iterator[MetricWrapperBase]:
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                yield value
