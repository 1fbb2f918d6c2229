"""`wrenn up`: bring Wrenn up on this machine and run a first command in a real microVM.

Builds the base image on first use (with a progress bar), starts a host agent, boots a sandbox through
it, runs the command and prints its output. The control plane and SDK join this path as they land.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from connectrpc.errors import ConnectError
from rich.console import Console

from wrenn import images
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient


class UpError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_agent(data_dir: Path, port: int, console: Console) -> subprocess.Popen[bytes]:
    log = data_dir / "agent.log"
    with log.open("ab") as sink:
        agent = subprocess.Popen(  # noqa: ASYNC220 - a plain Popen: it outlives no event loop of ours
            [sys.executable, "-m", "wrenn.agent", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches `up`, which then shuts the agent down in order
        )  # fmt: skip
    deadline = time.monotonic() + 120  # the first start probes the accelerator
    with console.status("starting the host agent (the first start probes for KVM)"):
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                raise UpError(f"the host agent exited with {agent.returncode}; its log: {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return agent
            except OSError:
                await asyncio.sleep(0.2)
    agent.kill()
    raise UpError(f"the host agent did not start within 120 s; its log: {log}")


async def run(command: str, *, keep: bool, console: Console, data_dir: Path) -> int:
    if os.geteuid() != 0:
        raise UpError("Wrenn runs microVMs with their own network namespaces: run it as root (sudo)")
    data_dir.mkdir(parents=True, exist_ok=True)
    if images.find("minimal", data_dir) is None:
        console.print("building the base image (once; about a minute)")
    try:
        await asyncio.to_thread(images.build, "minimal", data_dir, progress=True)
    except images.BuildError as exc:
        raise UpError(str(exc)) from None
    port = _free_port()
    agent = await _start_agent(data_dir, port, console)
    sandbox_id = f"up-{secrets.token_hex(4)}"
    try:
        async with HostAgentServiceClient(f"http://127.0.0.1:{port}") as client:
            info = await client.get_host_info(pb.GetHostInfoRequest())
            accel = "KVM" if info.accelerator == pb.Accelerator.KVM else "TCG (software emulation)"
            console.print(f"host agent up: QEMU {info.vmm_version}, {accel} ({info.accelerator_reason})")
            started = time.monotonic()
            with console.status(f"booting sandbox {sandbox_id}"):
                created = await client.create_sandbox(
                    pb.CreateSandboxRequest(
                        sandbox_id=sandbox_id, template="minimal", memory_mb=512, vcpus=1
                    ),
                    timeout_ms=300_000,
                )
            took = time.monotonic() - started
            host_ip = created.sandbox.host_ip if created.sandbox else "?"
            console.print(f"sandbox {sandbox_id} running at {host_ip} (booted in {took:.1f} s)")
            console.print(f"$ {command}")
            result = await client.exec(
                pb.ExecRequest(
                    sandbox_id=sandbox_id, cmd="/bin/bash", args=["-l", "-c", command], timeout_sec=120
                ),
                timeout_ms=150_000,
            )
            sys.stdout.buffer.write(result.stdout)
            sys.stdout.flush()
            sys.stderr.buffer.write(result.stderr)
            if keep:
                where = f"host agent API at http://127.0.0.1:{port}"
                console.print(f"sandbox {sandbox_id} keeps running; {where}. Ctrl-C ends both.")
                await asyncio.to_thread(agent.wait)
            return int(result.exit_code)
    except ConnectError as exc:
        raise UpError(exc.message) from None
    finally:
        await _shutdown(port, agent)


async def _shutdown(port: int, agent: subprocess.Popen[bytes]) -> None:
    """Destroy what `up` made: Terminate destroys every sandbox and removes the agent's host rules."""
    if agent.poll() is None:
        try:
            async with HostAgentServiceClient(f"http://127.0.0.1:{port}") as client:
                await client.terminate(pb.TerminateRequest(), timeout_ms=60_000)
            await asyncio.to_thread(agent.wait, 60)
        except (ConnectError, subprocess.TimeoutExpired, OSError):
            agent.kill()
