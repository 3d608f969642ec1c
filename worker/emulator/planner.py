"""``POST /route/{origin}/{destination}``: ESI's route planner since 2025-09-30.

Today's ESI plans routes with a POST whose JSON body names the preference,
the systems to avoid and extra connections; the old ``GET`` of the bundled
Swagger spec is gone from that date on. No spec we bundle describes it,
so the emulator serves it from the nine exchanges recorded in February
2026 (``data/recorded/routes/unmatched_post__route_*``, see its MANIFEST):
a request is answered with the recording whose body asks the same, once
ESI's defaults are filled in.
"""

from __future__ import annotations

import json
from typing import Any

from .operations import Operation
from .recordings import Recording, RecordingLibrary

OPERATION_ID = "post_route_origin_destination"
TEMPLATE = "/route/{origin}/{destination}/"
SINCE = "2025-09-30"
"""The compatibility date the recordings echo: the route's own version."""
RATE_LIMIT = ("routes", 3600, 900.0)
"""The group and figures every recorded answer carries (3600/15m)."""
DEFAULTS: dict[str, Any] = {
    "avoid_systems": [],
    "connections": [],
    "preference": "Shorter",
    "security_penalty": 50,
}
"""What ESI assumes for a field left out: the recordings with and without
``connections: []``, or ``security_penalty: 50``, answer alike."""


def operation() -> Operation:
    """The route planner as an operation of the emulator's table."""
    return Operation(
        OPERATION_ID,
        "POST",
        TEMPLATE,
        None,
        False,
        False,
        None,
        frozenset({"origin", "destination"}),
        RATE_LIMIT,
        since=SINCE,
    )


def find(
    library: RecordingLibrary, path_params: dict[str, str], body: Any
) -> Recording | None:
    """The newest recording answering this origin, destination and body."""
    route = (
        f"POST /route/{int(path_params['origin'])}/{int(path_params['destination'])}/"
    )
    wanted = _normalized(body)
    if wanted is None:
        return None
    matching = [
        r for r in library.by_route(route) if _normalized(r.request_body) == wanted
    ]
    return max(matching, key=lambda r: r.recorded_s, default=None)


def is_valid(body: Any) -> bool:
    """Whether a request body is shaped as the route takes it."""
    return _normalized(body) is not None


def _normalized(body: Any) -> str | None:
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - set(DEFAULTS):
        return None
    return json.dumps({**DEFAULTS, **body}, sort_keys=True)
