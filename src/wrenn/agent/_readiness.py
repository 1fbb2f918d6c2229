"""A template's readiness: an image may declare (in its manifest) an HTTP endpoint of the guest that must
answer 200 before the guest counts as ready, e.g. the code interpreter's execution server once its default
kernel runs. The agent waits for it after envd answers on a first boot, before the ready snapshot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

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
    if not 0 < port < 65536 or not path.startswith("/"):
        log.warning("image declares an invalid readiness", extra={"image": image.template, "ready": declared})
        return False
    url = f"http://{host}:{port}{path}"
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0) as probe:
        while time.monotonic() - started < timeout_s and alive():
            try:
                if (await probe.get(url)).status_code == 200:
                    took = time.monotonic() - started
                    log.info("guest ready", extra={"image": image.template, "url": url, "s": round(took, 2)})
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    log.warning("guest not ready in time", extra={"image": image.template, "url": url, "s": timeout_s})
    return False
