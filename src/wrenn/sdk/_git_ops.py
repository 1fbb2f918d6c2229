"""Git without I/O, for `capsule.git`: its errors and models, argument builders and output parsers (pure
functions), and each operation as an `_api` operation (a generator of exec calls). `Git` and `AsyncGit`
in `_git.py` only run these, so the sync and async faces share every line of logic.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from . import _api
from ._exceptions import WrennError
from ._models import CommandResult

T = TypeVar("T")


class GitError(WrennError):
    """A git operation failed. `stderr` and `exit_code` are git's."""

    def __init__(self, message: str, *, stderr: str = "", exit_code: int = -1) -> None:
        super().__init__("git_error", message, 0)
        self.stderr = stderr
        self.exit_code = exit_code


class GitCommandError(GitError):
    """git exited non-zero."""


class GitAuthError(GitError):
    """The remote refused the credentials (or asked for some)."""


@dataclass
class FileStatus:
    """One line of `git status --porcelain=v1`: `index_status`/`work_tree_status` are git's X and Y."""

    path: str
    index_status: str
    work_tree_status: str
    renamed_from: str | None = None

    @property
    def staged(self) -> bool:
        return self.index_status not in (" ", "?")

    @property
    def status(self) -> str:
        """`conflict`, `renamed`, `copied`, `deleted`, `added`, `modified`, `typechange`, `untracked`."""
        codes = {self.index_status, self.work_tree_status}
        for code, label in (
            ("U", "conflict"),
            ("R", "renamed"),
            ("C", "copied"),
            ("D", "deleted"),
            ("A", "added"),
            ("M", "modified"),
            ("T", "typechange"),
            ("?", "untracked"),
        ):
            if code in codes:
                return label
        return "unknown"


@dataclass
class GitStatus:
    branch: str | None = None
    upstream: str | None = None
    ahead: int = 0
    behind: int = 0
    detached: bool = False
    files: list[FileStatus] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        return not self.files

    @property
    def has_staged(self) -> bool:
        return any(f.staged for f in self.files)

    @property
    def has_untracked(self) -> bool:
        return any(f.status == "untracked" for f in self.files)


@dataclass
class GitBranch:
    name: str
    is_current: bool = False


# --- pure helpers ---------------------------------------------------------------------------------

_AUTH_SIGNS = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "invalid username or password",
    "permission denied (publickey",
    "http basic: access denied",
    "403 forbidden",
    "the requested url returned error: 401",
    "the requested url returned error: 403",
)


def is_auth_error(stderr: str) -> bool:
    low = stderr.lower()
    return any(sign in low for sign in _AUTH_SIGNS)


