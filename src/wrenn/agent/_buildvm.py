"""A build VM: a microVM a template build runs its steps in, driven through its envd.

A user's build steps are untrusted code, so they run in a guest like any sandbox's, never on the host: its
own network namespace, cgroup and VMM, its disk a qcow2 overlay over the chain of layers it booted from.
It is not a sandbox of the table (the control plane never sees it), but it is made and released with the
same parts (`Launcher`, `SandboxTable.release`), so nothing of it is left whatever way the build ends.

Between steps the VM's disk is frozen into a layer: the guest syncs, QEMU stops (which flushes the
overlay), the overlay is copied sparse (everything written since the VM booted) and the VM goes on. A
layer is so the state after a step, over the base the VM booted from.

Network: the build VM reaches the internet like a capsule (private ranges blocked), plus the `egress`
addresses the build allows (a package index on the platform's network): one rule inserted at the head of
the namespace's forward chain per address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from connectrpc.errors import ConnectError

from wrenn import images
from wrenn.proto.envd.process import process_pb as proc

from . import _disk
from ._admission import Admission
from ._errors import SandboxError
from ._launch import Launcher, describe_failure
from ._sandbox import Sandbox, SandboxParams, Status
from ._table import SandboxTable
from .network import _firewall

log = logging.getLogger("wrenn.agent.build")

#: A line of output longer than this is cut in the log.
MAX_LINE = 4000


class StepFailed(RuntimeError):
    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


def parse_egress(items: list[str]) -> list[tuple[str, int]]:
    """`ip:port` or `cidr:port` items; ValueError for anything else."""
    out = []
    for item in items:
        address, _, port = item.rpartition(":")
        network = ipaddress.ip_network(address, strict=False)
        if not isinstance(network, ipaddress.IPv4Network) or not 0 < int(port) < 65536:
            raise ValueError(f"egress {item!r}: an IPv4 address or network and a port")
        out.append((str(network), int(port)))
    return out


class BuildVM:
    def __init__(
        self,
        table: SandboxTable,
        launcher: Launcher,
        vm_id: str,
        image: images.Image,
        *,
        vcpus: int,
        memory_mb: int,
        disk_size_mb: int,
        egress: list[tuple[str, int]],
    ) -> None:
        self.table = table
        self.launcher = launcher
        self.image = image
        self.egress = egress
        params = SandboxParams(
            sandbox_id=vm_id,
            template=image.template,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_size_mb=disk_size_mb,
            timeout_sec=0,
            allow_internet=True,
            cold_boot=True,
        )
        self.sandbox = Sandbox(
            params=params,
            workdir=table.config.sandboxes_dir / vm_id,
            image_name=image.template,
            image_version=image.version,
            kernel_version=image.kernel_version,
            envd_version=image.envd_version,
        )
        #: The disk the VM booted over (the top of a chain of blobs).
        self.base: Path | None = None

    @property
    def alive(self) -> bool:
        vm = self.sandbox.vm
        return vm is not None and vm.returncode is None

    async def boot(self, chain: list[tuple[Path, str]]) -> float:
        """Boot over the disks of `chain` (top first, down to a raw file system), which the VMM is handed
        as they are named here (never as a layer's header names them); the seconds it took until envd
        answered."""
        sandbox, started = self.sandbox, time.monotonic()
        Admission(self.table).check(sandbox.params)  # memory and disk, beside every sandbox's claim
        sandbox.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.launcher.plug(sandbox)
            await self._allow_egress()
            sandbox.disk = await _disk.create_overlay_over(
                chain, sandbox.workdir / "rootfs.qcow2", sandbox.params.disk_size_mb
            )
            spec = dataclasses.replace(self.launcher.spec(sandbox, self.image), backing=tuple(chain))
            sandbox.vm = await self.table.driver.start(spec)
            await self.launcher.attach(sandbox, access_token=None)
        except BaseException as exc:
            reason = describe_failure(exc, sandbox)
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise SandboxError("internal", f"the build VM did not boot: {reason}") from None
        sandbox.status = Status.RUNNING
        self.base = chain[0][0]
        return time.monotonic() - started

    async def _allow_egress(self) -> None:
        net = self.sandbox.network
        assert net is not None
        prefix = self.table.network.config.prefix
        for network, port in self.egress:
            await _firewall.run(
                ["ip", "netns", "exec", net.netns, "nft", "insert", "rule", "inet", prefix, "forward",
                 "iifname", net.tap, "ip", "saddr", net.guest_ip, "ip", "daddr", network,
                 "tcp", "dport", str(port), "accept"]
            )  # fmt: skip

    def _headers(self, user: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}

    async def run(
        self,
        script: str,
        *,
        user: str,
        cwd: str = "",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        timeout_s: float = 600,
        on_line: Callable[[str, str], None] | None = None,
    ) -> tuple[int, list[str]]:
        """Run `/bin/sh -c script` in the guest to its end (killed at `timeout_s`); its exit code and its last
        lines of output. `on_line(stream, line)` gets each line as it comes."""
        envd = self.sandbox.envd
        assert envd is not None
        config = proc.ProcessConfig(cmd="/bin/sh", args=["-c", script, "sh", *args], envs=env or {})
        if cwd:
            config.cwd = cwd
        tail: list[str] = []
        partial = {"stdout": b"", "stderr": b""}

        def emit(stream: str, data: bytes, final: bool = False) -> None:
            buffer = partial[stream] + data
            *lines, rest = buffer.split(b"\n")
            if final and rest:
                lines, rest = [*lines, rest], b""
            partial[stream] = rest[-MAX_LINE * 4 :]
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")[:MAX_LINE]
                tail.append(line)
                del tail[:-40]
                if on_line is not None:
                    on_line(stream, line)

        code = -1
        try:
            stream = envd.process.start(
                proc.StartRequest(process=config),
                headers=self._headers(user),
                timeout_ms=int(timeout_s * 1000),
            )
            async for response in stream:
                which = response.event.event if response.event is not None else None
                if which is None:
                    continue
                if which.field == "data" and (output := which.value.output) is not None:
                    if output.field in ("stdout", "stderr"):
                        emit(output.field, bytes(output.value))
                elif which.field == "end":
                    code = which.value.exit_code if which.value.exited else -1
        except ConnectError as exc:
            for name in partial:
                emit(name, b"", final=True)
            if not self.alive:
                raise StepFailed(self.died(), tail) from None
            if "deadline" in exc.message or exc.code.name == "DEADLINE_EXCEEDED":
                raise StepFailed(f"timed out after {timeout_s:.0f} s", tail) from None
            raise StepFailed(exc.message, tail) from None
        except (httpx.TransportError, OSError) as exc:
            raise StepFailed(f"the build VM's envd does not answer: {exc}", tail) from None
        for name in partial:
            emit(name, b"", final=True)
        if not self.alive:
            raise StepFailed(self.died(), tail)
        return code, tail

    def died(self) -> str:
        """Why the VM is gone (a VMM killed for memory: its cgroup's limit is guest RAM plus overhead)."""
        reason = self.sandbox.error.splitlines()[0] if self.sandbox.error else "it exited"
        return f"the build VM died: {reason}"

    async def start_background(
        self, script: str, *, user: str, cwd: str, env: dict[str, str], on_line: Callable[[str, str], None]
    ) -> asyncio.Task[None]:
        """Start `script` and leave it running (the template's start command); its output goes to `on_line`
        until the returned task is cancelled (the process keeps running: envd keeps a process whose
        stream went away)."""
        envd = self.sandbox.envd
        assert envd is not None
        config = proc.ProcessConfig(cmd="/bin/sh", args=["-c", script], envs=env)
        if cwd:
            config.cwd = cwd
        request = proc.StartRequest(process=config, tag="start-cmd")
        stream = envd.process.start(request, headers=self._headers(user))
        started = asyncio.Event()

        async def follow(events: AsyncIterator[proc.StartResponse]) -> None:
            with contextlib.suppress(ConnectError, httpx.TransportError, OSError):
                async for response in events:
                    which = response.event.event if response.event is not None else None
                    if which is None:
                        continue
                    started.set()
                    if which.field == "data" and (output := which.value.output) is not None:
                        text = bytes(output.value).decode(errors="replace")
                        for line in text.splitlines():
                            on_line(output.field or "stdout", line[:MAX_LINE])
                    elif which.field == "end":
                        on_line("stderr", f"the start command exited: {which.value.status}")
            started.set()

        task = asyncio.create_task(follow(stream))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(started.wait(), 30)
        return task

    async def upload(self, path: str, source: Path) -> None:
        envd = self.sandbox.envd
        assert envd is not None

        async def chunks() -> AsyncIterator[bytes]:
            with source.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, 1 << 20):
                    yield chunk

        await envd.upload(path, chunks(), user="root")

    async def layer(self, into: Path) -> None:
        """Freeze the disk as it is into `into`: a qcow2 of everything written since the VM booted, over the
        disk it booted from. The VM goes on."""
        code, tail = await self.run("sync", user="root", timeout_s=300)
        if code != 0:
            raise StepFailed("sync failed in the build VM", tail)
        vm, disk = self.sandbox.vm, self.sandbox.disk
        assert vm is not None and disk is not None
        await vm.pause()  # QEMU flushes the overlay when it stops
        try:
            await _disk.copy_sparse(disk, into)
        finally:
            await vm.resume()

    async def snapshot(self, directory: Path) -> None:
        """The ready snapshot: device state and RAM into `directory`, and the disk as `rootfs.qcow2`. The VM
        stays stopped (it is closed next)."""
        vm, envd, disk = self.sandbox.vm, self.sandbox.envd, self.sandbox.disk
        assert vm is not None and envd is not None and disk is not None
        await self.run("sync", user="root", timeout_s=300)
        await envd.prepare_snapshot()
        await vm.snapshot(directory)
        await _disk.copy_sparse(disk, directory / "rootfs.qcow2")

    async def close(self) -> None:
        sandbox = self.sandbox
        sandbox.status = Status.STOPPED
        await self.table.release(sandbox)
        self.table.forget(sandbox)
