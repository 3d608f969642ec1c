"""The emulator's settings: a frozen set of switches, changeable at run time."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError

ROTATIONS = ("off", "rotate", "rotate_reject_old")
SCP_FORMS = ("auto", "list", "string", "absent")
SIGN_ALGS = ("RS256", "ES256")
SSO_FAULT_KINDS = (
    "non_json",
    "no_access_token",
    "timeout",
    "invalid_client",
    "invalid_grant",
    "drop",
)
# Crafted access tokens a fault can put in an otherwise real answer.
ACCESS_TOKEN_CRAFTS = (
    "expired",
    "other_character",
    "other_owner",
    "unknown_kid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "unsigned",
    "not_a_jwt",
)
GRANT_TYPES = ("refresh_token", "authorization_code")
# The keys an sso_faults entry may hold, and the ones that need the request
# to be carried out first (they change a real answer).
SSO_FAULT_KEYS = frozenset(
    {
        "status",
        "body",
        "json",
        "content_type",
        "headers",
        "retry_after",
        "kind",
        "seconds",
        "access_token",
        "character_id",
        "kid",
        "patch",
        "drop",
        "truncate",
        "process",
        "count",
        "grant_type",
    }
)
PROCESSING_KEYS = frozenset({"access_token", "patch", "drop", "truncate"})
_VARIANT_CHOICES = {
    "ratelimit_remaining": ("after", "before"),
    "reset_rounding": ("up", "down"),
    "retry_after_format": ("seconds", "http-date"),
    "past_last_page": ("404", "empty"),
    "unknown_language": ("400", "en"),
    "revoke_client_auth": ("ignore", "require"),
}
_LIMIT_RE = re.compile(r"^(\d+)/(\d+)([smh])$")
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}

# Fields fixed when the server starts; everything else is a run-time switch.
FIXED_FIELDS = ("host", "port", "client_id", "client_secret", "native_client_id")


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
    """Where the emulator listens, who is registered, and every behaviour switch.

    Switches mirror the places where ESI.md marks a behaviour UNVERIFIED: each
    plausible answer can be chosen so the worker is tested against all.

    SSO switches beyond rotation and ``scp``: ``rotation_grace_s`` (under
    ``rotate_reject_old``, a rotated-out refresh token still works for this
    long), ``refresh_idle_expiry_s`` (a refresh token unused this long is
    refused), ``transfer_revokes`` (a character transfer, see
    ``owner_changes``, kills its grants instead of changing the owner hash),
    ``signing_kid`` (sign with a key of this kid, made on first use) and
    ``jwks_withdrawn`` (kids the JWKS leaves out).

    An ``sso_faults`` entry is one answer of the token endpoint, used up in
    order (``count`` times, for ``grant_type`` requests only if given):

    - ``{"status": 403, "body": "<html>..", "content_type": "text/html",
      "headers": {..}}``, or ``"json": <any JSON>`` for the body; without a
      body, an OAuth ``server_error`` one. ``retry_after`` sets that header.
    - ``{"kind": k}`` with k in :data:`SSO_FAULT_KINDS` (``timeout`` waits
      ``seconds``; ``drop`` closes the connection without an answer).
    - ``{"access_token": c}`` with c in :data:`ACCESS_TOKEN_CRAFTS`
      (``character_id``, ``kid`` tune ``other_character``, ``unknown_kid``):
      the request is carried out, the answer's access token is crafted.
    - ``{"patch": {..}}``, ``{"drop": [field, ..]}``, ``{"truncate": n}``
      (the first n bytes; a negative n cuts that many from the end): the
      request is carried out, then the 200 body is changed.
    - ``"process": true`` with a ``status`` or ``kind``: the request is
      carried out (the refresh token rotates, the code is used up) and
      then the fault is answered instead, as when a gateway loses the
      SSO's answer.
    """

    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "esi-worker-emulator"
    client_secret: str = dataclasses.field(default="emulator-secret", repr=False)
    native_client_id: str = "esi-worker-emulator-native"
    rotation: str = "rotate"
    scp_form: str = "auto"
    issuer: str = "login.eveonline.com"
    expires_in: int = 1199
    sso_latency_s: float = 0.0
    esi_latency_s: float = 0.0
    sign_alg: str = "RS256"
    owner_changes: frozenset[int] = frozenset()
    sso_faults: tuple[Mapping[str, Any], ...] = ()
    sso_burst_limit: int | None = None
    legacy_invalid_token: bool = False
    cache_ttl_s: float | None = None
    compatibility_dates: tuple[str, ...] = ("2025-12-16", "2025-08-26", "2020-01-01")
    error_window_s: float = 60.0
    error_budget: int = 100
    bucket_overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    esi_faults: tuple[Mapping[str, Any], ...] = ()
    esi_mutations: tuple[Mapping[str, Any], ...] = ()
    legacy_swagger: bool = True
    cursor_records: int = 250
    # -- what ESI.md leaves unverified, one switch per plausible answer --
    # 4xx/5xx of bucket-limited routes count against the error budget.
    bucket_errors_count: bool = True
    # 429s count as errors. (Whether 420s do cannot show: a 420 is only
    # sent once a fixed window's budget is gone, and the window ends anyway.)
    errors_count_429: bool = True
    # X-Ratelimit-Remaining counted "after" or "before" the answer's cost.
    ratelimit_remaining: str = "after"
    # How X-ESI-Error-Limit-Reset and Retry-After round: "up" or "down".
    reset_rounding: str = "up"
    # Retry-After as "seconds" or as an "http-date".
    retry_after_format: str = "seconds"
    # Past the last page: "404" or an "empty" list.
    past_last_page: str = "404"
    # An unknown language: "400", or answered in English ("en").
    unknown_language: str = "400"
    # A future or too-old compatibility date: this status, or None to
    # clamp it to the nearest published date.
    bad_compatibility_date: int | None = 400
    # Warning headers on versioned paths: 199 on /vN/, 299 on /legacy/.
    warning_headers: bool = False
    # The revoke endpoint answers 200 to anything ("ignore", as documented),
    # or refuses unknown client credentials with 401 invalid_client
    # ("require", as RFC 7009 allows); the docs do not say which.
    revoke_client_auth: str = "ignore"
    character_roles: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict
    )
    rotation_grace_s: float = 0.0
    refresh_idle_expiry_s: float | None = None
    transfer_revokes: bool = False
    signing_kid: str | None = None
    jwks_withdrawn: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_choice("rotation", self.rotation, ROTATIONS)
        _check_choice("scp_form", self.scp_form, SCP_FORMS)
        _check_choice("sign_alg", self.sign_alg, SIGN_ALGS)
        for name, choices in _VARIANT_CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        status = self.bad_compatibility_date
        if status is not None and (
            isinstance(status, bool)
            or not isinstance(status, int)
            or not 400 <= status <= 499
        ):
            raise ConfigurationError(
                f"bad_compatibility_date must be a 4xx status or None, got {status!r}"
            )
        if not 1 <= self.expires_in <= 86400:
            raise ConfigurationError(
                f"expires_in must be 1..86400, got {self.expires_in!r}"
            )

        for name in ("sso_latency_s", "esi_latency_s", "error_window_s"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative")
        if self.cache_ttl_s is not None and self.cache_ttl_s <= 0:
            raise ConfigurationError("cache_ttl_s must be positive or None")
        if self.sso_burst_limit is not None and self.sso_burst_limit < 1:
            raise ConfigurationError("sso_burst_limit must be >= 1 or None")
        _check_key_switches(self)

        for fault in self.sso_faults:
            _check_sso_fault(fault)
        for fault in self.esi_faults:
            _check_esi_fault(fault)
        for mutation in self.esi_mutations:
            _check_esi_mutation(mutation)
        if not 0 <= self.cursor_records <= 100_000:
            raise ConfigurationError("cursor_records must be 0..100000")
        for group, limit in self.bucket_overrides.items():
            parse_limit(limit, what=f"bucket_overrides[{group!r}]")
        if not self.compatibility_dates:
            raise ConfigurationError("compatibility_dates must not be empty")
        # Normalised here, not in replace(): a config built directly must
        # match request paths too (ids as text, as JSON keys are).
        roles = _character_roles(self.character_roles)
        object.__setattr__(self, "character_roles", roles)
        _check_character_roles(roles)

    def replace(self, **switches: Any) -> EmulatorConfig:
        """A copy with ``switches`` changed; names and values are checked.

        ``latency_s`` is accepted as shorthand for both latency switches.

        :raises ConfigurationError: an unknown switch, a fixed field, a bad value.
        """
        if "latency_s" in switches:
            latency = switches.pop("latency_s")
            switches.setdefault("sso_latency_s", latency)
            switches.setdefault("esi_latency_s", latency)
        known = {f.name for f in dataclasses.fields(self)}
        for name in switches:
            if name not in known:
                raise ConfigurationError(f"unknown emulator switch {name!r}")
            if name in FIXED_FIELDS:
                raise ConfigurationError(f"{name!r} is fixed once the emulator runs")
        return dataclasses.replace(self, **_coerce(switches))

    def to_json(self) -> dict[str, Any]:
        """The switches as plain JSON values; the client secret is left out."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "client_secret":
                continue
            value = getattr(self, field.name)
            if isinstance(value, (frozenset, set)):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = [dict(v) if isinstance(v, Mapping) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[field.name] = value
        return out


def parse_limit(text: str, *, what: str = "limit") -> tuple[int, float]:
    """``"150/15m"`` -> (150 tokens, 900.0 s window).

    :raises ConfigurationError: the text is not ``<tokens>/<n><s|m|h>``.
    """
    match = _LIMIT_RE.match(str(text))
    if not match:
        raise ConfigurationError(f"{what} must look like '150/15m', got {text!r}")
    tokens, size, unit = match.groups()
    return int(tokens), float(int(size) * _WINDOW_UNITS[unit])


def _coerce(switches: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly values (lists, dicts) turned into the frozen field types."""
    out = dict(switches)
    if "owner_changes" in out:
        out["owner_changes"] = frozenset(int(c) for c in out["owner_changes"] or ())
    if "jwks_withdrawn" in out:
        out["jwks_withdrawn"] = frozenset(str(k) for k in out["jwks_withdrawn"] or ())
    for name in ("sso_faults", "esi_faults", "esi_mutations"):
        if name in out:
            out[name] = tuple(dict(f) for f in out[name] or ())
    if "compatibility_dates" in out:
        out["compatibility_dates"] = tuple(out["compatibility_dates"])
    if "bucket_overrides" in out:
        out["bucket_overrides"] = dict(out["bucket_overrides"] or {})
    return out


def _character_roles(value: Any) -> dict[str, tuple[str, ...]]:
    """``{character id: (role, ...)}`` with the ids as text."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"character_roles must map character ids to role lists, got {value!r}"
        )
    out = {}
    for character, roles in value.items():
        if isinstance(roles, str) or not isinstance(roles, (list, tuple, set)):
            raise ConfigurationError(
                f"character_roles[{character!r}] must be a list of roles"
            )
        out[str(character).strip()] = tuple(roles)
    return out


def _check_character_roles(value: Mapping[str, tuple[str, ...]]) -> None:
    if not value:
        return
    # The names come from the bundled spec; loaded only when roles are set.
    from .synthetic import corporation_roles

    known = corporation_roles()
    for character, roles in value.items():
        if not str(character).isdigit():
            raise ConfigurationError(
                f"character_roles keys must be character ids, got {character!r}"
            )
        unknown = sorted(str(r) for r in set(roles) - known)
        if unknown:
            raise ConfigurationError(
                f"character_roles[{character!r}]: unknown role(s) {unknown}"
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}")


def _check_key_switches(config: EmulatorConfig) -> None:
    if config.rotation_grace_s < 0:
        raise ConfigurationError("rotation_grace_s must not be negative")
    idle = config.refresh_idle_expiry_s
    if idle is not None and idle <= 0:
        raise ConfigurationError("refresh_idle_expiry_s must be positive or None")
    kid = config.signing_kid
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 100):
        raise ConfigurationError(f"signing_kid must be a short string: {kid!r}")


