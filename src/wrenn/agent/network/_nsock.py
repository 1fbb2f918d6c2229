"""Sockets that live in a sandbox's network namespace, made from the agent's own process.

A socket belongs to the namespace its creating thread was in. `NetnsSockets` keeps one worker thread
that enters the namespace (`setns`), creates the socket, and goes back to the agent's namespace before it
does anything else, so the event loop's thread never changes namespace. The egress proxy listens in
each sandbox's netns this way and dials out from it, so that its upstream connections leave through the
sandbox's own firewall, NAT and bandwidth limit, like the guest's.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._netns import NETNS_DIR

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetnsSockets:
    """Creates sockets inside named network namespaces (one worker thread for all of them)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wrenn-netns")

    def _make(self, netns: str, family: int, kind: int, bind: tuple[str, int] | None) -> socket.socket:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(Path(NETNS_DIR) / netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                sock = socket.socket(family, kind)
                try:
                    sock.setblocking(False)
                    if bind is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind(bind)
                        sock.listen(512)
                except BaseException:
                    sock.close()
                    raise
            finally:
                _setns(home)  # if this failed the thread would be left in the sandbox: it cannot
        finally:
            os.close(target)
            os.close(home)
        return sock

    async def listener(self, netns: str, address: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._make, netns, socket.AF_INET, socket.SOCK_STREAM, (address, port)
        )

    async def connect(
        self, netns: str, address: str, port: int, timeout_s: float, mark: int = 0
    ) -> socket.socket:
        """A TCP connection from inside `netns` to `address:port` (its packets marked `mark`)."""
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(
            self._pool, self._make, netns, socket.AF_INET, socket.SOCK_STREAM, None
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout_s)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
