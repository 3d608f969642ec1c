"""Process roles: everything in one process (``run``), or worker and scheduler apart."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import dramatiq

from . import demo
from .actors import Actors, declare_actors
from .broker import broker_from_settings
from .db import ensure_schema, migrate, resolve_database_url
from .errors import ConfigurationError
from .jobs import Job, JobRegistry
from .jobs.registry import check_job_names
from .metrics import start_metrics_server
from .runtime import Runtime
from .scheduler import JobScheduler
from .settings import Settings
from .signals import stop_on_signals

log = logging.getLogger(__name__)


def run(
    settings: Settings,
    *,
    emulator: bool = False,
    emulator_port: int = 0,
    duration_s: float | None = None,
) -> None:
    """Scheduler and workers in one process, until a signal or ``duration_s``.

    :raises ConfigurationError: without SSO credentials and without ``emulator``.
    """
    with ExitStack() as stack:
        if emulator:
            emu = demo.start_emulator(emulator_port)
            stack.callback(emu.stop)
            settings = demo.demo_settings(settings, emu)
        require_sso_credentials(settings)

        runtime = stack.enter_context(open_runtime(settings, migrate_schema=True))
        if emulator:
            demo.seed_tokens(runtime, emu)
        serve_metrics(settings)

        jobs, registry = load_jobs(settings)
        broker = broker_from_settings(settings)
        actors = declare_actors(broker, registry)
        stack.enter_context(running_worker(broker, settings))
        # The demo shows every job's data at each start, not hours later.
        stack.enter_context(
            running_scheduler(runtime, jobs, actors, run_at_start=emulator)
        )
        log.info("esi-worker is running; press Ctrl-C to stop")
        wait_for_stop(duration_s)


def run_worker(settings: Settings, processes: int = 1, *, serve: bool = True) -> None:
    """The worker role of a multi-process deployment (Procfile ``worker``).

    With ``processes`` above 1 this process only launches that many worker
    processes and serves their summed metrics (see ``worker.launcher``).

    :param serve: serve ``/metrics`` from this process (off in launched ones).
    """
    require_shared_services(settings, "worker")
    if processes > 1:
        from .launcher import launch_workers

        launch_workers(settings, processes)
        return

    with open_runtime(settings) as runtime:  # noqa: F841 - made current inside
        jobs, registry = load_jobs(settings)
        if serve:
            serve_metrics(settings, database_gauges=False)
        from .metrics.series import prime_series

        prime_series(jobs)
        broker = broker_from_settings(settings)
        declare_actors(broker, registry)
        with running_worker(broker, settings):
            wait_for_stop(None)


def run_scheduler(settings: Settings) -> None:
    """The scheduler process of a multi-process deployment (Procfile ``scheduler``)."""
    require_shared_services(settings, "scheduler")
    with open_runtime(settings) as runtime:
        serve_metrics(settings)
        jobs, registry = load_jobs(settings)
        actors = declare_actors(broker_from_settings(settings), registry)
        with running_scheduler(runtime, jobs, actors):
            wait_for_stop(None)


def require_sso_credentials(settings: Settings) -> None:
    """Refuse to start without SSO credentials; never fall back to a fake.

    :raises ConfigurationError: no SSO application or no contact address.
    """
    if not settings.has_sso_credentials:
        raise ConfigurationError(
            "no SSO application configured: set ESI_WORKER_SSO_CLIENT_ID and "
            "ESI_WORKER_SSO_CLIENT_SECRET (from developers.eveonline.com), and "
            "ESI_WORKER_CONTACT_EMAIL for the User-Agent; or try the worker "
            "against the bundled emulator with 'esi-worker run --emulator'"
        )
    require_contact(settings)


def require_contact(settings: Settings) -> None:
    """Refuse to call ESI without a contact address in the User-Agent."""
    if not settings.contact_email.strip():
        # CCP asks every ESI client to say how to reach its operator; an
        # anonymous client is the first to be banned when it misbehaves.
        raise ConfigurationError(
            "no contact address for the User-Agent ESI asks for: set "
            "ESI_WORKER_CONTACT_EMAIL (an e-mail address, or 'discord:name' / "
            "'eve:Character Name'), and ESI_WORKER_APP_NAME / "
            "ESI_WORKER_APP_VERSION to name your tool"
        )


def require_shared_services(settings: Settings, role: str) -> None:
    """Separate processes must share a database and a broker."""
    missing = [
        name
        for name, value in (
            ("ESI_WORKER_DATABASE_URL", settings.database_url),
            ("ESI_WORKER_BROKER_URL", settings.broker_url),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"the {role} process needs {' and '.join(missing)}; "
            "to run everything in one process use 'esi-worker run'"
        )
    require_sso_credentials(settings)


@contextmanager
def open_runtime(settings: Settings, *, migrate_schema: bool = False) -> Iterator[Runtime]:
    """A runtime on the configured (or embedded) database, made current."""
    url = resolve_database_url(settings)
    if migrate_schema:
        migrate(url)
    else:
        # An embedded database is ours to migrate; a configured one is the
        # operator's, who is told to run 'esi-worker migrate'.
        ensure_schema(url, migrate_if_behind=not settings.database_url)
    runtime = Runtime.from_settings(settings.replace(database_url=url))
    try:
        with runtime.activated():
            yield runtime
    finally:
        runtime.close()


def load_jobs(settings: Settings) -> tuple[dict[str, Job], JobRegistry]:
    """Every job plugin that loads and is not disabled; broken ones are logged."""
    registry = JobRegistry()
    check_job_names(settings, registry)
    jobs, failures = registry.load_all()
    for name, reason in failures.items():
        log.error("job %r is not scheduled: %s", name, reason, extra={"job": name})
    enabled = {n: j for n, j in jobs.items() if n not in settings.disabled_jobs}
    return enabled, registry


def serve_metrics(settings: Settings, *, database_gauges: bool = True) -> int | None:
    """Serve ``/metrics`` unless the port is 0; returns the port bound.

    :param database_gauges: also expose what a deployment shows once: the
        gauges read from the database (tokens, run queue, each job's
        record), the scheduler's heartbeat and the shared cache, through
        the current runtime; the scheduler and ``run`` do, workers do not.
    :raises ConfigurationError: the port is taken by another process.
    """
    if not settings.metrics_port:
        return None
    from .metrics.scheduling import scheduler_registry
    from .metrics.series import prime_series
    from .metrics.server import process_registry
    from .runtime import current

    if database_gauges:
        jobs, _registry = load_jobs(settings)
        registry = scheduler_registry(current(), jobs)
        prime_series(jobs)
    else:
        registry = process_registry()
    return start_metrics_server(settings.metrics_host, settings.metrics_port, registry)


@contextmanager
def running_worker(broker: dramatiq.Broker, settings: Settings) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_threads=settings.worker_threads)
    worker.start()
    log.info("worker started with %d threads", settings.worker_threads)
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)
        log.info("worker stopped")


@contextmanager
def running_scheduler(
    runtime: Runtime,
    jobs: dict[str, Job],
    actors: Actors,
    *,
    run_at_start: bool = False,
) -> Iterator[JobScheduler]:
    """A started scheduler that plans while it holds the leadership lock.

    :param run_at_start: run every job once right away (the demo).
    """
    from .leader import Leadership

    settings = runtime.settings
    leadership = None
    if settings.database_url:
        leadership = Leadership(settings.database_url, settings.scheduler_lock_key)
    scheduler = JobScheduler(
        runtime, jobs, actors, leadership=leadership, run_at_start=run_at_start
    )
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown()


def wait_for_stop(duration_s: float | None) -> None:
    """Block until SIGINT/SIGTERM, or until ``duration_s`` has passed."""
    stop_on_signals().wait(duration_s)
