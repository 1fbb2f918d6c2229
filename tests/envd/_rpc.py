"""Connect clients for envd as E2B's SDK builds them: JSON codec, the access token, Basic-auth user."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError
from protobuf import Oneof

from tests.conftest import Envd
from wrenn.proto.envd.filesystem.filesystem_connect import FilesystemClient
from wrenn.proto.envd.process.process_connect import ProcessClient
from wrenn.proto.envd.process.process_pb import (
    ProcessConfig,
    ProcessSelector,
    StartRequest,
    StartResponse,
)


def headers(envd: Envd, user: str | None = None, **extra: str) -> dict[str, str]:
    h = dict(envd.headers)
    if user:
        h["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
    h.update(extra)
    return h


@asynccontextmanager
async def process_client(envd: Envd) -> AsyncIterator[ProcessClient]:
    async with ProcessClient(envd.url, codec=proto_json_codec()) as client:
        yield client


@asynccontextmanager
async def filesystem_client(envd: Envd) -> AsyncIterator[FilesystemClient]:
    async with FilesystemClient(envd.url, codec=proto_json_codec()) as client:
        yield client


def by_pid(pid: int) -> ProcessSelector:
    return ProcessSelector(selector=Oneof("pid", pid))


def by_tag(tag: str) -> ProcessSelector:
    return ProcessSelector(selector=Oneof("tag", tag))


def start_request(cmd: str, *args: str, **kwargs: object) -> StartRequest:
    envs = kwargs.pop("envs", None) or {}
    cwd = kwargs.pop("cwd", None)
    config = ProcessConfig(cmd=cmd, args=list(args), envs=envs)  # type: ignore[arg-type]
    if cwd is not None:
        config.cwd = cwd  # type: ignore[assignment]
    return StartRequest(process=config, **kwargs)  # type: ignore[arg-type]


@dataclass
class Outcome:
    pid: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    pty: bytes = b""
    exit_code: int | None = None
    exited: bool | None = None
    status: str = ""
    kinds: list[str] = field(default_factory=list)


async def collect(stream: AsyncIterator[StartResponse]) -> Outcome:
    out = Outcome()
    async for response in stream:
        event = response.event.event  # type: ignore[union-attr]
        assert event is not None
        out.kinds.append(event.field)
        if event.field == "start":
            out.pid = event.value.pid
        elif event.field == "data":
            which = event.value.output
            setattr(out, which.field, getattr(out, which.field) + which.value)
        elif event.field == "end":
            out.exit_code = event.value.exit_code
            out.exited = event.value.exited
            out.status = event.value.status
    return out


async def run(
    envd: Envd, cmd: str, *args: str, user: str | None = None, timeout_ms: int = 30_000, **kw: object
) -> Outcome:
    async with process_client(envd) as client:
        return await collect(
            client.start(start_request(cmd, *args, **kw), headers=headers(envd, user), timeout_ms=timeout_ms)
        )


async def sh(envd: Envd, script: str, **kw: object) -> Outcome:
    return await run(envd, "/bin/sh", "-c", script, **kw)


def code_of(exc: ConnectError) -> str:
    return exc.code.name.lower()


def eventually(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
