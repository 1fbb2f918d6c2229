"""An image's readiness declaration: the agent waits for the guest's endpoint to answer 200 before a first
boot becomes the ready snapshot (here against an HTTP server on loopback standing in for the guest)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wrenn.agent._readiness import wait_ready
from wrenn.images import Image


def image(tmp_path: Path, ready: dict[str, object] | None) -> Image:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"template": "t", **({"ready": ready} if ready else {})})
    )
    files = {name: tmp_path / name for name in ("vmlinuz", "vmlinux", "initrd", "rootfs")}
    return Image(template="t", version="1", kernel_version="k", envd_version="e", directory=tmp_path, **files)


class Guest:
    """Answers 503 to the first `busy` requests, then 200; records the request lines."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.lines: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.lines.append(await reader.readline())
        status = b"503 Service Unavailable" if len(self.lines) <= self.busy else b"200 OK"
        writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Length: 2\r\n\r\nOK")
        await writer.drain()
        writer.close()


@pytest.fixture
async def guest() -> AsyncIterator[tuple[Guest, int]]:
    state = Guest(busy=3)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield state, port
    server.close()
    await server.wait_closed()


async def test_an_image_without_a_declaration_is_ready_at_once(tmp_path: Path) -> None:
    assert await wait_ready("127.0.0.1", image(tmp_path, None), alive=lambda: True)


async def test_it_waits_for_a_200(tmp_path: Path, guest: tuple[Guest, int]) -> None:
    state, port = guest
    assert await wait_ready(
        "127.0.0.1", image(tmp_path, {"port": port, "path": "/health"}), alive=lambda: True
    )
    assert state.lines == [b"GET /health HTTP/1.0\r\n"] * 4


async def test_it_gives_up_after_the_declared_time(tmp_path: Path, guest: tuple[Guest, int]) -> None:
    state, port = guest
    state.busy = 10**6
    started = time.monotonic()
    ready = {"port": port, "path": "/health", "timeout_s": 0.5}
    assert not await wait_ready("127.0.0.1", image(tmp_path, ready), alive=lambda: True)
    assert 0.5 <= time.monotonic() - started < 5


async def test_a_vm_that_exited_is_not_waited_for(tmp_path: Path, guest: tuple[Guest, int]) -> None:
    _, port = guest
    started = time.monotonic()
    assert not await wait_ready(
        "127.0.0.1", image(tmp_path, {"port": port, "timeout_s": 60}), alive=lambda: False
    )
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("ready", [{"port": 0}, {"port": 70000}, {"port": 1, "path": "health"},
                                   {"port": 1, "path": "/a b"}, {"port": 1, "path": "/x\r\nHost: evil"}])  # fmt: skip
async def test_an_invalid_declaration_is_never_ready(tmp_path: Path, ready: dict[str, object]) -> None:
    assert not await wait_ready("127.0.0.1", image(tmp_path, ready), alive=lambda: True)
