"""The process table: spawning, output fan-out, input, signals and deadlines.

A process belongs to envd, not to the stream that started it: a client that drops its stream can come
back with Connect, and only a signal (or the Start deadline) ends the process. Each process runs in its
own session and process group, so a signal reaches its children too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import termios
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from protobuf import Oneof

from wrenn.proto.envd.process.process_pb import ProcessConfig, ProcessEvent

from .._users import User

log = logging.getLogger("wrenn.envd.process")

#: Largest output chunk per event (the size E2B's envd uses).
CHUNK = 32 * 1024
#: Once the process has exited, output still arriving is read until the pipes are quiet this long.
#: Children that inherited the pipes would otherwise hold the end event back for ever.
DRAIN_IDLE_S = 0.2
#: Events queued per subscriber before the producer waits for it.
QUEUE_DEPTH = 256


class ProcessNotFoundError(LookupError):
    pass


class ProcessStateError(RuntimeError):
    """The operation does not fit the process (stdin closed, no PTY, ...)."""


@dataclass(frozen=True, slots=True)
class Spec:
    cmd: str
    args: list[str]
    env: dict[str, str]
    cwd: str
    user: User
    config: ProcessConfig
    tag: str | None = None
    stdin: bool = False
    pty_size: tuple[int, int] | None = None  # (cols, rows)


def event(kind: str, value: object) -> ProcessEvent:
    """A ProcessEvent whose `event` oneof is `kind` (start, data, end or keepalive)."""
    return ProcessEvent(event=Oneof(kind, value))  # type: ignore[arg-type]


def _status(returncode: int) -> tuple[int, bool, str]:
    """(exit_code, exited, status) in the words of Go's ProcessState, which E2B clients show."""
    if returncode >= 0:
        return returncode, True, f"exit status {returncode}"
    signum = -returncode
    try:
        name = (signal.strsignal(signum) or f"signal {signum}").lower()
    except ValueError:
        name = f"signal {signum}"
    return -1, False, f"signal: {name}"


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _acquire_controlling_tty() -> None:  # runs in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ManagedProcess:
    def __init__(self, spec: Spec, proc: asyncio.subprocess.Process, master_fd: int | None) -> None:
        self.spec = spec
        self.pid = proc.pid
        self.tag = spec.tag
        self._proc = proc
        self._master_fd = master_fd
        self._subscribers: set[asyncio.Queue[ProcessEvent]] = set()
        self._pumps: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._last_output = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self.deadline_exceeded = False
        self.end: ProcessEvent.EndEvent | None = None
        self.ended = asyncio.Event()

    @property
    def is_pty(self) -> bool:
        return self._master_fd is not None

    @property
    def running(self) -> bool:
        return self.end is None

    # --- output ----------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[ProcessEvent]:
        """A queue of this process's further events; ends with its `end` event."""
        queue: asyncio.Queue[ProcessEvent] = asyncio.Queue(QUEUE_DEPTH)
        if self.end is not None:
            queue.put_nowait(event("end", self.end))
        else:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ProcessEvent]) -> None:
        self._subscribers.discard(queue)

    async def _publish(self, event: ProcessEvent) -> None:
        for queue in list(self._subscribers):
            if queue in self._subscribers:
                await queue.put(event)

    async def _pump(self, reader: asyncio.StreamReader, stream: str) -> None:
        while True:
            try:
                chunk = await reader.read(CHUNK)
            except OSError:  # EIO on a PTY master once the terminal's last holder closed it
                return
            if not chunk:
                return
            self._last_output = time.monotonic()
            data = ProcessEvent.DataEvent(output=Oneof(stream, chunk))  # type: ignore[arg-type]
            await self._publish(event("data", data))

    async def start_pumps(self) -> None:
        loop = asyncio.get_running_loop()
        if self._master_fd is not None:
            reader = asyncio.StreamReader(limit=CHUNK * 4)
            pipe = os.fdopen(os.dup(self._master_fd), "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
            self._transports.append(transport)
            self._pumps.append(asyncio.create_task(self._pump(reader, "pty")))
        else:
            assert self._proc.stdout is not None and self._proc.stderr is not None
            self._pumps.append(asyncio.create_task(self._pump(self._proc.stdout, "stdout")))
            self._pumps.append(asyncio.create_task(self._pump(self._proc.stderr, "stderr")))

    async def supervise(self) -> None:
        """Wait for the exit, drain the output, publish `end`."""
        returncode = await self._proc.wait()
        while self._pumps and not all(p.done() for p in self._pumps):
            quiet = time.monotonic() - self._last_output
            if quiet >= DRAIN_IDLE_S:
                break
            await asyncio.wait(self._pumps, timeout=DRAIN_IDLE_S - quiet)
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._deadline is not None:
            self._deadline.cancel()
        exit_code, exited, status = _status(returncode)
        self.end = ProcessEvent.EndEvent(exit_code=exit_code, exited=exited, status=status)
        if self.deadline_exceeded:
            self.end.error = "deadline exceeded: the process was killed"
        await self._publish(event("end", self.end))
        self._subscribers.clear()
        self._close_fds()
        self.ended.set()
        log.info("process ended", extra={"pid": self.pid, "tag": self.tag, "status": status})

    def _close_fds(self) -> None:
        for transport in self._transports:
            transport.close()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        if self._master_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._master_fd)
            self._master_fd = None

    # --- input, signals, terminal ----------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        if self._master_fd is not None:
            await self._write_master(data)
            return
        if self._proc.stdin is None:
            raise ProcessStateError("the process was started without stdin (start it with stdin=true)")
        if self._proc.stdin.is_closing():
            raise ProcessStateError("stdin of the process is closed")
        self._proc.stdin.write(data)
        try:
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise ProcessStateError("the process no longer reads its stdin") from None

    async def write_pty(self, data: bytes) -> None:
        if self._master_fd is None:
            raise ProcessStateError("the process has no pseudo-terminal; send stdin instead")
        await self._write_master(data)

    async def _write_master(self, data: bytes) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            fd = self._master_fd
            if fd is None:
                raise ProcessStateError("the process has ended")
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            view = view[written:]

    def close_stdin(self) -> None:
        if self._master_fd is not None:
            raise ProcessStateError("a PTY has no separate stdin; send 0x04 (Ctrl-D) to end its input")
        if self._proc.stdin is None:
            raise ProcessStateError("the process was started without stdin")
        self._proc.stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        if self._master_fd is None:
            raise ProcessStateError("the process has no pseudo-terminal to resize")
        _set_winsize(self._master_fd, cols, rows)

    def signal(self, signum: int) -> None:
        """Signal the whole process group (the process and what it started)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def set_deadline(self, seconds: float) -> None:
        def expire() -> None:
            if self.running:
                self.deadline_exceeded = True
                log.info("process deadline exceeded", extra={"pid": self.pid, "after_s": round(seconds, 3)})
                self.signal(signal.SIGKILL)

        self._deadline = asyncio.get_running_loop().call_later(max(seconds, 0.0), expire)


class ProcessManager:
    def __init__(self, retention_s: float = 60.0) -> None:
        self._retention_s = retention_s
        self._by_pid: dict[int, ManagedProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __iter__(self) -> Iterator[ManagedProcess]:
        return iter(list(self._by_pid.values()))

    def running(self) -> list[ManagedProcess]:
        return [p for p in self._by_pid.values() if p.running]

    def get(self, pid: int | None = None, tag: str | None = None) -> ManagedProcess:
        if pid:
            found = self._by_pid.get(pid)
            if found is not None:
                return found
            raise ProcessNotFoundError(f"process with pid {pid} not found")
        if tag:
            matches = [p for p in self._by_pid.values() if p.tag == tag]
            # A tag may be reused once its process ended: prefer the running one, else the newest.
            matches.sort(key=lambda p: (p.running, p.pid))
            if matches:
                return matches[-1]
            raise ProcessNotFoundError(f"process with tag {tag!r} not found")
        raise ProcessNotFoundError("a process selector (pid or tag) is required")

    async def start(
        self, spec: Spec, deadline_s: float | None = None
    ) -> tuple[ManagedProcess, asyncio.Queue[ProcessEvent]]:
        """Spawn `spec` and return it with a subscription that sees all of its output."""
        if spec.tag and any(p.tag == spec.tag and p.running for p in self._by_pid.values()):
            raise FileExistsError(f"a running process already has the tag {spec.tag!r}")
        creds: dict[str, object] = {}
        if not spec.user.is_current:
            if os.geteuid() != 0:
                raise PermissionError(
                    f"envd does not run as root and cannot start processes as {spec.user.name!r}"
                )
            creds = {"user": spec.user.uid, "group": spec.user.gid, "extra_groups": list(spec.user.groups)}
        master: int | None = None
        if spec.pty_size is not None:
            master, slave = os.openpty()
            try:
                _set_winsize(slave, *spec.pty_size)
                if not spec.user.is_current:
                    os.fchown(slave, spec.user.uid, -1)
                proc = await asyncio.create_subprocess_exec(
                    spec.cmd,
                    *spec.args,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    env=spec.env,
                    cwd=spec.cwd,
                    start_new_session=True,
                    preexec_fn=_acquire_controlling_tty,
                    **creds,  # type: ignore[arg-type]
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
        else:
            proc = await asyncio.create_subprocess_exec(
                spec.cmd,
                *spec.args,
                stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=spec.env,
                cwd=spec.cwd,
                start_new_session=True,
                **creds,  # type: ignore[arg-type]
            )
        managed = ManagedProcess(spec, proc, master)
        queue = managed.subscribe()
        self._by_pid[managed.pid] = managed
        if deadline_s is not None:
            managed.set_deadline(deadline_s)
        await managed.start_pumps()
        self._spawn_task(self._run(managed))
        log.info(
            "process started",
            extra={
                "pid": managed.pid,
                "tag": spec.tag,
                "cmd": spec.cmd,
                "user": spec.user.name,
                "pty": master is not None,
            },
        )
        return managed, queue

    async def _run(self, managed: ManagedProcess) -> None:
        try:
            await managed.supervise()
        finally:
            await asyncio.sleep(self._retention_s)
            if self._by_pid.get(managed.pid) is managed:
                del self._by_pid[managed.pid]

    async def shutdown(self) -> None:
        """Kill every process group still running and wait for their end."""
        for managed in self.running():
            managed.signal(signal.SIGKILL)
        waits = [p.ended.wait() for p in self._by_pid.values()]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), timeout=5)
        for task in self._tasks:
            task.cancel()
