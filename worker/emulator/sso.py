"""EVE SSO v2 as the emulator serves it: discovery, authorize, token, revoke, JWKS."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlencode

from ..errors import ScopeError
from ..scopes import normalize_scopes
from .config import processes_request
from .grants import CodeGrant, GrantRefused
from .messages import DROP_CONNECTION, Request, Response, answer_after, json_response
from .state import EmulatorState

log = logging.getLogger(__name__)

DEFAULT_CHARACTER_ID = 2112000001
DEFAULT_CHARACTER_NAME = "Test Pilot One"
_NO_CACHE = [("Cache-Control", "no-cache"), ("Pragma", "no-cache")]


class SSOService:
    """Answers the SSO endpoints from the shared state."""

    def __init__(
        self, state: EmulatorState, known_scopes: Callable[[], Collection[str]]
    ) -> None:
        self._state = state
        self._known_scopes = known_scopes
        self._routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/.well-known/oauth-authorization-server"): self.discovery,
            ("GET", "/v2/oauth/authorize"): self.authorize,
            ("GET", "/v2/oauth/authorize/"): self.authorize,
            ("POST", "/v2/oauth/token"): self.token,
            ("POST", "/v2/oauth/revoke"): self.revoke,
            ("GET", "/oauth/jwks"): self.jwks,
        }

    def route(self, request: Request) -> Callable[[Request], Response] | None:
        """The handler for ``request``, or None when it is not an SSO path."""
        return self._routes.get((request.method, request.path))

    def discovery(self, request: Request) -> Response:
        """The RFC 8414 document, with the emulator's URL in every field."""
        base = self._state.base_url
        methods = ["client_secret_basic", "client_secret_post", "client_secret_jwt"]
        return json_response(
            200,
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/v2/oauth/authorize",
                "token_endpoint": f"{base}/v2/oauth/token",
                "response_types_supported": ["code", "token"],
                "jwks_uri": f"{base}/oauth/jwks",
                "revocation_endpoint": f"{base}/v2/oauth/revoke",
                "revocation_endpoint_auth_methods_supported": methods,
                "token_endpoint_auth_methods_supported": methods,
                "token_endpoint_auth_signing_alg_values_supported": ["HS256"],
                "code_challenge_methods_supported": ["S256"],
                "userinfo_endpoint": f"{base}/v2/oauth/verify",
            },
        )

    def jwks(self, request: Request) -> Response:
        """The public keys, minus the ones the switches withdraw."""
        headers = [("Cache-Control", "public, max-age=300")]
        withdrawn = self._state.switches.jwks_withdrawn
        return json_response(200, self._state.keys.jwks(withdrawn), headers)

    def authorize(self, request: Request) -> Response:
        """Auto-consent: redirect straight back with a fresh code."""
        query, config = request.query, self._state.switches
        client_id = query.get("client_id", "")
        if query.get("response_type") != "code":
            return _oauth_error(
                400, "unsupported_response_type", "response_type must be 'code'."
            )
        if client_id not in (config.client_id, config.native_client_id):
            return _oauth_error(400, "invalid_client", "Unknown client_id.")
        if not query.get("redirect_uri"):
            return _oauth_error(400, "invalid_request", "redirect_uri is required.")

        try:
            scopes = self._checked_scopes(query.get("scope", ""))
        except ScopeError as exc:
            return _oauth_error(400, "invalid_scope", str(exc))
        challenge = query.get("code_challenge")
        if challenge and query.get("code_challenge_method", "S256") != "S256":
            return _oauth_error(400, "invalid_request", "Only S256 is supported.")
        if client_id == config.native_client_id and not challenge:
            return _oauth_error(
                400, "invalid_request", "A native client must send a code_challenge."
            )

        try:
            character_id = int(query.get("character_id", DEFAULT_CHARACTER_ID))
        except ValueError:
            return _oauth_error(400, "invalid_request", "character_id must be an int.")
        name = query.get("character_name") or (
            DEFAULT_CHARACTER_NAME
            if character_id == DEFAULT_CHARACTER_ID
            else f"Character {character_id}"
        )
        code = self._state.grants.issue_code(
            CodeGrant(
                client_id,
                query["redirect_uri"],
                challenge or None,
                character_id,
                name,
                scopes,
                self._state.clock.time(),
            )
        )

        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        joiner = "&" if "?" in query["redirect_uri"] else "?"
        location = query["redirect_uri"] + joiner + urlencode(params)
        return Response(302, [("Location", location)], b"")

    def token(self, request: Request) -> Response:
        """Code exchange and refresh, with faults, latency and a burst limit.

        A fault that changes a real answer (or has ``process``) lets the
        request be carried out first; any other is answered instead of it.
        """
        started, config = time.monotonic(), self._state.switches
        with self._state.stats.sso_token_request() as in_flight:
            if (
                config.sso_burst_limit is not None
                and in_flight > config.sso_burst_limit
            ):
                return _oauth_error(503, "temporarily_unavailable", "Too busy.")
            answer = self._answer_token(request)
            answer_after(started, config.sso_latency_s)
            return answer

    def _answer_token(self, request: Request) -> Response:
        grant_type = (request.form() or {}).get("grant_type")
        fault = self._state.next_sso_fault(grant_type)
        if fault is None:
            return self._token(request)
        if not processes_request(fault):
            return _fault_response(fault)
        return _changed_answer(fault, self._token(request, craft=fault))

    def revoke(self, request: Request) -> Response:
        """Revoke the grant behind a refresh token; 200 whatever token was
        sent. Unknown client credentials get 401 only under the
        ``revoke_client_auth="require"`` switch."""
        form = request.form() or {}
        if (
            self._state.switches.revoke_client_auth == "require"
            and self._client_id(request, form) is None
        ):
            return _oauth_error(
                401,
                "invalid_client",
                "Missing or invalid client credentials.",
                [("WWW-Authenticate", 'Basic realm="login.eveonline.com"')],
            )
        if form.get("token") and self._state.grants.revoke(form["token"]):
            log.debug("revoked a grant")
        return Response(200, list(_NO_CACHE), b"")

    def _token(
        self, request: Request, craft: Mapping[str, Any] | None = None
    ) -> Response:
        form = request.form()
        if form is None:
            return _oauth_error(
                400,
                "invalid_request",
                "The body must be application/x-www-form-urlencoded.",
            )
        client_id = self._client_id(request, form)
        if client_id is None:
            return _oauth_error(
                401,
                "invalid_client",
                "Missing or invalid client credentials.",
                [("WWW-Authenticate", 'Basic realm="login.eveonline.com"')],
            )

        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            return self._exchange_code(form, client_id, craft)
        if grant_type == "refresh_token":
            return self._refresh(form, client_id, craft)
        return _oauth_error(
            400, "unsupported_grant_type", f"Grant type {grant_type} is not supported."
        )

    def _exchange_code(
        self,
        form: Mapping[str, str],
        client_id: str,
        craft: Mapping[str, Any] | None = None,
    ) -> Response:
        try:
            binding = self._state.grants.redeem_code(
                form.get("code", ""),
                client_id,
                form.get("redirect_uri"),
                form.get("code_verifier"),
            )
        except GrantRefused as exc:
            return _oauth_error(400, "invalid_grant", exc.reason)
        refresh_token = self._state.grants.create(
            client_id, binding.character_id, binding.character_name, binding.scopes
        )
        return self._token_answer(
            client_id,
            binding.character_id,
            binding.character_name,
            binding.scopes,
            refresh_token,
            craft,
        )

    def _refresh(
        self,
        form: Mapping[str, str],
        client_id: str,
        craft: Mapping[str, Any] | None = None,
    ) -> Response:
        config, grants = self._state.switches, self._state.grants
        code = "invalid_token" if config.legacy_invalid_token else "invalid_grant"
        sent = form.get("refresh_token", "")
        if self._transfer_voids(sent):
            return _oauth_error(400, code, "The character was transferred.")
        try:
            record, refresh_token = grants.refresh(
                sent,
                client_id,
                config.rotation,
                grace_s=config.rotation_grace_s,
                idle_s=config.refresh_idle_expiry_s,
            )
        except GrantRefused as exc:
            return _oauth_error(400, code, exc.reason)

        scopes = record.scopes
        if form.get("scope"):
            asked = set(form["scope"].split())
            if not asked <= set(record.scopes):
                return _oauth_error(
                    400,
                    "invalid_scope",
                    "Scopes beyond the original grant were asked for.",
                )
            scopes = tuple(sorted(asked))
        if self._state.take_owner_change(record.character_id):
            self._state.grants.change_owner(record.character_id)

        self._state.stats.sso_refresh(record.character_id)
        return self._token_answer(
            client_id,
            record.character_id,
            record.character_name,
            scopes,
            refresh_token,
            craft,
        )

    def _transfer_voids(self, refresh_token: str) -> bool:
        """Whether a pending transfer of this token's character kills its grants.

        Without ``transfer_revokes``, a transfer only changes the owner hash
        (see ``_refresh``); with it, every grant of the character dies.
        """
        if not self._state.switches.transfer_revokes:
            return False
        record = self._state.grants.peek(refresh_token)
        if record is None or not self._state.take_owner_change(record.character_id):
            return False
        self._state.grants.change_owner(record.character_id)
        self._state.grants.revoke_character(record.character_id)
        log.debug("character transfer voided the grants of %r", record.character_id)
        return True

    def _token_answer(
        self,
        client_id: str,
        character_id: int,
        name: str,
        scopes: tuple[str, ...],
        refresh_token: str | None,
        craft: Mapping[str, Any] | None = None,
    ) -> Response:
        config = self._state.switches
        access_token, _ = self._state.grants.access_token(
            config, client_id, character_id, name, scopes, craft=craft
        )
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": config.expires_in,
            "token_type": "Bearer",
            "refresh_token": refresh_token,
        }
        return json_response(200, body, list(_NO_CACHE))

    def _client_id(self, request: Request, form: Mapping[str, str]) -> str | None:
        """The authenticated client, or None; Basic, form secret, or native."""
        config = self._state.switches
        basic = _basic_credentials(request.header("Authorization"))
        secret: str | None
        if basic is not None:
            client_id, secret = basic
        else:
            client_id = form.get("client_id", "")
            secret = form.get("client_secret")

        if (
            client_id == config.client_id
            and secret is not None
            and secrets.compare_digest(secret, config.client_secret)
        ):
            return client_id
        if client_id == config.native_client_id and not secret:
            return client_id
        return None

    def _checked_scopes(self, text: str) -> tuple[str, ...]:
        scopes = normalize_scopes(text)
        known = self._known_scopes()
        unknown = [s for s in scopes if s not in known]
        if unknown:
            raise ScopeError(f"The requested '{unknown[0]}' scope is not valid.")
        return scopes


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _oauth_error(
    status: int,
    error: str,
    description: str,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    body = {"error": error, "error_description": description}
    return json_response(status, body, list(_NO_CACHE) + list(headers or ()))


def _fault_response(fault: Mapping[str, Any]) -> Response:
    """The injected answer ``fault`` stands for (validated by the config)."""
    if "status" in fault:
        return _status_fault(fault)

    kind = fault.get("kind")
    if kind == "non_json":
        body = b"<html><body>502 Bad Gateway</body></html>"
        return Response(200, [("Content-Type", "text/html")], body)
    if kind == "no_access_token":
        return json_response(200, {"token_type": "Bearer", "expires_in": 1199})
    if kind == "timeout":
        time.sleep(float(fault.get("seconds", 5)))
        return _oauth_error(504, "server_error", "Gateway timeout.")
    if kind == "drop":
        return DROP_CONNECTION
    if kind == "invalid_client":
        return _oauth_error(
            401,
            "invalid_client",
            "Missing or invalid client credentials.",
            [("WWW-Authenticate", 'Basic realm="login.eveonline.com"')],
        )
    return _oauth_error(400, "invalid_grant", "Invalid refresh token.")


def _status_fault(fault: Mapping[str, Any]) -> Response:
    """Any status with any body: the fault's text, JSON, or an OAuth error."""
    extra = [(k, v) for k, v in dict(fault.get("headers") or {}).items()]
    if fault.get("retry_after") is not None:
        extra.append(("Retry-After", str(fault["retry_after"])))
    status = int(fault["status"])
    if "body" in fault:
        body = str(fault["body"]).encode("utf-8")
        default_type = "text/plain; charset=utf-8"
    elif "json" in fault:
        body = json.dumps(fault["json"]).encode("utf-8")
        default_type = "application/json; charset=UTF-8"
    else:
        return _oauth_error(status, "server_error", "Injected fault.", extra)
    content_type = ("Content-Type", str(fault.get("content_type", default_type)))
    return Response(status, [*_NO_CACHE, content_type, *extra], body)


def _changed_answer(fault: Mapping[str, Any], answer: Response) -> Response:
    """The real ``answer``, changed by ``fault`` or replaced by its answer."""
    if "status" in fault or "kind" in fault:
        return _fault_response(fault)
    if answer.status != 200 or not any(
        k in fault for k in ("patch", "drop", "truncate")
    ):
        return answer
    body = json.loads(answer.body)
    body.update(dict(fault.get("patch") or {}))
    for name in fault.get("drop") or ():
        body.pop(name, None)
    raw = json.dumps(body).encode("utf-8")
    if "truncate" in fault:
        raw = raw[: int(fault["truncate"])]
    return Response(200, answer.headers, raw)
