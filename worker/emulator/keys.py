"""The emulator's signing keys: generated at start, published as a JWKS.

Keys are named by their ``kid``. Switching ``signing_kid`` to a new name
generates a key under it, as the SSO rotating its keys would; the JWKS
publishes every key made so far except the ``jwks_withdrawn`` ones, so a
test can have the SSO sign with a kid it does not publish yet, or retire
an old one. A rogue key, never published, signs the crafted tokens of the
``unknown_kid`` and ``bad_signature`` faults.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Collection
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ..errors import ConfigurationError

RSA_KID = "JWT-Signature-Key"


class SigningKeys:
    """Key pairs by kid: CCP's RS256 ``JWT-Signature-Key``, an ES256 key, and
    any the tests add.

    The EC key gets a fresh UUID kid like the real one does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, Any]] = {}
        self._rogue: Any = None
        self.ec_kid = str(uuid.uuid4())
        self._keys[RSA_KID] = ("RS256", _generate("RS256"))
        self._keys[self.ec_kid] = ("ES256", _generate("ES256"))
        # The two keys made at start, under their earlier names.
        self._rsa = self._keys[RSA_KID][1]
        self._ec = self._keys[self.ec_kid][1]
        self._jwks: dict[frozenset[str], dict[str, Any]] = {}

    def kid_for(self, alg: str, signing_kid: str | None = None) -> str:
        """The kid that signs with ``alg``: ``signing_kid`` when one is set."""
        if signing_kid:
            return signing_kid
        return RSA_KID if alg == "RS256" else self.ec_kid

    def ensure(self, kid: str, alg: str) -> None:
        """Generate a key for ``kid`` unless it exists.

        :raises ConfigurationError: ``kid`` already names a key of another
            algorithm.
        """
        with self._lock:
            known = self._keys.get(kid)
            if known is None:
                self._keys[kid] = (alg, _generate(alg))
                self._jwks.clear()
            elif known[0] != alg:
                raise ConfigurationError(
                    f"signing_kid {kid!r} is a {known[0]} key, not {alg}"
                )

    def forget_added(self) -> None:
        """Drop every key but the two made at start (an emulator reset)."""
        with self._lock:
            for kid in list(self._keys):
                if kid not in (RSA_KID, self.ec_kid):
                    del self._keys[kid]
            self._jwks.clear()

    def sign(self, claims: dict[str, Any], alg: str, kid: str | None = None) -> str:
        """A compact JWT over ``claims`` with the key ``kid`` (default for ``alg``)."""
        kid = self.kid_for(alg, kid)
        self.ensure(kid, alg)
        key = self._keys[kid][1]
        headers = {"kid": kid, "typ": "JWT"}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    def sign_rogue(self, claims: dict[str, Any], kid: str) -> str:
        """A JWT signed by a key no JWKS ever publishes, naming ``kid``."""
        with self._lock:
            if self._rogue is None:
                self._rogue = _generate("RS256")
        headers = {"kid": kid, "typ": "JWT"}
        return jwt.encode(claims, self._rogue, algorithm="RS256", headers=headers)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this emulator signed; exp is checked.

        :raises jwt.PyJWTError: bad signature, unknown kid, expired, malformed.
        """
        header = jwt.get_unverified_header(token)
        known = self._keys.get(str(header.get("kid")))
        if known is None:
            raise jwt.InvalidKeyError("unknown kid")
        alg, private = known
        return jwt.decode(
            token, private.public_key(), algorithms=[alg], options={"verify_aud": False}
        )

    def jwks(self, withdrawn: Collection[str] = ()) -> dict[str, Any]:
        """The public keys in the real SSO's JWKS shape, minus ``withdrawn``."""
        hidden = frozenset(withdrawn)
        with self._lock:
            if hidden not in self._jwks:
                self._jwks[hidden] = self._build_jwks(hidden)
            return self._jwks[hidden]

    def _build_jwks(self, hidden: frozenset[str]) -> dict[str, Any]:
        entries = []
        for kid, (alg, private) in self._keys.items():
            if kid in hidden:
                continue
            encoder = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            entry = json.loads(encoder.to_jwk(private.public_key()))
            entry.update(alg=alg, kid=kid, use="sig")
            entries.append(entry)
        # The live JWKS carries this .NET leftover; clients must tolerate it.
        return {"keys": entries, "SkipUnresolvedJsonWebKeys": True}


def _generate(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())
