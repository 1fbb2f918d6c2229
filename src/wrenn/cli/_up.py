"""`wrenn up`: bring the platform up locally and run a first command in it."""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError
from rich.console import Console

from wrenn.proto.envd.process.process_connect import ProcessClient
from wrenn.proto.envd.process.process_pb import ProcessConfig, StartRequest


class UpError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, log: Path, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise UpError(f"envd exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if (await client.get(f"{url}/health", timeout=1)).status_code == 204:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise UpError(f"envd did not answer within {within_s:.0f} s:\n{log.read_text()[-2000:]}")


async def _run_command(url: str, command: str) -> int:
    exit_code = 1
    async with ProcessClient(url, codec=proto_json_codec()) as client:
        request = StartRequest(process=ProcessConfig(cmd="/bin/bash", args=["-l", "-c", command]))
        async for response in client.start(request, timeout_ms=60_000):
            event = response.event.event if response.event else None
            if event is None:
                continue
            if event.field == "data" and (output := event.value.output) is not None:
                out = sys.stderr if output.field == "stderr" else sys.stdout
                out.buffer.write(output.value)
                out.flush()
            elif event.field == "end":
                exit_code = event.value.exit_code
    return exit_code


async def run(command: str, *, keep: bool, console: Console) -> int:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"wrenn-envd-{port}.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wrenn.envd",
            "--dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdout=sink,
            stderr=sink,
        )
    try:
        with console.status("starting envd"):
            await _wait_healthy(url, proc, log)
        console.print(f"envd is up at {url} (log: {log})")
        console.print(f"$ {command}")
        try:
            code = await _run_command(url, command)
        except ConnectError as exc:
            raise UpError(f"running the command failed: {exc.message}") from None
        if keep:
            console.print(f"envd keeps running at {url}; point an E2B client at it. Ctrl-C stops it.")
            await proc.wait()
        return code
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
