"""Secrets the control plane must read back (a capsule's envd and traffic tokens, returned to its team),
encrypted at rest: AES-256-GCM with a key from `WRENN_ENCRYPTION_KEY` (64 hex characters), else one
generated on first start into `<data dir>/encryption-key` (mode 0600). Several control planes on one
database need the same key, like the JWT secret and the CA.

A sealed value is `enc1:` + base64url(nonce || ciphertext || tag); the associated data names what the
value is (`capsule.envd_token`, ...), so a ciphertext copied into another column does not open there.
Secrets that never need reading back (API keys, host tokens, passwords) are hashed instead, elsewhere.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wrenn._shared.private import create_private, private_dir

log = logging.getLogger("wrenn.controlplane")

PREFIX = "enc1:"
KEY_FILE = "encryption-key"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the encryption key must be 32 bytes (64 hex characters)")
        self._aead = AESGCM(key)

    @classmethod
    def from_hex(cls, key_hex: str) -> SecretBox:
        try:
            key = bytes.fromhex(key_hex.strip())
        except ValueError:
            raise ValueError("WRENN_ENCRYPTION_KEY must be 64 hex characters") from None
        return cls(key)

    @classmethod
    def load_or_create(cls, configured: str, data_dir: Path) -> SecretBox:
        """The configured key, else the one under data_dir, else a new one stored there (mode 0600)."""
        if configured:
            return cls.from_hex(configured)
        path = private_dir(data_dir) / KEY_FILE
        if create_private(path, os.urandom(32).hex()):
            log.info("generated an encryption key", extra={"path": str(path)})
        return cls.from_hex(path.read_text())

    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(PREFIX)

    def seal(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, purpose: str) -> str:
        """The plaintext of a sealed value; ValueError if it is not one, or not sealed with this key for
        this purpose."""
        if not self.is_sealed(stored):
            raise ValueError("the value is not sealed")
        raw = base64.urlsafe_b64decode(stored[len(PREFIX) :].encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], purpose.encode()).decode()
        except InvalidTag:
            raise ValueError("the value was sealed with another key, or for another purpose") from None
