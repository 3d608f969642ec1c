"""The group and the process commands: migrate, run, worker, scheduler, emulator."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.runner import require_shared_services, require_sso_credentials

SCRIPT = os.path.join(os.path.dirname(sys.executable), "esi-worker")
PASSWORD = "hunter2secret"
UNREACHABLE = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"


def esi_worker(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``esi-worker ARGS`` in a process of its own, with only ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESI_WORKER_")}
    return subprocess.run(
        [SCRIPT, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ("migrate",),
        ("run", "--duration", "1"),
        ("worker",),
        ("scheduler",),
        ("tokens", "list"),
        ("tokens", "show", "1"),
        ("tokens", "refresh"),
        ("tokens", "revoke", "1"),
        ("tokens", "reencrypt"),
        ("tokens", "import-django-esi", "--from", UNREACHABLE),
        ("login",),
        ("jobs", "runs"),
        ("jobs", "run", "market_orders"),
    ],
    ids=lambda command: "-".join(command[:2]),
)
def test_an_unreachable_database_is_one_error_line_without_the_password(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # given a configured database nobody listens for, and the rest set
    env = {
        "ESI_WORKER_DATABASE_URL": UNREACHABLE,
        "ESI_WORKER_DATA_DIR": str(tmp_path),
        "ESI_WORKER_BROKER_URL": "redis://127.0.0.1:6379/15",
        "ESI_WORKER_SSO_CLIENT_ID": "some-app",
        "ESI_WORKER_SSO_CLIENT_SECRET": "some-secret",
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_METRICS_PORT": "0",
    }

    # when the command runs
    result = esi_worker(*command, env=env)

    # then it exits 1 with one line naming the server, never the password
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    errors = error_lines(result)
    assert len(errors) == 1, output
    assert errors[0].startswith("Error: cannot connect to PostgreSQL at 127.0.0.1:1/x")
    assert PASSWORD not in output


def test_run_and_the_shared_roles_accept_a_native_application(
    settings, clean_db, emulator, tmp_path: Path
) -> None:
    # given a native application: a client id and no secret
    native = settings.replace(
        sso_client_id=emulator.native_client_id,
        sso_client_secret=None,
        broker_url="redis://127.0.0.1:6379/15",
    )
    env = {
        "ESI_WORKER_DATABASE_URL": settings.database_url,
        "ESI_WORKER_DATA_DIR": str(tmp_path),
        "ESI_WORKER_SSO_BASE_URL": emulator.base_url,
        "ESI_WORKER_ESI_BASE_URL": emulator.base_url,
        "ESI_WORKER_SSO_CLIENT_ID": emulator.native_client_id,
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
        "ESI_WORKER_METRICS_PORT": "0",
        "ESI_WORKER_ESI_DOWNTIME_UTC": "",
    }

    # when run starts with it, and the worker and scheduler roles check it
    result = esi_worker("run", "--duration", "2", env=env, timeout_s=120)
    require_sso_credentials(native)
    require_shared_services(native, "worker")

    # then run ran until its duration was over
    assert result.returncode == 0, result.stderr[-3000:]
    assert "esi-worker is running" in result.stderr


def test_run_without_a_client_id_names_only_what_is_missing(tmp_path: Path) -> None:
    # given a contact address but no SSO application
    env = {
        "ESI_WORKER_DATA_DIR": str(tmp_path),
        "ESI_WORKER_CONTACT_EMAIL": "tests@example.invalid",
    }

    # when
    result = esi_worker("run", env=env)

    # then the client id is named as missing, the contact address is not
    errors = error_lines(result)
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "set ESI_WORKER_SSO_CLIENT_ID" in errors[0]
    assert "a native one has none" in errors[0]
    assert "ESI_WORKER_CONTACT_EMAIL" not in errors[0]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("emulator", "--port", "{taken}"), "--port"),
        (("run", "--emulator", "--emulator-port", "{taken}"), "--emulator-port"),
    ],
    ids=["emulator", "run"],
)
def test_a_taken_emulator_port_names_the_address_and_the_option(
    tmp_path: Path, taken_port: int, args: tuple[str, ...], option: str
) -> None:
    # given a port another process listens on
    env = {"ESI_WORKER_DATA_DIR": str(tmp_path), "ESI_WORKER_METRICS_PORT": "0"}

    # when the emulator is asked to serve there
    result = esi_worker(*(a.format(taken=taken_port) for a in args), env=env)

    # then one line names the address and the option to change
    errors = error_lines(result)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr
    assert f"127.0.0.1:{taken_port}" in errors[0] and option in errors[0]
    assert not (tmp_path / "demo").exists(), "nothing was started"


@pytest.mark.parametrize(
    "args",
    [
        ("emulator", "--port", "99999"),
        ("run", "--emulator", "--emulator-port", "70000"),
        ("login", "--port", "-1"),
        ("run", "--emulator", "--duration", "-1"),
        ("run", "--emulator", "--duration", "nan"),
        ("run", "--use-configured-services"),
    ],
    ids=["emulator-port", "run-port", "login-port", "negative", "nan", "no-emulator"],
)
def test_out_of_range_options_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # when a command gets an option it cannot use
    result = esi_worker(*args, env={"ESI_WORKER_DATA_DIR": str(tmp_path)})

    # then click refuses it (exit 2) before anything starts
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and error_lines(result)
    assert not (tmp_path / "demo").exists()


def test_an_emulator_host_not_of_this_machine_names_the_host_option() -> None:
    # when the emulator is asked to serve on a documentation address
    result = esi_worker("emulator", "--host", "203.0.113.5", env={})

    # then one line names the address and --host
    errors = error_lines(result)
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "203.0.113.5:8090" in errors[0] and "--host" in errors[0]


def test_a_taken_metrics_port_stops_run_before_anything_starts(
    tmp_path: Path, taken_port: int
) -> None:
    # given the metrics port taken by another process
    env = {
        "ESI_WORKER_DATA_DIR": str(tmp_path),
        "ESI_WORKER_METRICS_PORT": str(taken_port),
    }

    # when the demo is run
    result = esi_worker("run", "--emulator", env=env)

    # then it fails naming the setting, before the emulator or a database
    errors = error_lines(result)
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{taken_port}" in errors[0]
    assert "ESI_WORKER_METRICS_PORT" in errors[0]
    assert "emulator serving" not in result.stderr
    assert not (tmp_path / "demo").exists()


def test_a_misspelt_setting_is_warned_about_by_name_only(
    database_url: str, tmp_path: Path
) -> None:
    # given a typo'd variable beside the real settings
    env = {
        "ESI_WORKER_DATABASE_URL": database_url,
        "ESI_WORKER_DATA_DIR": str(tmp_path),
        "ESI_WORKER_DATABSE_URL": f"postgresql://app:{PASSWORD}@db.invalid/esi",
    }

    # when a command runs
    result = esi_worker("migrate", env=env)

    # then it warns naming the variable and its likely meaning, not its value
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert "ESI_WORKER_DATABSE_URL is not an esi-worker setting" in warnings[0]
    assert "did you mean ESI_WORKER_DATABASE_URL?" in warnings[0]
    assert PASSWORD not in result.stdout + result.stderr


def test_a_free_port_is_still_served(tmp_path: Path) -> None:
    # given a free port for the emulator
    port = _free_port()

    # when the emulator serves there
    with subprocess.Popen(
        [SCRIPT, "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline() if proc.stdout else ""
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    # then it says where it serves
    assert f"esi-worker emulator on http://127.0.0.1:{port}" in line
