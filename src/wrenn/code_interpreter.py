"""`from wrenn.code_interpreter import Capsule`: capsules of the code interpreter image with `run_code`
(Jupyter kernels, rich results and structured charts, as E2B's `e2b-code-interpreter`)."""

from wrenn.sdk._interpreter import (
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
