"""Process roles: everything in one process (``run``), or worker and scheduler apart."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Literal

import dramatiq

from . import demo
from .actors import Actors, declare_actors
from .broker import broker_from_settings
from .db import ensure_schema, migrate, resolve_database_url
from .errors import ConfigurationError
from .jobs import Job, JobRegistry
from .jobs.registry import check_job_names
from .metrics import start_metrics_server
from .ports import check_bindable
from .runtime import Runtime
from .scheduler import JobScheduler
from .settings import Settings
from .signals import stop_on_signals

if TYPE_CHECKING:
    from .emulator import Emulator

log = logging.getLogger(__name__)

# Settings of an operator's shared services, which the demo keeps out of.
_DEMO_IGNORES = ("database_url", "broker_url", "redis_url")
# Where demo.start_emulator serves.
_EMULATOR_HOST = "127.0.0.1"


def run(
    settings: Settings,
    *,
    emulator: bool = False,
    emulator_port: int = 0,
    duration_s: float | None = None,
    demo_services: Literal["own", "configured"] = "own",
) -> None:
    """Scheduler and workers in one process, until a signal or ``duration_s``.

    :param demo_services: with ``emulator``, whether the demo keeps its
        data to itself (an embedded PostgreSQL in the demo folder, broker
        and cache in the process) or uses the configured ones (tests).
    :raises ConfigurationError: without SSO credentials and without
        ``emulator``; or a port to serve on is taken.
    """
    with ExitStack() as stack:
        if not emulator:
            require_sso_credentials(settings)  # before anything starts
        check_metrics_port(settings)
        if emulator:
            settings, emu = _start_demo(stack, settings, emulator_port, demo_services)

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
    if serve:
        check_metrics_port(settings)
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
    check_metrics_port(settings)
    with open_runtime(settings) as runtime:
        serve_metrics(settings)
        jobs, registry = load_jobs(settings)
        actors = declare_actors(broker_from_settings(settings), registry)
        with running_scheduler(runtime, jobs, actors):
            wait_for_stop(None)


def require_sso_credentials(settings: Settings) -> None:
    """Refuse to start without SSO credentials; never fall back to a fake.

    A client id is enough: a native application (PKCE) has no secret, and
    a web application missing its secret hears so from the SSO.

    :raises ConfigurationError: no SSO application or no contact address,
        naming each setting that is missing.
    """
    if not settings.has_sso_credentials:
        contact = (
            ""
            if settings.contact_email.strip()
            else ", and ESI_WORKER_CONTACT_EMAIL for the User-Agent ESI asks for"
        )
        raise ConfigurationError(
            "no SSO application configured: set ESI_WORKER_SSO_CLIENT_ID (from "
            "developers.eveonline.com; a web application also sets "
            f"ESI_WORKER_SSO_CLIENT_SECRET, a native one has none){contact}; or "
            "try the worker against the bundled emulator with "
            "'esi-worker run --emulator'"
        )
    require_contact(settings)


def check_metrics_port(settings: Settings) -> None:
    """Fail before anything starts when ``/metrics`` cannot be served.

    :raises ConfigurationError: the port is taken, or the host is not an
        address of this machine.
    """
    if not settings.metrics_port:
        return
    check_bindable(
        settings.metrics_host,
        settings.metrics_port,
        what="metrics",
        port_hint="give each process its own ESI_WORKER_METRICS_PORT "
        "(0 turns the endpoint off)",
        host_option="ESI_WORKER_METRICS_HOST",
    )


def check_emulator_port(port: int) -> None:
    """Fail before anything starts when the demo's emulator cannot listen.

    :raises ConfigurationError: naming ``--emulator-port``.
    """
    check_bindable(
        _EMULATOR_HOST,
        port,
        what="the emulator",
        port_hint="choose another --emulator-port (0: any free one)",
        family=socket.AF_INET,  # the emulator's server is IPv4 only
    )


def own_demo_services(settings: Settings) -> Settings:
    """``settings`` without the operator's database, broker and Redis.

    The demo writes demo tokens and their data; in an operator's database
    a later real run would try to refresh those tokens, and on a shared
    broker real workers would take the demo's messages. Without a
    database URL the demo keeps an embedded PostgreSQL in its own folder.
    """
    ignored = [
        f"ESI_WORKER_{name.upper()}"
        for name in _DEMO_IGNORES
        if getattr(settings, name)
    ]
    if not ignored:
        return settings
    log.warning(
        "the demo ignores %s: its demo tokens and data go to an embedded "
        "PostgreSQL in %s, its broker and cache stay in this process",
        " and ".join(ignored),
        settings.data_dir / "demo",
        extra={"ignored": ignored},
    )
    return settings.replace(**dict.fromkeys(_DEMO_IGNORES))


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


def _start_demo(
    stack: ExitStack, settings: Settings, port: int, services: str
) -> tuple[Settings, Emulator]:
    """The demo's emulator, stopped with ``stack``, and settings pointed at it."""
    if services == "own":
        settings = own_demo_services(settings)
    check_emulator_port(port)
    emu = demo.start_emulator(port)
    stack.callback(emu.stop)
    settings = demo.demo_settings(settings, emu)
    require_sso_credentials(settings)
    return settings, emu
