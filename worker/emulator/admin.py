"""The admin endpoints: drive an emulator in another process over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ScopeError
from .messages import Request, Response, error_response, json_response

if TYPE_CHECKING:
    from .server import Emulator

PREFIX = "/_emulator/"


class AdminService:
    """``/_emulator/grants``, ``config``, ``stats`` and ``reset``."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("POST", "/_emulator/grants"): self.create_grant,
            ("GET", "/_emulator/config"): self.get_config,
            ("PATCH", "/_emulator/config"): self.patch_config,
            ("GET", "/_emulator/stats"): self.get_stats,
            ("POST", "/_emulator/reset"): self.reset,
        }

    def route(self, request: Request) -> Callable[[Request], Response] | None:
        """The handler for ``request``; a 404 handler for unknown admin paths."""
        if not request.path.startswith(PREFIX):
            return None
        handler = self._routes.get((request.method, request.path.rstrip("/")))
        return handler or (lambda _: error_response(404, "unknown admin endpoint"))

    def create_grant(self, request: Request) -> Response:
        """JSON in: character_id, character_name, scopes, owner_hash?."""
        try:
            payload = _object(request)
            grant = self._emulator.create_grant(
                character_id=int(payload["character_id"]),
                character_name=str(payload["character_name"]),
                scopes=payload.get("scopes") or [],
                owner_hash=payload.get("owner_hash"),
                refresh_token=payload.get("refresh_token"),
            )
        except KeyError as exc:
            return error_response(400, f"missing field {exc.args[0]!r}")
        except (ValueError, TypeError, ScopeError) as exc:
            return error_response(400, str(exc))
        return json_response(201, grant.to_json())

    def get_config(self, request: Request) -> Response:
        """The switches in force."""
        return json_response(200, self._emulator.config.to_json())

    def patch_config(self, request: Request) -> Response:
        """Change switches; answers the new config."""
        try:
            self._emulator.configure(**_object(request))
        except (ConfigurationError, ValueError, TypeError) as exc:
            return error_response(400, str(exc))
        return json_response(200, self._emulator.config.to_json())

    def get_stats(self, request: Request) -> Response:
        """The counters."""
        return json_response(200, self._emulator.stats())

    def reset(self, request: Request) -> Response:
        """Grants, counters and faults cleared; default switches back."""
        self._emulator.reset()
        return json_response(200, {"reset": True})


def _object(request: Request) -> dict[str, Any]:
    try:
        payload = request.json()
    except ValueError:
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")  # noqa: TRY004 (a 400)
    return payload