def embed_credentials(url: str, username: str, password: str) -> str:
    """`https://user:token@host/...`; only for http(s) URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("credentials can only be embedded in an http(s) URL")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc or parts.scheme not in ("http", "https"):
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


def repo_dir_of(url: str) -> str:
    """The directory `git clone url` creates."""
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def parse_status(stdout: str) -> GitStatus:
    """Parse `git status --porcelain=v1 --branch`."""
    status = GitStatus()
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if line.startswith("## "):
            _parse_branch_header(line[3:], status)
        elif line.startswith("?? "):
            status.files.append(FileStatus(line[3:], "?", "?"))
        elif len(line) >= 4:
            path, renamed_from = line[3:], None
            if " -> " in path:
                renamed_from, path = path.split(" -> ", 1)
            status.files.append(FileStatus(path, line[0], line[1], renamed_from))
    return status


def _parse_branch_header(info: str, status: GitStatus) -> None:
    head, _, counts = info.partition(" [")
    if head.startswith("HEAD (no branch)") or head.startswith("HEAD (detached"):
        status.detached = True
    elif head.startswith(("No commits yet on ", "Initial commit on ")):
        status.branch = head.split(" on ", 1)[1]
    elif "..." in head:
        local, upstream = head.split("...", 1)
        status.branch, status.upstream = local or None, upstream or None
    else:
        status.branch = head or None
    if counts:
        ahead = re.search(r"ahead (\d+)", counts)
        behind = re.search(r"behind (\d+)", counts)
        status.ahead = int(ahead.group(1)) if ahead else 0
        status.behind = int(behind.group(1)) if behind else 0


def parse_branches(stdout: str) -> list[GitBranch]:
    """Parse `git branch --format=%(HEAD)%09%(refname:short)`."""
    branches = []
    for line in stdout.splitlines():
        if "\t" not in line:
            continue
        head, name = line.split("\t", 1)
        branches.append(GitBranch(name=name.strip(), is_current=head.strip() == "*"))
    return branches


def _scope_flag(scope: str) -> str:
    if scope not in ("local", "global", "system"):
        raise ValueError("git config scope must be local, global or system")
    return f"--{scope}"


# --- operations -----------------------------------------------------------------------------------


class _Ops:
    """Git operations as `_api` operations, for one capsule."""

    def __init__(self, capsule_id: str) -> None:
        self.capsule_id = capsule_id

    def run(
        self,
        argv: list[str],
        *,
        op: str,
        cwd: str | None,
        envs: dict[str, str] | None,
        timeout: int | None,
        check: bool = True,
    ) -> _api.Op[CommandResult]:
        merged = {"GIT_TERMINAL_PROMPT": "0", **(envs or {})}
        result = yield from _api.run_command(
            self.capsule_id, shlex.join(argv), timeout=timeout, envs=merged, cwd=cwd
        )
        if check and result.exit_code != 0:
            message = (result.stderr.strip() or result.stdout.strip() or f"exit {result.exit_code}")[-2000:]
            error = GitAuthError if is_auth_error(result.stderr) else GitCommandError
            raise error(f"git {op}: {message}", stderr=result.stderr, exit_code=result.exit_code)
        return result

    def clone(
        self,
        url: str,
        dest: str | None,
        *,
        branch: str | None,
        depth: int | None,
        username: str | None,
        password: str | None,
        dangerously_store_credentials: bool,
        cwd: str | None,
        envs: dict[str, str] | None,
        timeout: int | None,
    ) -> _api.Op[CommandResult]:
        if password and not username:
            raise ValueError("a username is required with a password")
        remote = embed_credentials(url, username, password) if username and password else url
        argv = ["git", "clone"]
        if branch:
            argv += ["--branch", branch, "--single-branch"]
        if depth is not None:
            argv += ["--depth", str(depth)]
        argv += [remote] + ([dest] if dest else [])
        try:
            result = yield from self.run(argv, op="clone", cwd=cwd, envs=envs, timeout=timeout)
        except GitError as exc:  # never echo the token back in the message
            exc.message = exc.message.replace(remote, strip_credentials(remote))
            exc.args = (exc.message,)
            raise
        if remote != url and not dangerously_store_credentials:
            repo = dest or repo_dir_of(url)
            yield from self.run(
                ["git", "-C", repo, "remote", "set-url", "origin", strip_credentials(remote)],
                op="clone (strip credentials)",
                cwd=cwd,
                envs=envs,
                timeout=30,
            )
        return result

    def with_credentials(
        self,
        argv: list[str],
        *,
        op: str,
        remote: str,
        username: str | None,
        password: str | None,
        cwd: str | None,
        envs: dict[str, str] | None,
        timeout: int | None,
    ) -> _api.Op[CommandResult]:
        """Run `argv` with credentials embedded in `remote`'s URL for this call only."""
        if not (username and password):
            return (yield from self.run(argv, op=op, cwd=cwd, envs=envs, timeout=timeout))
        original = (yield from self.remote_get(remote, cwd=cwd, envs=envs, timeout=30)) or ""
        if not original:
            raise GitCommandError(f"git {op}: remote {remote!r} has no URL")
        yield from self.run(
            ["git", "remote", "set-url", remote, embed_credentials(original, username, password)],
            op=op,
            cwd=cwd,
            envs=envs,
            timeout=30,
        )
        try:
            return (yield from self.run(argv, op=op, cwd=cwd, envs=envs, timeout=timeout))
        finally:
            yield from self.run(
                ["git", "remote", "set-url", remote, original], op=op, cwd=cwd, envs=envs, timeout=30
            )

    def remote_get(
        self, name: str, *, cwd: str | None, envs: dict[str, str] | None, timeout: int | None
    ) -> _api.Op[str | None]:
        result = yield from self.run(
            ["git", "remote", "get-url", name],
            op="remote get-url",
            cwd=cwd,
            envs=envs,
            timeout=timeout,
            check=False,
        )
        return result.stdout.strip() or None if result.exit_code == 0 else None

    def status(
        self, *, cwd: str | None, envs: dict[str, str] | None, timeout: int | None
    ) -> _api.Op[GitStatus]:
        result = yield from self.run(
            ["git", "status", "--porcelain=v1", "--branch"], op="status", cwd=cwd, envs=envs, timeout=timeout
        )
        return parse_status(result.stdout)

    def branches(
        self, *, cwd: str | None, envs: dict[str, str] | None, timeout: int | None
    ) -> _api.Op[list[GitBranch]]:
        result = yield from self.run(
            ["git", "branch", "--format=%(HEAD)%09%(refname:short)"],
            op="branch",
            cwd=cwd,
            envs=envs,
            timeout=timeout,
        )
        return parse_branches(result.stdout)

    def get_config(
        self, key: str, *, scope: str, cwd: str | None, envs: dict[str, str] | None, timeout: int | None
    ) -> _api.Op[str | None]:
        result = yield from self.run(
            ["git", "config", _scope_flag(scope), "--get", key],
            op="config",
            cwd=cwd,
            envs=envs,
            timeout=timeout,
            check=False,
        )
        if result.exit_code == 1:  # not set
            return None
        if result.exit_code != 0:
            raise GitCommandError(
                f"git config: {result.stderr.strip()}", stderr=result.stderr, exit_code=result.exit_code
            )
        return result.stdout.rstrip("\n")


