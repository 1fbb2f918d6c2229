"""Wrenn: self-hostable microVM sandboxes for AI agents.

    from wrenn import Capsule

    with Capsule() as capsule:
        print(capsule.commands.run("echo hello").stdout)

The processes live in sub-packages and meet only in `wrenn.proto`:

- `wrenn.envd`: the agent inside every sandbox VM (E2B-compatible wire protocol).
- `wrenn.agent`: the host agent that boots and owns the VMs of one server.
- `wrenn.controlplane`: the REST API, scheduler and database.
- `wrenn.sdk`, `wrenn.cli`: the Python SDK and the `wrenn` command.

The SDK names below are imported on first use, not here: this file also ships inside guest images,
next to envd and without the SDK or its dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wrenn.sdk import (
        AsyncCapsule,
        AsyncPtySession,
        AsyncWrennClient,
        Capsule,
        CommandHandle,
        CommandResult,
        FileEntry,
        FilesystemEvent,
        ProcessInfo,
        PtyEvent,
        PtyEventType,
        PtySession,
        StreamErrorEvent,
        StreamEvent,
        StreamExitEvent,
        StreamStartEvent,
        StreamStderrEvent,
        StreamStdoutEvent,
        WrennAgentError,
        WrennAuthenticationError,
        WrennClient,
        WrennConflictError,
        WrennError,
        WrennForbiddenError,
        WrennHostHasCapsulesError,
        WrennHostUnavailableError,
        WrennInternalError,
        WrennNotFoundError,
        WrennRateLimitError,
        WrennTooLargeError,
        WrennValidationError,
    )

__all__ = [
    "AsyncCapsule",
    "AsyncPtySession",
    "AsyncWrennClient",
    "Capsule",
    "CommandHandle",
    "CommandResult",
    "FileEntry",
    "FilesystemEvent",
    "ProcessInfo",
    "PtyEvent",
    "PtyEventType",
    "PtySession",
    "StreamErrorEvent",
    "StreamEvent",
    "StreamExitEvent",
    "StreamStartEvent",
    "StreamStderrEvent",
    "StreamStdoutEvent",
    "WrennAgentError",
    "WrennAuthenticationError",
    "WrennClient",
    "WrennConflictError",
    "WrennError",
    "WrennForbiddenError",
    "WrennHostHasCapsulesError",
    "WrennHostUnavailableError",
    "WrennInternalError",
    "WrennNotFoundError",
    "WrennRateLimitError",
    "WrennTooLargeError",
    "WrennValidationError",
    "__version__",
]

#: Deprecated names: (replacement, message).
_DEPRECATED = {
    "Sandbox": ("Capsule", "'Sandbox' is deprecated, use 'Capsule' instead"),
    "WrennHostHasSandboxesError": (
        "WrennHostHasCapsulesError",
        "'WrennHostHasSandboxesError' is deprecated, use 'WrennHostHasCapsulesError' instead",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        import warnings

        replacement, message = _DEPRECATED[name]
        warnings.warn(message, FutureWarning, stacklevel=2)
        return getattr(importlib.import_module("wrenn.sdk"), replacement)
    if name in __all__:
        value = getattr(importlib.import_module("wrenn.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
