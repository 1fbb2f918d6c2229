"""The Python SDK (`from wrenn import Capsule`). Imports nothing of the server side: httpx and httpx-ws.

The code lives in the private modules beside this file; `wrenn.capsule`, `wrenn.commands`,
`wrenn.files`, `wrenn.models`, `wrenn.pty`, `wrenn.git` and `wrenn.exceptions` re-export it under the
seed SDK's module names.
"""

from ._capsule import AsyncCapsule, Capsule
from ._client import AsyncWrennClient, WrennClient
from ._commands import AsyncCommands, Commands
from ._config import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL
from ._exceptions import (
    WrennAgentError,
    WrennAuthenticationError,
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
from ._files import AsyncFiles, AsyncWatchHandle, Files, WatchHandle
from ._git import AsyncGit, FileStatus, Git, GitAuthError, GitBranch, GitCommandError, GitError, GitStatus
from ._models import (
    CapsuleInfo,
    CommandHandle,
    CommandResult,
    FileEntry,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    PtyEvent,
    PtyEventType,
    Status,
    StreamErrorEvent,
    StreamEvent,
    StreamExitEvent,
    StreamStartEvent,
    StreamStderrEvent,
    StreamStdoutEvent,
    Template,
)
from ._pty import AsyncPtySession, PtySession

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "AsyncCapsule",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncGit",
    "AsyncPtySession",
    "AsyncWatchHandle",
    "AsyncWrennClient",
    "Capsule",
    "CapsuleInfo",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "FileEntry",
    "FileStatus",
    "FileType",
    "Files",
    "FilesystemEvent",
    "FilesystemEventType",
    "Git",
    "GitAuthError",
    "GitBranch",
    "GitCommandError",
    "GitError",
    "GitStatus",
    "ProcessInfo",
    "PtyEvent",
    "PtyEventType",
    "PtySession",
    "Status",
    "StreamErrorEvent",
    "StreamEvent",
    "StreamExitEvent",
    "StreamStartEvent",
    "StreamStderrEvent",
    "StreamStdoutEvent",
    "Template",
    "WatchHandle",
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
]
