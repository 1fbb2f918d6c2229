"""Seed-compatible module name (the seed SDK 0.3's `wrenn.code_runner`): `wrenn.code_interpreter`."""

from wrenn.code_interpreter import (
    DEFAULT_TEMPLATE,
    AsyncCapsule,
    Capsule,
    Context,
    Execution,
    ExecutionError,
    Logs,
    Result,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "AsyncCapsule",
    "Capsule",
    "Context",
    "Execution",
    "ExecutionError",
    "Logs",
    "Result",
]