def _check_sso_fault(fault: Mapping[str, Any]) -> None:
    if not isinstance(fault, Mapping):
        raise ConfigurationError(f"an sso_faults entry must be a dict, got {fault!r}")
    unknown = sorted(set(fault) - SSO_FAULT_KEYS)
    if unknown:
        raise ConfigurationError(
            f"sso fault has unknown keys {unknown} (known: {sorted(SSO_FAULT_KEYS)})"
        )
    answers = [k for k in ("status", "kind", "access_token") if k in fault]
    changes = PROCESSING_KEYS & set(fault)
    if not answers and not changes:
        raise ConfigurationError(
            f"sso fault needs a 'status', a 'kind' of {SSO_FAULT_KINDS}, an "
            f"'access_token' of {ACCESS_TOKEN_CRAFTS} or a patch: {fault!r}"
        )
    if "status" in fault and "kind" in fault:
        raise ConfigurationError(f"sso fault has both 'status' and 'kind': {fault!r}")
    _check_fault_answer(fault)
    _check_fault_changes(fault)


def _check_fault_answer(fault: Mapping[str, Any]) -> None:
    status = fault.get("status")
    if "status" in fault and (
        not isinstance(status, int)
        or isinstance(status, bool)
        or not 100 <= status <= 599
    ):
        raise ConfigurationError(f"sso fault status must be an HTTP status: {fault!r}")
    if "kind" in fault and fault["kind"] not in SSO_FAULT_KINDS:
        raise ConfigurationError(
            f"sso fault kind must be one of {SSO_FAULT_KINDS}: {fault!r}"
        )
    if "body" in fault and "json" in fault:
        raise ConfigurationError(f"sso fault has both 'body' and 'json': {fault!r}")
    if "body" in fault and not isinstance(fault["body"], str):
        raise ConfigurationError(f"sso fault body must be a string: {fault!r}")
    for name in ("content_type", "grant_type", "kid"):
        if name in fault and not isinstance(fault[name], str):
            raise ConfigurationError(f"sso fault {name} must be a string: {fault!r}")
    if fault.get("grant_type", GRANT_TYPES[0]) not in GRANT_TYPES:
        raise ConfigurationError(f"sso fault grant_type must be one of {GRANT_TYPES}")
    headers = fault.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationError(f"sso fault headers must map text to text: {fault!r}")
    if float(fault.get("seconds", 0)) < 0 or int(fault.get("count", 1)) < 1:
        raise ConfigurationError(f"sso fault seconds/count out of range: {fault!r}")


