"""The VMM process behind a VM: one this agent started, or one adopted after a restart (waited for
through a pidfd)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from ._driver import VMSpec


def runs_vm(pid: int, program: str, flag: str, vm_id: str) -> bool:
    """True when `pid` is alive running `program` (a substring of its executable's name) with
    `flag vm_id` on its command line: a VMM a driver started for `vm_id`, not a recycled pid."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if program not in os.path.basename(os.fsdecode(args[0])):
        return False
    wanted = [flag.encode(), vm_id.encode()]
    return any(args[i : i + 2] == wanted for i in range(1, len(args) - 1))


class PidProcess:
    """Quacks like asyncio.subprocess.Process for what the drivers use: pid, returncode, wait(),
    send_signal(), kill(). The exit status of a process that is not our child is unknowable, so it
    reads as -1."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(pid)
        self._done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._fd, self._exited)

    def _exited(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        os.close(self._fd)
        self.returncode = -1
        if not self._done.done():
            self._done.set_result(-1)

    async def wait(self) -> int:
        return int(await asyncio.shield(self._done))

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ProcessVM:
    """What every driver's VM shares: its spec and the VMM process behind it."""

    def __init__(self, spec: VMSpec, proc: asyncio.subprocess.Process | PidProcess) -> None:
        self.spec = spec
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    async def _kill_process(self) -> int:
        """SIGKILL the VMM (if it still runs) and reap it; its return code."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)
        return await self._proc.wait()
