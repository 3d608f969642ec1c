"""The emulator's signing keys: generated at start, published as a JWKS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

RSA_KID = "JWT-Signature-Key"


class SigningKeys:
    """One RS256 and one ES256 key pair, as the real SSO publishes.

    The RSA key carries CCP's kid ``JWT-Signature-Key``; the EC key gets a
    fresh UUID kid like the real one does.
    """

    def __init__(self) -> None:
        self._rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._ec = ec.generate_private_key(ec.SECP256R1())
        self.ec_kid = str(uuid.uuid4())
        self._jwks = self._build_jwks()

    def kid_for(self, alg: str) -> str:
        """The kid that signs with ``alg``."""
        return RSA_KID if alg == "RS256" else self.ec_kid

    def sign(self, claims: dict[str, Any], alg: str) -> str:
        """A compact JWT over ``claims`` with the key for ``alg``."""
        key = self._rsa if alg == "RS256" else self._ec
        headers = {"kid": self.kid_for(alg), "typ": "JWT"}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this emulator signed; exp is checked.

        :raises jwt.PyJWTError: bad signature, unknown kid, expired, malformed.
        """
        header = jwt.get_unverified_header(token)
        key: Any
        if header.get("kid") == RSA_KID:
            key, alg = self._rsa.public_key(), "RS256"
        elif header.get("kid") == self.ec_kid:
            key, alg = self._ec.public_key(), "ES256"
        else:
            raise jwt.InvalidKeyError("unknown kid")
        return jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False})

    def jwks(self) -> dict[str, Any]:
        """The public keys in the real SSO's JWKS shape."""
        return self._jwks

    def _build_jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self._rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self._ec.public_key()))
        rsa_jwk.update(alg="RS256", kid=RSA_KID, use="sig")
        ec_jwk.update(alg="ES256", kid=self.ec_kid, use="sig")
        # The live JWKS carries this .NET leftover; clients must tolerate it.
        return {"keys": [rsa_jwk, ec_jwk], "SkipUnresolvedJsonWebKeys": True}
