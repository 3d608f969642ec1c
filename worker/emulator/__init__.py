"""An ESI + EVE SSO emulator on real HTTP, for tests, benchmarks and demos.

It serves CCP's bundled Swagger spec, real recorded ESI answers (see
``data/README.md``) and an SSO v2 that signs RS256/ES256 JWTs with keys
generated at start. Behaviours ESI.md marks as unverified are switches of
:class:`EmulatorConfig`, changeable while it runs.
"""

from __future__ import annotations

from .config import EmulatorConfig
from .grants import Grant
from .server import Emulator, serve

__all__ = ["Emulator", "EmulatorConfig", "Grant", "serve"]