def _check_fault_changes(fault: Mapping[str, Any]) -> None:
    craft = fault.get("access_token")
    if craft is not None and craft not in ACCESS_TOKEN_CRAFTS:
        raise ConfigurationError(
            f"sso fault access_token must be one of {ACCESS_TOKEN_CRAFTS}: {fault!r}"
        )
    if "patch" in fault and not isinstance(fault["patch"], Mapping):
        raise ConfigurationError(f"sso fault patch must be an object: {fault!r}")
    dropped = fault.get("drop", [])
    if not isinstance(dropped, (list, tuple)) or not all(
        isinstance(d, str) for d in dropped
    ):
        raise ConfigurationError(f"sso fault drop must list field names: {fault!r}")
    truncate = fault.get("truncate", 0)
    if not isinstance(truncate, int) or isinstance(truncate, bool):
        raise ConfigurationError(f"sso fault truncate must be an int: {fault!r}")
    character = fault.get("character_id", 1)
    if not isinstance(character, int) or character <= 0:
        raise ConfigurationError(f"sso fault character_id must be positive: {fault!r}")


def processes_request(fault: Mapping[str, Any]) -> bool:
    """Whether the SSO carries the request out before answering ``fault``."""
    return bool(fault.get("process")) or bool(PROCESSING_KEYS & set(fault))


