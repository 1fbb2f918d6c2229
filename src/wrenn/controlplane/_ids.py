"""Public ids: a prefix and 25 base36 characters of a random UUID (`cl-...`, `usr-...`), as the seed."""

from __future__ import annotations

import secrets
import uuid

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    n = uuid.uuid4().int
    chars = []
    for _ in range(25):
        n, r = divmod(n, 36)
        chars.append(_ALPHABET[r])
    return f"{prefix}-{''.join(reversed(chars))}"


def new_token(nbytes: int = 32) -> str:
    return secrets.token_hex(nbytes)


def new_slug() -> str:
    """A team slug as the seed makes them: `xxxxxx-yyyyyy` (hex)."""
    return f"{new_token(3)}-{new_token(3)}"
