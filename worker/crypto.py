"""Encryption at rest of token secrets: Fernet keys, rotation, plaintext rows.

A stored secret is ``fernet:<token>``; anything without that prefix is a
plaintext value from before encryption (or from an import) and is read as
is, then encrypted on its next write or by ``esi-worker tokens
reencrypt``. With no key configured, a key is generated once into
``<data_dir>/token.key`` (mode 0600) and a warning says so: a newcomer's
machine works, and an operator is told to set ``ESI_WORKER_TOKEN_KEYS``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

PREFIX = "fernet:"
KEY_FILE = "token.key"


class TokenCipher:
    """Encrypts with the first key; decrypts with any of them.

    :raises ConfigurationError: a key is not a valid Fernet key.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError("TokenCipher needs at least one key")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise ConfigurationError(
                    f"ESI_WORKER_TOKEN_KEYS entry {index + 1} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes); make one with "
                    "'esi-worker tokens new-key'"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "<TokenCipher>"

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCipher:
        """The configured keys, or the key kept in the data directory."""
        keys = [k.get_secret_value() for k in settings.token_keys]
        if keys:
            return cls(keys)
        return cls([_data_dir_key(Path(settings.data_dir))])

    @staticmethod
    def new_key() -> str:
        """A fresh random key, for ``ESI_WORKER_TOKEN_KEYS``."""
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, value: str | None) -> str | None:
        """``value`` encrypted with the first key; ``None`` stays ``None``."""
        if value is None:
            return None
        token = self._primary.encrypt(value.encode("utf-8"))
        return PREFIX + token.decode("ascii")

    def decrypt(self, stored: str | None) -> str | None:
        """The secret behind a stored value; plaintext values pass through.

        :raises ConfigurationError: no configured key opens it (a key that
            encrypted it was removed from ``ESI_WORKER_TOKEN_KEYS``).
        """
        if stored is None or not stored.startswith(PREFIX):
            return stored
        try:
            plain = self._all.decrypt(stored[len(PREFIX) :].encode("ascii"))
        except InvalidToken:
            raise ConfigurationError(
                "a stored token secret cannot be decrypted with any configured "
                "key: every process must share the keys, so set the same "
                "ESI_WORKER_TOKEN_KEYS everywhere (or the ESI_WORKER_DATA_DIR "
                "holding token.key), and put back any key that was removed"
            ) from None
        return plain.decode("utf-8")

    def is_current(self, stored: str | None) -> bool:
        """Whether ``stored`` is encrypted with the first key (or is empty)."""
        if stored is None:
            return True
        if not stored.startswith(PREFIX):
            return False
        try:
            self._primary.decrypt(stored[len(PREFIX) :].encode("ascii"))
        except InvalidToken:
            return False
        return True


def _data_dir_key(data_dir: Path) -> str:
    """The key in ``data_dir``, generated (mode 0600) on first use."""
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()

    data_dir.mkdir(parents=True, exist_ok=True)
    key = TokenCipher.new_key()
    # O_EXCL: two processes starting at once must not write two keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    log.warning(
        "no ESI_WORKER_TOKEN_KEYS configured: generated a token encryption key "
        "in %s; back it up, or set ESI_WORKER_TOKEN_KEYS in production",
        path,
    )
    return key