def _check_esi_fault(fault: Mapping[str, Any]) -> None:
    if not isinstance(fault, Mapping) or "status" not in fault:
        raise ConfigurationError(f"an esi_faults entry needs a 'status': {fault!r}")
    if not isinstance(fault["status"], int) or not 100 <= fault["status"] <= 599:
        raise ConfigurationError(f"esi fault status must be an HTTP status: {fault!r}")
    if int(fault.get("count", 1)) < 1:
        raise ConfigurationError(f"esi fault count must be >= 1: {fault!r}")
    page = fault.get("page")
    if page is not None and (not isinstance(page, int) or page < 1):
        raise ConfigurationError(f"esi fault page must be a page number: {fault!r}")
    for flag in ("limit_headers", "cut_body", "garbled_gzip"):
        if not isinstance(fault.get(flag, False), bool):
            raise ConfigurationError(f"esi fault {flag} must be a bool: {fault!r}")


def _check_esi_mutation(mutation: Mapping[str, Any]) -> None:
    if not isinstance(mutation, Mapping) or "path_contains" not in mutation:
        raise ConfigurationError(
            f"an esi_mutations entry needs a 'path_contains': {mutation!r}"
        )
    bump_after = mutation.get("bump_after")
    if bump_after is not None and (not isinstance(bump_after, int) or bump_after < 1):
        raise ConfigurationError(f"esi mutation bump_after must be >= 1: {mutation!r}")
    stable = mutation.get("stable_pages", ())
    if not all(isinstance(p, int) and p >= 1 for p in stable):
        raise ConfigurationError(
            f"esi mutation stable_pages must be page numbers: {mutation!r}"
        )
    pages = mutation.get("pages", [])
    if not isinstance(pages, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pages
    ):
        raise ConfigurationError(
            f"esi mutation pages must list page counts >= 1: {mutation!r}"
        )
