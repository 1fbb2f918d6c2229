"""The agent's client for one sandbox's envd: health, /init, Connect RPCs and /files over the TAP.

envd is a program in the guest, and the guest is the tenant's: whatever answers on its port may answer
anything. So no answer is read whole without a bound: Connect messages and whole-body answers stop at
`MAX_ANSWER`, JSON and error bodies at `MAX_SMALL_ANSWER`, and downloads are streamed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
import pyqwest
from connectrpc.code import Code
from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError

from wrenn._shared.logs import RequestIdInterceptor, add_request_id
from wrenn.proto.envd.filesystem.filesystem_connect import FilesystemClient
from wrenn.proto.envd.process.process_connect import ProcessClient

ENVD_PORT = 49983
#: The most the agent reads of one Connect message or whole answer from a guest.
MAX_ANSWER = 16 << 20
#: ... and of a small JSON answer or an error's body.
MAX_SMALL_ANSWER = 64 << 10


class EnvdUnavailable(RuntimeError):
    pass


class _BoundedClient(pyqwest.Client):
    """pyqwest's client whose whole-body answers (connectrpc's unary calls) stop at `limit` bytes."""

    def __init__(self, transport: pyqwest.Transport, limit: int) -> None:
        super().__init__(transport)
        self._limit = limit

    async def post(
        self,
        url: str,
        headers: Any = None,
        content: Any = None,
        *,
        params: Any = None,
    ) -> pyqwest.FullResponse:
        async with self.stream("POST", url, headers, content, params=params) as response:
            body = bytearray()
            async for chunk in response.content:
                body += chunk
                if len(body) > self._limit:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED, f"envd answered more than {self._limit} bytes"
                    )
            return pyqwest.FullResponse(response.status, response.headers, bytes(body), response.trailers)


async def _body(response: httpx.Response, limit: int = MAX_SMALL_ANSWER) -> bytes:
    """At most `limit` bytes of an answer's (decoded) body; EnvdUnavailable past that."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise EnvdUnavailable(f"envd answered more than {limit} bytes")
    return bytes(data)


class EnvdClient:
    def __init__(self, host: str, access_token: str | None, port: int = ENVD_PORT) -> None:
        self.url = f"http://{host}:{port}"
        self.access_token = access_token
        # the request id of the call being served (a create's, say) goes on to envd, which logs it
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers(), timeout=httpx.Timeout(30, read=None),
            event_hooks={"request": [add_request_id]},
        )  # fmt: skip
        # A pool of its own: connectrpc's default transport is shared process-wide, and a later sandbox
        # that gets this one's address would be handed its dead keep-alive connections.
        self._transport = pyqwest.HTTPTransport()
        rpc_http = _BoundedClient(self._transport, MAX_ANSWER)
        rpc: dict[str, Any] = {
            "codec": proto_json_codec(),
            "http_client": rpc_http,
            "read_max_bytes": MAX_ANSWER,
            "interceptors": [RequestIdInterceptor()],
        }
        self.process = ProcessClient(self.url, **rpc)
        self.filesystem = FilesystemClient(self.url, **rpc)

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
                    async with probe.stream("GET", "/health") as answer:  # its body is never read
                        if answer.status_code == 204:
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
        async with self.http.stream("POST", "/init", json=body) as r:
            if r.status_code != 204:
                said = (await _body(r)).decode(errors="replace")
                raise EnvdUnavailable(f"envd /init answered {r.status_code}: {said}")
        self.access_token = access_token or self.access_token
        self.http.headers.update(self.headers())

    async def prepare_snapshot(self, timeout_s: float = 3.0) -> None:
        """Ask envd to quiesce before a memory snapshot (best effort: a snapshot without it is still
        consistent, only its connections from before linger until /init closes them)."""
        with contextlib.suppress(httpx.HTTPError):
            async with self.http.stream("POST", "/snapshot/prepare", timeout=timeout_s):
                pass

    async def metrics(self) -> dict[str, Any]:
        async with self.http.stream("GET", "/metrics", timeout=5) as r:
            r.raise_for_status()
            return dict(json.loads(await _body(r)))

    async def download(self, path: str, user: str | None = None) -> AsyncIterator[bytes]:
        async with self.http.stream(
            "GET",
            "/files",
            params={"path": path},
            headers={**self.headers(user), "Accept-Encoding": "identity"},
        ) as r:
            if r.status_code != 200:
                raise FileTransferError(r.status_code, _message(await _body(r)))
            async for chunk in r.aiter_raw(1 << 16):
                yield chunk

    async def upload(
        self, path: str, body: AsyncIterator[bytes] | bytes, user: str | None = None
    ) -> dict[str, Any]:
        async with self.http.stream(
            "POST",
            "/files",
            params={"path": path},
            content=body,
            headers={**self.headers(user), "Content-Type": "application/octet-stream"},
        ) as r:
            answer = await _body(r)
            if r.status_code != 200:
                raise FileTransferError(r.status_code, _message(answer))
        try:
            return dict(json.loads(answer)[0])
        except (ValueError, LookupError, TypeError) as exc:
            raise EnvdUnavailable(f"envd's answer to an upload is not one: {exc}") from None

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


def _message(body: bytes) -> str:
    text = body.decode(errors="replace")
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text
