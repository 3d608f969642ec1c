"""The SSO's memory: grants, refresh tokens, authorization codes, owner hashes."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import secrets
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from ..clock import Clock
from .config import EmulatorConfig
from .keys import SigningKeys

CODE_TTL_S = 300.0


class GrantRefused(Exception):
    """A code or refresh token the SSO will not honour; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a test gets back from ``Emulator.create_grant``."""

    refresh_token: str | None = dataclasses.field(repr=False)
    access_token: str = dataclasses.field(repr=False)
    character_id: int
    character_name: str
    owner_hash: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """The grant as JSON values (for the admin endpoint)."""
        out = dataclasses.asdict(self)
        out["scopes"] = list(self.scopes)
        out["expires_at"] = self.expires_at.isoformat()
        return out


@dataclasses.dataclass
class _Record:
    client_id: str
    character_id: int
    character_name: str
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclasses.dataclass(frozen=True)
class CodeGrant:
    """An authorization code's binding: who logged in, for whom, with what."""

    client_id: str
    redirect_uri: str
    challenge: str | None
    character_id: int
    character_name: str
    scopes: tuple[str, ...]
    issued_at: float


class GrantBook:
    """Thread-safe store of grants and the secrets that stand for them."""

    def __init__(self, keys: SigningKeys, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock
        self._lock = threading.Lock()
        self._by_refresh: dict[str, _Record] = {}
        # When each refresh token was last honoured (or issued), and when a
        # rotated-out one was retired (it lives on for the grace period).
        self._last_used: dict[str, float] = {}
        self._retired: dict[str, float] = {}
        self._codes: dict[str, CodeGrant] = {}
        self._owners: dict[int, str] = {}

    def clear(self) -> None:
        """Forget every grant, code and owner hash."""
        with self._lock:
            self._by_refresh.clear()
            self._last_used.clear()
            self._retired.clear()
            self._codes.clear()
            self._owners.clear()

    def owner_hash(self, character_id: int, preset: str | None = None) -> str:
        """The character's current owner hash; ``preset`` replaces it."""
        with self._lock:
            if preset is not None:
                self._owners[character_id] = preset
            return self._owners.setdefault(character_id, _new_owner_hash())

    def change_owner(self, character_id: int) -> str:
        """Give the character a new owner hash, as a transfer would."""
        with self._lock:
            self._owners[character_id] = _new_owner_hash()
            return self._owners[character_id]

    def create(
        self,
        client_id: str,
        character_id: int,
        character_name: str,
        scopes: tuple[str, ...],
        refresh_token: str | None = None,
    ) -> str | None:
        """A new grant; its refresh token, or None when no scope was granted.

        ``refresh_token`` adopts a token issued by an earlier emulator run.
        """
        if not scopes:
            return None
        token = refresh_token or _new_refresh_token()
        with self._lock:
            self._by_refresh[token] = _Record(
                client_id, character_id, character_name, scopes
            )
            self._last_used[token] = self._clock.time()
        return token

    def issue_code(self, binding: CodeGrant) -> str:
        """A single-use authorization code for ``binding``."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = binding
        return code

    def redeem_code(
        self, code: str, client_id: str, redirect_uri: str | None, verifier: str | None
    ) -> CodeGrant:
        """The binding of ``code``, which is used up by this call.

        :raises GrantRefused: unknown, used or expired code, or a mismatch.
        """
        with self._lock:
            binding = self._codes.pop(code, None)
        if binding is None:
            raise GrantRefused("Authorization code is invalid.")
        if self._clock.time() - binding.issued_at > CODE_TTL_S:
            raise GrantRefused("Authorization code has expired.")
        if binding.client_id != client_id:
            raise GrantRefused("Authorization code was issued to another client.")

        if redirect_uri is not None and redirect_uri != binding.redirect_uri:
            raise GrantRefused("redirect_uri does not match the authorization request.")
        if binding.challenge is not None and not _pkce_matches(
            binding.challenge, verifier
        ):
            raise GrantRefused("code_verifier does not match the code_challenge.")
        return binding

    def refresh(
        self,
        token: str,
        client_id: str,
        rotation: str,
        *,
        grace_s: float = 0.0,
        idle_s: float | None = None,
    ) -> tuple[_Record, str]:
        """The grant behind ``token`` and the refresh token to hand back.

        :param grace_s: under ``rotate_reject_old``, how long a rotated-out
            token is still honoured (each use hands out another new one).
        :param idle_s: a token unused for longer is refused, and forgotten.
        :raises GrantRefused: unknown, revoked, retired or idle token, or
            another client.
        """
        now = self._clock.time()
        with self._lock:
            record = self._by_refresh.get(token)
            if record is None or record.revoked:
                raise GrantRefused("Invalid refresh token.")
            if record.client_id != client_id:
                raise GrantRefused("Refresh token was issued to another client.")
            self._check_age(token, now, grace_s, idle_s)
            if rotation == "off":
                self._last_used[token] = now
                return record, token

            new_token = _new_refresh_token()
            self._by_refresh[new_token] = record
            self._last_used[new_token] = now
            if rotation == "rotate":
                self._last_used[token] = now
            elif grace_s > 0:
                self._retired.setdefault(token, now)
            else:
                self._forget(token)
            return record, new_token

    def peek(self, token: str) -> _Record | None:
        """The live grant behind ``token``, without using it."""
        with self._lock:
            record = self._by_refresh.get(token)
            return None if record is None or record.revoked else record

    def revoke_character(self, character_id: int) -> int:
        """Kill every grant of the character (a transfer that voids them)."""
        with self._lock:
            records = {
                id(r): r
                for r in self._by_refresh.values()
                if r.character_id == character_id and not r.revoked
            }
            for record in records.values():
                record.revoked = True
            return len(records)

    def revoke(self, token: str) -> bool:
        """Kill the grant behind ``token`` (every refresh token of it)."""
        with self._lock:
            record = self._by_refresh.get(token)
            if record is None:
                return False
            record.revoked = True
            return True

    def access_token(
        self,
        config: EmulatorConfig,
        client_id: str,
        character_id: int,
        character_name: str,
        scopes: tuple[str, ...],
        issued_at: float | None = None,
        craft: Mapping[str, Any] | None = None,
    ) -> tuple[str, int]:
        """A signed access JWT and its ``exp`` (Unix seconds).

        :param craft: an ``sso_faults`` entry naming an ``access_token``
            craft (see :data:`~worker.emulator.config.ACCESS_TOKEN_CRAFTS`).
        """
        kind = (craft or {}).get("access_token")
        if kind == "expired":
            issued_at = self._clock.time() - config.expires_in - 120
        iat = int(self._clock.time() if issued_at is None else issued_at)
        kid = self._keys.kid_for(config.sign_alg, config.signing_kid)
        claims: dict[str, Any] = {
            "scp": scopes,
            "jti": str(uuid.uuid4()),
            "kid": kid,
            "sub": f"CHARACTER:EVE:{character_id}",
            "azp": client_id,
            "tenant": "tranquility",
            "tier": "live",
            "region": "world",
            "aud": [client_id, "EVE Online"],
            "name": character_name,
            "owner": self.owner_hash(character_id),
            "exp": iat + config.expires_in,
            "iat": iat,
            "iss": config.issuer,
        }
        _shape_scp(claims, config.scp_form)
        if kind is None or kind == "expired":
            return self._keys.sign(claims, config.sign_alg, kid), claims["exp"]
        return self._crafted(claims, str(kind), craft or {}, config), claims["exp"]

    def _crafted(
        self,
        claims: dict[str, Any],
        kind: str,
        craft: Mapping[str, Any],
        config: EmulatorConfig,
    ) -> str:
        """An access token that must fail (or mislead) the client's checks."""
        if kind == "not_a_jwt":
            return "not-a-jwt-" + secrets.token_urlsafe(16)
        if kind == "other_character":
            character = int(
                craft.get("character_id") or int(claims["sub"].rsplit(":", 1)[1]) + 1
            )
            claims.update(
                sub=f"CHARACTER:EVE:{character}",
                name=f"Character {character}",
                owner=self.owner_hash(character),
            )
        elif kind == "other_owner":
            claims["owner"] = _new_owner_hash()
        elif kind == "wrong_issuer":
            claims["iss"] = "https://not-the-sso.example"
        elif kind == "wrong_audience":
            claims["aud"] = ["another-application", "EVE Online"]
        elif kind == "unsigned":
            headers = {"kid": claims["kid"]}
            return jwt.encode(claims, "", algorithm="none", headers=headers)
        elif kind == "unknown_kid":
            kid = str(craft.get("kid") or f"unpublished-{uuid.uuid4()}")
            claims["kid"] = kid
            return self._keys.sign_rogue(claims, kid)
        elif kind == "bad_signature":
            return self._keys.sign_rogue(claims, str(claims["kid"]))
        return self._keys.sign(claims, config.sign_alg, str(claims["kid"]))

    def _check_age(
        self, token: str, now: float, grace_s: float, idle_s: float | None
    ) -> None:
        """Refuse a rotated-out token past its grace, or an idle one (lock held)."""
        retired = self._retired.get(token)
        if retired is not None and now - retired > grace_s:
            self._forget(token)
            raise GrantRefused("Refresh token was rotated out.")
        if idle_s is not None and now - self._last_used.get(token, now) > idle_s:
            self._forget(token)
            raise GrantRefused("Refresh token expired: unused for too long.")

    def _forget(self, token: str) -> None:
        self._by_refresh.pop(token, None)
        self._last_used.pop(token, None)
        self._retired.pop(token, None)


def _shape_scp(claims: dict[str, Any], form: str) -> None:
    """Write ``scp`` in the form the switch asks for (ESI.md 2.2)."""
    scopes = list(claims.pop("scp"))
    if form == "list" or (form == "auto" and len(scopes) >= 2):
        claims["scp"] = scopes
    elif (form == "string" or (form == "auto" and len(scopes) == 1)) and scopes:
        claims["scp"] = " ".join(scopes)


def _pkce_matches(challenge: str, verifier: str | None) -> bool:
    # Hash the verifier exactly as sent: CCP's own snippet pads it with '='.
    if not verifier:
        return False
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return secrets.compare_digest(computed, challenge)


def _new_refresh_token() -> str:
    # v2 refresh tokens are 16 random bytes in padded base64 (24 chars).
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def _new_owner_hash() -> str:
    return base64.b64encode(secrets.token_bytes(20)).decode("ascii")
