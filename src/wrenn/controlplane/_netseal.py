"""Secrets of capsules' network policies (header values of egress rules, each capsule's egress CA key),
encrypted at rest: AES-256-GCM with a key from `WRENN_ENCRYPTION_KEY` (64 hex characters), else one
generated on first start into `<data dir>/encryption-key` (mode 0600). Several control planes on one
database need the same key.

A sealed value is `enc1:` + base64url(nonce || ciphertext || tag); the associated data names the column
(`capsule.network_secrets`, ...), so a ciphertext copied into another column does not open there.
`SealedText` is a column type that seals on write and opens on read, with the key its engine carries
(`attach(engine, box)`), never a process-wide one.

(A minimal sealing helper of the network policy's own; the format and key file are those of the
control plane's capsule-token sealing, so one key serves both.)
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

log = logging.getLogger("wrenn.controlplane")

PREFIX = "enc1:"
KEY_FILE = "encryption-key"
#: The attribute of an engine's dialect that holds its SecretBox.
BOX_ATTRIBUTE = "wrenn_secret_box"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the encryption key must be 32 bytes (64 hex characters)")
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, configured: str, data_dir: Path) -> SecretBox:
        """The configured key, else the one under data_dir, else a new one stored there (mode 0600)."""
        if configured:
            return cls(bytes.fromhex(configured.strip()))
        path = data_dir / KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex())
            log.info("generated an encryption key", extra={"path": str(path)})
        return cls(bytes.fromhex(path.read_text().strip()))

    def seal(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, purpose: str) -> str:
        """The plaintext of a sealed value; ValueError unless sealed with this key for this purpose."""
        if not stored.startswith(PREFIX):
            raise ValueError("the value is not sealed")
        raw = base64.urlsafe_b64decode(stored[len(PREFIX) :].encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], purpose.encode()).decode()
        except InvalidTag:
            raise ValueError("the value was sealed with another key, or for another purpose") from None


def attach(engine: AsyncEngine, box: SecretBox) -> None:
    """Give the engine its key: its `SealedText` columns seal and open with it."""
    setattr(engine.sync_engine.dialect, BOX_ATTRIBUTE, box)


def _box(dialect: Dialect) -> Any:
    box = getattr(dialect, BOX_ATTRIBUTE, None)
    if box is None:
        raise RuntimeError("this engine has no encryption key (netseal.attach)")
    return box


class SealedText(TypeDecorator[str]):
    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return str(_box(dialect).seal(value, self.purpose)) if value else value

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return str(_box(dialect).open(value, self.purpose)) if value else value