# --- the sync and async faces ---------------------------------------------------------------------


class _GitBase:
    """Argument handling shared by `Git` and `AsyncGit`: each public method builds an operation here
    and the subclass runs it."""

    def __init__(self, capsule_id: str) -> None:
        self._ops = _Ops(capsule_id)

    def _simple(
        self, argv: list[str], op: str, cwd: str | None, envs: dict[str, str] | None, timeout: int | None
    ) -> _api.Op[CommandResult]:
        return self._ops.run(argv, op=op, cwd=cwd, envs=envs, timeout=timeout)

    @staticmethod
    def _init_argv(path: str, bare: bool, initial_branch: str | None) -> list[str]:
        argv = ["git", "init"]
        if initial_branch:
            argv += ["--initial-branch", initial_branch]
        if bare:
            argv.append("--bare")
        return [*argv, path]

    @staticmethod
    def _add_argv(paths: list[str] | None, all: bool) -> list[str]:
        if paths:
            return ["git", "add", "--", *paths]
        return ["git", "add", "-A" if all else "."]

    @staticmethod
    def _commit_argv(
        message: str, allow_empty: bool, author_name: str | None, author_email: str | None
    ) -> list[str]:
        argv = ["git"]
        if author_name:
            argv += ["-c", f"user.name={author_name}"]
        if author_email:
            argv += ["-c", f"user.email={author_email}"]
        argv += ["commit", "-m", message]
        return [*argv, "--allow-empty"] if allow_empty else argv

    @staticmethod
    def _push_argv(remote: str, branch: str | None, force: bool, set_upstream: bool) -> list[str]:
        argv = ["git", "push"] + (["--force"] if force else []) + (["--set-upstream"] if set_upstream else [])
        return [*argv, remote] + ([branch] if branch else [])

    @staticmethod
    def _pull_argv(remote: str, branch: str | None, rebase: bool, ff_only: bool) -> list[str]:
        argv = ["git", "pull"] + (["--rebase"] if rebase else []) + (["--ff-only"] if ff_only else [])
        return [*argv, remote] + ([branch] if branch else [])

    @staticmethod
    def _reset_argv(mode: str | None, ref: str | None, paths: list[str] | None) -> list[str]:
        if mode and mode not in ("soft", "mixed", "hard", "merge", "keep"):
            raise ValueError("reset mode must be soft, mixed, hard, merge or keep")
        argv = ["git", "reset"] + ([f"--{mode}"] if mode else []) + ([ref] if ref else [])
        return [*argv, "--", *paths] if paths else argv

    @staticmethod
    def _create_branch_argv(name: str, start_point: str | None) -> list[str]:
        return ["git", "checkout", "-b", name] + ([start_point] if start_point else [])

    @staticmethod
    def _delete_branch_argv(name: str, force: bool) -> list[str]:
        return ["git", "branch", "-D" if force else "-d", name]

    @staticmethod
    def _remote_add_argv(name: str, url: str, fetch: bool) -> list[str]:
        return ["git", "remote", "add"] + (["-f"] if fetch else []) + [name, url]

    @staticmethod
    def _set_config_argv(key: str, value: str, scope: str) -> list[str]:
        return ["git", "config", _scope_flag(scope), key, value]

    @staticmethod
    def _restore_argv(paths: list[str], staged: bool, worktree: bool, source: str | None) -> list[str]:
        if not paths:
            raise ValueError("restore needs at least one path")
        argv = ["git", "restore"]
        if worktree or not staged:
            argv.append("--worktree")
        if staged:
            argv.append("--staged")
        if source:
            argv += ["--source", source]
        return [*argv, "--", *paths]
