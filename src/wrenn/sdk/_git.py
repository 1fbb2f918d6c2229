"""`capsule.git`: the real `git` inside the capsule, driven through `commands.run`.

`Git` and `AsyncGit` are the sync and async faces of the same operations (`_git_ops`): each method
builds an operation there and runs it with its transport, so what they repeat is only their typed,
documented signatures. (Why over 500 lines: two faces of twenty public methods, each with its signature
and docstring, which IDEs and type checkers read; the logic itself is in `_git_ops`.)
"""

from __future__ import annotations

from typing import TypeVar

import httpx

from . import _api
from ._git_ops import (
    FileStatus,
    GitAuthError,
    GitBranch,
    GitCommandError,
    GitError,
    GitStatus,
    _GitBase,
)
from ._models import CommandResult
from ._transport import run_async, run_sync

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

T = TypeVar("T")


class Git(_GitBase):
    """Git in a capsule (`capsule.git`); needs `git` in the template. Every method takes `cwd`
    (the repository), `envs` and `timeout` (seconds), and raises `GitCommandError`/`GitAuthError`
    when git fails."""

    def __init__(self, capsule_id: str, http: httpx.Client) -> None:
        super().__init__(capsule_id)
        self._http = http

    def _go(self, op: _api.Op[T]) -> T:
        return run_sync(self._http, op)

    def clone(
        self,
        url: str,
        dest: str | None = None,
        *,
        branch: str | None = None,
        depth: int | None = None,
        username: str | None = None,
        password: str | None = None,
        dangerously_store_credentials: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 300,
    ) -> CommandResult:
        """Clone `url`. With `username`/`password` (a token), they are used for the clone and then
        removed from the `origin` URL, unless `dangerously_store_credentials`."""
        return self._go(
            self._ops.clone(
                url, dest, branch=branch, depth=depth, username=username, password=password,
                dangerously_store_credentials=dangerously_store_credentials,
                cwd=cwd, envs=envs, timeout=timeout,
            )
        )  # fmt: skip

    def init(
        self,
        path: str = ".",
        *,
        bare: bool = False,
        initial_branch: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(self._simple(self._init_argv(path, bare, initial_branch), "init", cwd, envs, timeout))

    def add(
        self,
        paths: list[str] | None = None,
        *,
        all: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        """Stage `paths`, or `.` (everything with `all=True`)."""
        return self._go(self._simple(self._add_argv(paths, all), "add", cwd, envs, timeout))

    def commit(
        self,
        message: str,
        *,
        allow_empty: bool = False,
        author_name: str | None = None,
        author_email: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        argv = self._commit_argv(message, allow_empty, author_name, author_email)
        return self._go(self._simple(argv, "commit", cwd, envs, timeout))

    def push(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        force: bool = False,
        set_upstream: bool = False,
        username: str | None = None,
        password: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 60,
    ) -> CommandResult:
        """Push; credentials, if given, are in the remote URL for this call only."""
        argv = self._push_argv(remote, branch, force, set_upstream)
        return self._go(
            self._ops.with_credentials(
                argv, op="push", remote=remote, username=username, password=password, cwd=cwd, envs=envs,
                timeout=timeout,
            )
        )  # fmt: skip

    def pull(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        rebase: bool = False,
        ff_only: bool = False,
        username: str | None = None,
        password: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 60,
    ) -> CommandResult:
        """Pull; credentials, if given, are in the remote URL for this call only."""
        argv = self._pull_argv(remote, branch, rebase, ff_only)
        return self._go(
            self._ops.with_credentials(
                argv, op="pull", remote=remote, username=username, password=password, cwd=cwd, envs=envs,
                timeout=timeout,
            )
        )  # fmt: skip

    def status(
        self, *, cwd: str | None = None, envs: dict[str, str] | None = None, timeout: int | None = 30
    ) -> GitStatus:
        return self._go(self._ops.status(cwd=cwd, envs=envs, timeout=timeout))

    def branches(
        self, *, cwd: str | None = None, envs: dict[str, str] | None = None, timeout: int | None = 30
    ) -> list[GitBranch]:
        return self._go(self._ops.branches(cwd=cwd, envs=envs, timeout=timeout))

    def create_branch(
        self,
        name: str,
        *,
        start_point: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        """Create `name` and check it out."""
        return self._go(
            self._simple(self._create_branch_argv(name, start_point), "checkout -b", cwd, envs, timeout)
        )

    def checkout_branch(
        self,
        name: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(self._simple(["git", "checkout", name], "checkout", cwd, envs, timeout))

    def delete_branch(
        self,
        name: str,
        *,
        force: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(self._simple(self._delete_branch_argv(name, force), "branch -d", cwd, envs, timeout))

    def remote_add(
        self,
        name: str,
        url: str,
        *,
        fetch: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(
            self._simple(self._remote_add_argv(name, url, fetch), "remote add", cwd, envs, timeout)
        )

    def remote_get(
        self,
        name: str = "origin",
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> str | None:
        """The URL of remote `name`, or None if there is no such remote."""
        return self._go(self._ops.remote_get(name, cwd=cwd, envs=envs, timeout=timeout))

    def reset(
        self,
        *,
        mode: str | None = None,
        ref: str | None = None,
        paths: list[str] | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(self._simple(self._reset_argv(mode, ref, paths), "reset", cwd, envs, timeout))

    def restore(
        self,
        paths: list[str],
        *,
        staged: bool = False,
        worktree: bool = False,
        source: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        argv = self._restore_argv(paths, staged, worktree, source)
        return self._go(self._simple(argv, "restore", cwd, envs, timeout))

    def set_config(
        self,
        key: str,
        value: str,
        *,
        scope: str = "local",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return self._go(self._simple(self._set_config_argv(key, value, scope), "config", cwd, envs, timeout))

    def get_config(
        self,
        key: str,
        *,
        scope: str = "local",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> str | None:
        """The value of `key`, or None if it is not set."""
        return self._go(self._ops.get_config(key, scope=scope, cwd=cwd, envs=envs, timeout=timeout))

    def configure_user(
        self,
        name: str,
        email: str,
        *,
        scope: str = "global",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> None:
        """Set `user.name` and `user.email`."""
        self.set_config("user.name", name, scope=scope, cwd=cwd, envs=envs, timeout=timeout)
        self.set_config("user.email", email, scope=scope, cwd=cwd, envs=envs, timeout=timeout)


class AsyncGit(_GitBase):
    """`Git` for `AsyncCapsule`: the same methods, awaited."""

    def __init__(self, capsule_id: str, http: httpx.AsyncClient) -> None:
        super().__init__(capsule_id)
        self._http = http

    async def _go(self, op: _api.Op[T]) -> T:
        return await run_async(self._http, op)

    async def clone(
        self,
        url: str,
        dest: str | None = None,
        *,
        branch: str | None = None,
        depth: int | None = None,
        username: str | None = None,
        password: str | None = None,
        dangerously_store_credentials: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 300,
    ) -> CommandResult:
        """Clone `url`. With `username`/`password` (a token), they are used for the clone and then
        removed from the `origin` URL, unless `dangerously_store_credentials`."""
        return await self._go(
            self._ops.clone(
                url, dest, branch=branch, depth=depth, username=username, password=password,
                dangerously_store_credentials=dangerously_store_credentials,
                cwd=cwd, envs=envs, timeout=timeout,
            )
        )  # fmt: skip

    async def init(
        self,
        path: str = ".",
        *,
        bare: bool = False,
        initial_branch: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(
            self._simple(self._init_argv(path, bare, initial_branch), "init", cwd, envs, timeout)
        )

    async def add(
        self,
        paths: list[str] | None = None,
        *,
        all: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        """Stage `paths`, or `.` (everything with `all=True`)."""
        return await self._go(self._simple(self._add_argv(paths, all), "add", cwd, envs, timeout))

    async def commit(
        self,
        message: str,
        *,
        allow_empty: bool = False,
        author_name: str | None = None,
        author_email: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        argv = self._commit_argv(message, allow_empty, author_name, author_email)
        return await self._go(self._simple(argv, "commit", cwd, envs, timeout))

    async def push(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        force: bool = False,
        set_upstream: bool = False,
        username: str | None = None,
        password: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 60,
    ) -> CommandResult:
        """Push; credentials, if given, are in the remote URL for this call only."""
        argv = self._push_argv(remote, branch, force, set_upstream)
        return await self._go(
            self._ops.with_credentials(
                argv, op="push", remote=remote, username=username, password=password, cwd=cwd, envs=envs,
                timeout=timeout,
            )
        )  # fmt: skip

    async def pull(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        rebase: bool = False,
        ff_only: bool = False,
        username: str | None = None,
        password: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 60,
    ) -> CommandResult:
        """Pull; credentials, if given, are in the remote URL for this call only."""
        argv = self._pull_argv(remote, branch, rebase, ff_only)
        return await self._go(
            self._ops.with_credentials(
                argv, op="pull", remote=remote, username=username, password=password, cwd=cwd, envs=envs,
                timeout=timeout,
            )
        )  # fmt: skip

    async def status(
        self, *, cwd: str | None = None, envs: dict[str, str] | None = None, timeout: int | None = 30
    ) -> GitStatus:
        return await self._go(self._ops.status(cwd=cwd, envs=envs, timeout=timeout))

    async def branches(
        self, *, cwd: str | None = None, envs: dict[str, str] | None = None, timeout: int | None = 30
    ) -> list[GitBranch]:
        return await self._go(self._ops.branches(cwd=cwd, envs=envs, timeout=timeout))

    async def create_branch(
        self,
        name: str,
        *,
        start_point: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        """Create `name` and check it out."""
        return await self._go(
            self._simple(self._create_branch_argv(name, start_point), "checkout -b", cwd, envs, timeout)
        )

    async def checkout_branch(
        self,
        name: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(self._simple(["git", "checkout", name], "checkout", cwd, envs, timeout))

    async def delete_branch(
        self,
        name: str,
        *,
        force: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(
            self._simple(self._delete_branch_argv(name, force), "branch -d", cwd, envs, timeout)
        )

    async def remote_add(
        self,
        name: str,
        url: str,
        *,
        fetch: bool = False,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(
            self._simple(self._remote_add_argv(name, url, fetch), "remote add", cwd, envs, timeout)
        )

    async def remote_get(
        self,
        name: str = "origin",
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> str | None:
        """The URL of remote `name`, or None if there is no such remote."""
        return await self._go(self._ops.remote_get(name, cwd=cwd, envs=envs, timeout=timeout))

    async def reset(
        self,
        *,
        mode: str | None = None,
        ref: str | None = None,
        paths: list[str] | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(self._simple(self._reset_argv(mode, ref, paths), "reset", cwd, envs, timeout))

    async def restore(
        self,
        paths: list[str],
        *,
        staged: bool = False,
        worktree: bool = False,
        source: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        argv = self._restore_argv(paths, staged, worktree, source)
        return await self._go(self._simple(argv, "restore", cwd, envs, timeout))

    async def set_config(
        self,
        key: str,
        value: str,
        *,
        scope: str = "local",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> CommandResult:
        return await self._go(
            self._simple(self._set_config_argv(key, value, scope), "config", cwd, envs, timeout)
        )

    async def get_config(
        self,
        key: str,
        *,
        scope: str = "local",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> str | None:
        """The value of `key`, or None if it is not set."""
        return await self._go(self._ops.get_config(key, scope=scope, cwd=cwd, envs=envs, timeout=timeout))

    async def configure_user(
        self,
        name: str,
        email: str,
        *,
        scope: str = "global",
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: int | None = 30,
    ) -> None:
        """Set `user.name` and `user.email`."""
        await self.set_config("user.name", name, scope=scope, cwd=cwd, envs=envs, timeout=timeout)
        await self.set_config("user.email", email, scope=scope, cwd=cwd, envs=envs, timeout=timeout)
