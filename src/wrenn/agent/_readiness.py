"""A template's readiness: an image may declare (in its manifest) an HTTP endpoint of the guest that must
answer 200 before the guest counts as ready, e.g. the code interpreter's execution server once its default
kernel runs. The agent waits for it after envd answers on a first boot, before the ready snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from wrenn import images

log = logging.getLogger("wrenn.agent")


async def wait_ready(host: str, image: images.Image, alive: Callable[[], bool]) -> bool:
    """True once the image's declared endpoint answers 200 (at once when it declares none); False when it
    did not within the declared time, or the VM exited: the guest must then not become a ready snapshot."""
    declared = image.readiness()
    if not declared:
        return True
    port, path = int(declared.get("port", 0)), str(declared.get("path", "/"))
    timeout_s = float(declared.get("timeout_s", 300))
    if not 0 < port < 65536 or not path.startswith("/") or not path.isprintable() or " " in path:
        log.warning("image declares an invalid readiness", extra={"image": image.template, "ready": declared})
        return False
    url = f"http://{host}:{port}{path}"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and alive():
        if await _answers_200(host, port, path):
            took = round(time.monotonic() - started, 2)
            log.info("guest ready", extra={"image": image.template, "url": url, "s": took})
            return True
        await asyncio.sleep(0.1)
    log.warning("guest not ready in time", extra={"image": image.template, "url": url, "s": timeout_s})
    return False


async def _answers_200(host: str, port: int, path: str) -> bool:
    """One `GET path` over a new connection: is its status 200? (A bare HTTP/1.0 request: the polls of a
    slow first boot would otherwise fill the agent's log with one httpx line each.)"""
    writer = None
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        return status.split(b" ", 2)[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
