"""The agent's client for one sandbox's envd: health, /init, Connect RPCs and /files over the TAP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
import pyqwest
from connectrpc.codec import proto_json_codec

from wrenn.proto.envd.filesystem.filesystem_connect import FilesystemClient
from wrenn.proto.envd.process.process_connect import ProcessClient

ENVD_PORT = 49983


class EnvdUnavailable(RuntimeError):
    pass


class EnvdClient:
    def __init__(self, host: str, access_token: str | None, port: int = ENVD_PORT) -> None:
        self.url = f"http://{host}:{port}"
        self.access_token = access_token
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers(), timeout=httpx.Timeout(30, read=None)
        )
        # A pool of its own: connectrpc's default transport is shared process-wide, and a later sandbox
        # that gets this one's address would be handed its dead keep-alive connections.
        self._transport = pyqwest.HTTPTransport()
        rpc_http = pyqwest.Client(self._transport)
        self.process = ProcessClient(self.url, codec=proto_json_codec(), http_client=rpc_http)
        self.filesystem = FilesystemClient(self.url, codec=proto_json_codec(), http_client=rpc_http)

    def headers(self, user: str | None = None) -> dict[str, str]:
        headers = {"X-Access-Token": self.access_token} if self.access_token else {}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        return headers

    async def wait_healthy(self, deadline_s: float, alive: Callable[[], bool]) -> float:
        """Poll GET /health until it answers 204; the seconds it took. `alive()` false aborts early."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as probe:
            while time.monotonic() - started < deadline_s:
                if not alive():
                    raise EnvdUnavailable("the VM exited before envd answered")
                try:
                    if (await probe.get("/health")).status_code == 204:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)  # a restored guest answers within ms: poll finely
        raise EnvdUnavailable(f"envd did not answer within {deadline_s:.0f} s")

    async def init(
        self,
        *,
        access_token: str | None,
        default_user: str,
        env: dict[str, str],
        workdir: str | None = None,
        hostname: str | None = None,
        entropy: bytes | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "envVars": env,
            "defaultUser": default_user,
            "timestamp": datetime.now(UTC).isoformat(),
        }
        if hostname:
            body["hostname"] = hostname
        if entropy:
            body["entropy"] = base64.b64encode(entropy).decode()
        if access_token:
            body["accessToken"] = access_token
        if workdir:
            body["defaultWorkdir"] = workdir
        r = await self.http.post("/init", json=body)
        if r.status_code != 204:
            raise EnvdUnavailable(f"envd /init answered {r.status_code}: {r.text}")
        self.access_token = access_token or self.access_token
        self.http.headers.update(self.headers())

    async def prepare_snapshot(self, timeout_s: float = 3.0) -> None:
        """Ask envd to quiesce before a memory snapshot (best effort: a snapshot without it is still
        consistent, only its connections from before linger until /init closes them)."""
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post("/snapshot/prepare", timeout=timeout_s)

    async def metrics(self) -> dict[str, Any]:
        r = await self.http.get("/metrics", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    async def download(self, path: str, user: str | None = None) -> AsyncIterator[bytes]:
        async with self.http.stream(
            "GET",
            "/files",
            params={"path": path},
            headers={**self.headers(user), "Accept-Encoding": "identity"},
        ) as r:
            if r.status_code != 200:
                await r.aread()
                raise FileTransferError(r.status_code, _message(r))
            async for chunk in r.aiter_raw(1 << 16):
                yield chunk

    async def upload(
        self, path: str, body: AsyncIterator[bytes] | bytes, user: str | None = None
    ) -> dict[str, Any]:
        r = await self.http.post(
            "/files",
            params={"path": path},
            content=body,
            headers={**self.headers(user), "Content-Type": "application/octet-stream"},
        )
        if r.status_code != 200:
            raise FileTransferError(r.status_code, _message(r))
        return dict(r.json()[0])

    async def close(self) -> None:
        await self.http.aclose()
        await self.process.close()
        await self.filesystem.close()
        await self._transport.aclose()

    async def __aenter__(self) -> EnvdClient:
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self.close()


class FileTransferError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text))
    except ValueError:
        return r.text
