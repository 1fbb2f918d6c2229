"""A string column stored encrypted (`_secretbox.SecretBox`): rows carry `enc1:...`, the code sees the
plaintext. The key belongs to the engine (`make_engine(url, box)`), not to the process, so two apps in one
process with different keys do not mix. An empty string stays empty (no secret to hide)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: The attribute of an engine's dialect that holds its SecretBox.
BOX_ATTRIBUTE = "wrenn_secret_box"


def box_of(dialect: Dialect) -> Any:
    box = getattr(dialect, BOX_ATTRIBUTE, None)
    if box is None:
        raise RuntimeError("this engine has no encryption key: make it with make_engine(url, box)")
    return box


class Sealed(TypeDecorator[str]):
    impl = String
    cache_ok = True

    def __init__(self, purpose: str, length: int = 255) -> None:
        super().__init__(length)
        self.purpose = purpose

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if not value:
            return value
        return str(box_of(dialect).seal(value, self.purpose))

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if not value:
            return value
        return str(box_of(dialect).open(value, self.purpose))


class SealedText(Sealed):
    """`Sealed`, unbounded (a policy's headers, a private key)."""

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        TypeDecorator.__init__(self)
        self.purpose = purpose
