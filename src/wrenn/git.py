"""Seed-compatible module name: `from wrenn.git import Git, GitError`."""

from wrenn.sdk._git import (
    AsyncGit,
    FileStatus,
    Git,
    GitAuthError,
    GitBranch,
    GitCommandError,
    GitError,
    GitStatus,
)

__all__ = [
    "AsyncGit",
    "FileStatus",
    "Git",
    "GitAuthError",
    "GitBranch",
    "GitCommandError",
    "GitError",
    "GitStatus",
]
