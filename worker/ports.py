"""Listening addresses, checked before a process starts anything else."""

from __future__ import annotations

import errno
import socket

from .errors import ConfigurationError

# Errors that mean "this port, not this address": another process holds
# it, or it is a privileged port.
_PORT_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES})


def check_bindable(
    host: str,
    port: int,
    *,
    what: str,
    port_hint: str,
    host_option: str | None = None,
    family: socket.AddressFamily = socket.AF_UNSPEC,
) -> None:
    """Bind ``host:port`` once and let go, so a bad address fails up front.

    The servers bind again later; a port taken in between still fails
    there, with the server's own error.

    :param what: what would be served there ("metrics", "the emulator").
    :param port_hint: what to do when the port is taken, naming the option.
    :param host_option: the option that set ``host``, named when the host
        is not an address of this machine.
    :param family: the address family the server binds (any by default).
    :raises ConfigurationError: naming the address and what to change.
    """
    try:
        _bind_once(host, port, family)
    except OSError as exc:
        raise ConfigurationError(
            describe_bind_failure(exc, host, port, what, port_hint, host_option)
        ) from exc


def describe_bind_failure(
    exc: OSError,
    host: str,
    port: int,
    what: str,
    port_hint: str,
    host_option: str | None = None,
) -> str:
    """One line saying which address failed, why, and what to change."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    text = f"cannot serve {what} on {host}:{port} ({reason})"
    if exc.errno in _PORT_ERRNOS or host_option is None:
        return f"{text}: {port_hint}"
    return f"{text}: {host_option} must be an address of this machine"


def _bind_once(host: str, port: int, family: socket.AddressFamily) -> None:
    found = socket.getaddrinfo(
        host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    address_family, kind, proto, _name, address = found[0]
    with socket.socket(address_family, kind, proto) as sock:
        # As the servers do: a port left in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
