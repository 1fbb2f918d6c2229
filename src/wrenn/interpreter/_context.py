"""One context: a Jupyter kernel of one language, the cells it runs one at a time, and what the server
keeps in step in it (working directory, the sandbox's env vars, fresh random seeds after a restore)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import _results
from ._jupyter import LOST, Jupyter, JupyterError, KernelChannel, Request
from ._languages import Language

log = logging.getLogger("wrenn.interpreter")

#: The sandbox's env vars, read with the caller's envd token (the argument; None: the request had none).
#: It gives None when envd did not give them (no or a wrong token, envd unreachable): a later cell asks again.
EnvSource = Callable[[str | None], Awaitable[dict[str, str] | None]]


class ContextError(RuntimeError):
    pass


@dataclass
class _Outcome:
    """What a finished request left: its error line, if any."""

    error: dict[str, Any] | None = None


def prelude() -> str:
    """The Python kernel's prelude: E2B's formatters (charts, data frames, JSON) and image hooks."""
    return resources.files("wrenn.interpreter").joinpath("_prelude.py").read_text()


class Context:
    def __init__(
        self,
        jupyter: Jupyter,
        kernel_id: str,
        language: Language,
        cwd: str,
        identity: str,
        keepalive_s: float,
        interrupt_grace_s: float,
    ) -> None:
        self.jupyter = jupyter
        self.id = kernel_id
        self.language = language
        self.cwd = cwd
        self.channel = KernelChannel(jupyter, kernel_id)
        self.lock = asyncio.Lock()
        self.keepalive_s = keepalive_s
        self.interrupt_grace_s = interrupt_grace_s
        #: The guest identity this kernel's random state belongs to.
        self.identity = identity
        #: The sandbox's env vars as last loaded into the kernel (None: not loaded since it started, or
        #: envd did not give them yet).
        self.sandbox_env: dict[str, str] | None = None
        #: Work left by a cell whose client went away: interrupting it and restoring the env vars.
        self._settling: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language.name, "cwd": self.cwd}

    async def start(self, warm_modules: tuple[str, ...] = ()) -> None:
        """Connect, then set the kernel up: the prelude (Python), the working directory, warm imports."""
        await self.channel.open()
        await self._setup(warm_modules)

    async def _setup(self, warm_modules: tuple[str, ...] = ()) -> None:
        if self.language.name == "python":
            await self._quiet(prelude(), "the prelude")
        await self._quiet(self.language.chdir(self.cwd), f"cd {self.cwd}")
        if warm_modules and self.language.name == "python":
            code = (
                f"import importlib as _w\nfor _m in {list(warm_modules)!r}: _w.import_module(_m)\ndel _w, _m"
            )
            await self._quiet(code, "warm imports")

    async def close(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
        await self.channel.close()

    async def restart(self) -> None:
        async with self.lock:
            await self._await_settling()
            await self.jupyter.restart_kernel(self.id)
            await self.channel.reopen()
            self.sandbox_env = None
            await self._setup()

    async def refresh_identity(self, identity: str) -> None:
        """Reseed the kernel's generators if the guest became another one since it last ran a cell."""
        async with self.lock:
            await self._await_settling()
            await self._refresh_identity(identity)

    async def _refresh_identity(self, identity: str) -> None:
        if identity == self.identity:
            return
        await self._quiet(self.language.reseed(), "reseeding")
        self.sandbox_env = None  # a restored template's capsule has env vars of its own
        self._reseeded(identity)

    def _reseeded(self, identity: str) -> None:
        self.identity = identity
        log.info("kernel reseeded", extra={"context": self.id, "language": self.language.name})

    async def execute(
        self,
        code: str,
        *,
        envs: dict[str, str],
        sandbox_env: EnvSource,
        access_token: str | None,
        identity: str,
        timeout_s: float | None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one cell, yielding E2B's output lines (without the final end_of_execution)."""
        async with self.lock:
            await self._await_settling()
            # What the cell needs first goes in one silent request: a round trip to the kernel each would
            # cost a restored capsule's first cell several (each is tens of ms, more under emulation).
            setup, reseed = [], identity != self.identity
            if reseed:
                setup.append(self.language.reseed())
            loaded = self.sandbox_env
            if loaded is None or reseed:  # a restored template's capsule has env vars of its own
                loaded = await sandbox_env(access_token)
                setup += [self.language.set_env(loaded)] if loaded else []
            if envs:
                setup.append(self.language.set_env(envs))
            if setup:
                await self._quiet("\n".join(setup), "preparing the cell (seeds, env vars)")
            self.sandbox_env = loaded
            if reseed:
                self._reseeded(identity)
            request = await self.channel.execute(code, silent=False)
            finished = False
            try:
                async for line in self._stream(request, timeout_s):
                    yield line
                finished = True
            finally:
                if not finished:  # the client went away (or the stream failed): stop the cell
                    self._settling = asyncio.create_task(self._settle(request, envs))
            if envs:
                await self._restore_env(envs)

    async def _stream(self, request: Request, timeout_s: float | None) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s else None
        state = _State()
        while not state.done:
            wait = self.keepalive_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(request.messages.get(), wait)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    yield _results.error(
                        "TimeoutError",
                        f"the cell ran past its timeout of {timeout_s:g} s and was interrupted",
                        "",
                    )
                    await self._stop(request)
                    return
                yield _results.KEEPALIVE
                continue
            for line in state.translate(message):
                yield line
        async for line in self._stragglers(request, state):
            yield line
        self.channel.forget(request)

    async def _stragglers(self, request: Request, state: _State) -> AsyncIterator[dict[str, Any]]:
        """Outputs a kernel sends after its reply and idle status: Deno's kernel publishes a cell's stdout
        and result from other tasks than its status, so they can trail both. Taken until the request has
        been quiet for the language's settle time (none for the kernels that keep Jupyter's order)."""
        while self.language.settle_s > 0:
            try:
                message = await asyncio.wait_for(request.messages.get(), self.language.settle_s)
            except TimeoutError:
                return
            for line in state.translate(message):
                yield line

    async def _settle(self, request: Request, envs: dict[str, str]) -> None:
        try:
            await self._stop(request)
            if envs:
                await self._restore_env(envs)
        except Exception as exc:  # noqa: BLE001 (a background task: logged, the next cell goes on)
            log.warning("cannot settle an abandoned cell", extra={"context": self.id, "error": str(exc)})

    async def _stop(self, request: Request) -> None:
        """Interrupt the kernel and wait for the cell to end; a kernel that ignores it is restarted."""
        with contextlib.suppress(JupyterError):
            await self.jupyter.interrupt_kernel(self.id)
        try:
            await asyncio.wait_for(_drain(request), self.interrupt_grace_s)
        except TimeoutError:
            log.warning("kernel ignored an interrupt: restarting it", extra={"context": self.id})
            self.channel.forget(request)
            await self.jupyter.restart_kernel(self.id)
            await self.channel.reopen()
            self.sandbox_env = None
            await self._setup()
        finally:
            self.channel.forget(request)

    async def _await_settling(self) -> None:
        task, self._settling = self._settling, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def _restore_env(self, envs: dict[str, str]) -> None:
        base = self.sandbox_env or {}
        back = {k: base[k] for k in envs if k in base}
        gone = [k for k in envs if k not in base]
        if back:
            await self._quiet(self.language.set_env(back), "restoring env vars")
        if gone:
            await self._quiet(self.language.unset_env(gone), "restoring env vars")

    async def _quiet(self, code: str, what: str) -> None:
        """Run code of the server's own, silently; ContextError if it fails."""
        request = await self.channel.execute(code, silent=True)
        try:
            outcome = await asyncio.wait_for(_drain(request), 300)
        finally:
            self.channel.forget(request)
        if outcome.error is not None:
            raise ContextError(f"{what} failed in context {self.id}: {outcome.error.get('value')}")


class _State:
    """Turns one request's Jupyter messages into output lines; done once the kernel has both replied and
    gone idle (either may come first)."""

    def __init__(self) -> None:
        self.replied = False
        self.idle = False
        self.errored = False

    @property
    def done(self) -> bool:
        return self.replied and self.idle

    def translate(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        kind = message.get("msg_type") or message.get("header", {}).get("msg_type")
        content: dict[str, Any] = message.get("content") or {}
        date = message.get("header", {}).get("date")
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            return [_results.stream(name, str(content.get("text", "")), str(date) if date else None)]
        if kind == "execute_input":
            return [_results.execution_count(int(content.get("execution_count") or 0))]
        if kind in ("execute_result", "display_data"):
            bundle = content.get("data") or {}
            return [_results.result(bundle, is_main_result=kind == "execute_result")]
        if kind == "error":
            return self._error(content)
        if kind == "execute_reply":
            self.replied = True
            if content.get("status") == "error":
                return self._error(content)
            if content.get("status") == "aborted":
                self.idle = True
                return [_results.error("ExecutionAborted", "the execution was aborted", "")]
            return []
        if kind == "status":
            state = content.get("execution_state")
            if state == "idle":
                self.idle = True
            elif state in ("restarting", "dead"):
                self.replied = self.idle = True
                return [_results.error("ContextRestarting", f"the context's kernel is {state}", "")]
            return []
        if kind == LOST:
            self.replied = self.idle = True
            reason = str(content.get("reason", "the kernel's connection was lost"))
            return [_results.error("UnexpectedEndOfExecution", reason, ""), _results.UNEXPECTED_END]
        return []

    def _error(self, content: dict[str, Any]) -> list[dict[str, Any]]:
        if self.errored:
            return []
        self.errored = True
        return [
            _results.error(
                str(content.get("ename", "")), str(content.get("evalue", "")), content.get("traceback") or []
            )
        ]


async def _drain(request: Request) -> _Outcome:
    """Wait for a request to end, keeping only its error."""
    state = _State()
    outcome = _Outcome()
    while not state.done:
        for line in state.translate(await request.messages.get()):
            if line["type"] == "error" and outcome.error is None:
                outcome.error = line
    return outcome
