"""Seed-compatible module name: `from wrenn.commands import CommandResult, Commands, ...`."""

from wrenn.sdk._commands import AsyncCommands, Commands
from wrenn.sdk._models import (
    CommandHandle,
    CommandResult,
    ProcessInfo,
    StreamErrorEvent,
    StreamEvent,
    StreamExitEvent,
    StreamStartEvent,
    StreamStderrEvent,
    StreamStdoutEvent,
)

__all__ = [
    "AsyncCommands",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ProcessInfo",
    "StreamErrorEvent",
    "StreamEvent",
    "StreamExitEvent",
    "StreamStartEvent",
    "StreamStderrEvent",
    "StreamStdoutEvent",
]
