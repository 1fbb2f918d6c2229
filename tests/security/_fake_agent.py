"""A stand-in host agent for the in-process attack tests: the real Connect service interface and a traffic
listener, on loopback, recording every call it gets, so a test can say "this never reached the agent".
VM behaviour is not what these tests are about (the platform fixture has the real agent for that)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentService, HostAgentServiceASGIApplication


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorder(HostAgentService):
    """Creates succeed after `boot_s`; everything is recorded in `calls`."""

    proxy_port: int = 0
    boot_s: float = 0.0
    #: Pauses fail (a full disk, say).
    fail_pause: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    #: What it says it sampled of each sandbox, `(unix seconds, cpu %, memory bytes, disk bytes)`, for any
    #: range (a host's rings go with the VM: a test empties them at a pause or destroy).
    samples: dict[str, list[tuple[int, float, int, int]]] = field(default_factory=dict)
    #: The `X-Request-Id` each create came with ('' without one).
    request_ids: list[str] = field(default_factory=list)
    #: The base images it reports.
    images: list[pb.ImageInfo] = field(default_factory=lambda: [pb.ImageInfo(name="minimal", version="1")])

    async def get_host_info(self, request: pb.GetHostInfoRequest, ctx: Any) -> pb.GetHostInfoResponse:
        self.calls.append(("get_host_info", request))
        return pb.GetHostInfoResponse(
            hostname="fake", arch="x86_64", cpu_count=64, memory_total_mb=1 << 20, disk_total_mb=1 << 30,
            disk_available_mb=1 << 29,
            slot_capacity=1000, proxy_port=self.proxy_port, images=self.images,
        )  # fmt: skip

    async def create_sandbox(self, request: pb.CreateSandboxRequest, ctx: Any) -> pb.CreateSandboxResponse:
        self.calls.append(("create_sandbox", request))
        self.request_ids.append(ctx.request_headers.get("x-request-id", ""))
        await asyncio.sleep(self.boot_s)
        info = pb.SandboxInfo(
            sandbox_id=request.sandbox_id, status=pb.SandboxStatus.RUNNING, host_ip="10.11.0.2"
        )
        return pb.CreateSandboxResponse(sandbox=info)

    async def list_sandboxes(self, request: pb.ListSandboxesRequest, ctx: Any) -> pb.ListSandboxesResponse:
        self.calls.append(("list_sandboxes", request))
        return pb.ListSandboxesResponse()

    async def destroy_sandbox(self, request: pb.DestroySandboxRequest, ctx: Any) -> pb.DestroySandboxResponse:
        self.calls.append(("destroy_sandbox", request))
        return pb.DestroySandboxResponse()

    async def pause_sandbox(self, request: pb.PauseSandboxRequest, ctx: Any) -> pb.PauseSandboxResponse:
        self.calls.append(("pause_sandbox", request))
        if self.fail_pause:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, "no space left for the snapshot")
        return pb.PauseSandboxResponse()

    async def resume_sandbox(self, request: pb.ResumeSandboxRequest, ctx: Any) -> pb.ResumeSandboxResponse:
        self.calls.append(("resume_sandbox", request))
        info = pb.SandboxInfo(
            sandbox_id=request.sandbox_id, status=pb.SandboxStatus.RUNNING, host_ip="10.11.0.2"
        )
        return pb.ResumeSandboxResponse(sandbox=info)

    async def get_sandbox_metrics(
        self, request: pb.GetSandboxMetricsRequest, ctx: Any
    ) -> pb.GetSandboxMetricsResponse:
        self.calls.append(("get_sandbox_metrics", request))
        points = [
            pb.MetricsPoint(timestamp=Timestamp(seconds=t), cpu_pct=cpu, mem_bytes=mem, disk_bytes=disk)
            for t, cpu, mem, disk in self.samples.get(request.sandbox_id, [])
        ]
        return pb.GetSandboxMetricsResponse(points=points)

    async def terminate(self, request: pb.TerminateRequest, ctx: Any) -> pb.TerminateResponse:
        self.calls.append(("terminate", request))
        return pb.TerminateResponse()

    def names(self) -> list[str]:
        """The calls made for someone (the host monitor's own probes left out)."""
        probes = ("get_host_info", "list_sandboxes", "get_sandbox_metrics")
        return [name for name, _ in self.calls if name not in probes]


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The traffic listener: answers what it was sent (headers, path, query) as JSON, with a `Set-Cookie`
    for each `set-cookie` of the query (a guest setting cookies, as a hostile one would)."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode()
    body = json.dumps({
        "path": scope["path"], "query": query,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    }).encode()  # fmt: skip
    cookies = [(b"set-cookie", v.encode()) for k, v in parse_qsl(query) if k == "set-cookie"]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), *cookies],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(app: Any, port: int, tls: dict[str, Path] | None = None) -> Served:
    """`app` on 127.0.0.1:`port` in a thread; `tls`: cert, key and CA files (mutual TLS, as registered)."""
    extra: dict[str, Any] = {}
    if tls is not None:
        extra = {"ssl_certfile": str(tls["cert"]), "ssl_keyfile": str(tls["key"]),
                 "ssl_ca_certs": str(tls["ca"]), "ssl_cert_reqs": ssl.CERT_REQUIRED}  # fmt: skip
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", **extra)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake agent did not start"
        time.sleep(0.02)
    return Served(server, thread, port)


@dataclass
class FakeAgent:
    """A local (plain HTTP) agent: its API and its traffic listener."""

    recorder: Recorder
    api: Served
    traffic: Served

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def stop(self) -> None:
        self.api.stop()
        self.traffic.stop()


def start_fake_agent(boot_s: float = 0.0) -> FakeAgent:
    traffic = serve(echo, free_port())
    recorder = Recorder(proxy_port=traffic.port, boot_s=boot_s)
    api = serve(HostAgentServiceASGIApplication(recorder), free_port())
    return FakeAgent(recorder, api, traffic)


def settled(app: Any, timeout: float = 30.0) -> None:
    """Wait until the in-process control plane `app` (entered: its lifespan runs) ended its host monitor's
    first round, the one at start. This stand-in lists no sandboxes, so that round, late on a busy
    machine, would find a test's just-created capsule missing on its host and stop it."""
    deadline = time.monotonic() + timeout
    while app.state.monitor.rounds < 1:
        assert time.monotonic() < deadline, "the host monitor's first round did not end"
        time.sleep(0.02)
