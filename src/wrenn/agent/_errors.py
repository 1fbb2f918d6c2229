"""The agent's one error type: a failure with the Connect code the API should answer with."""

from __future__ import annotations


class SandboxError(Exception):
    """A failure with the Connect code the API should answer with (`not_found`, `failed_precondition`...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
