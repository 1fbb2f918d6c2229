"""Code interpreter capsules: `run_code` in live Jupyter kernels, through the capsule's execution server
(port 49999 of the `code-interpreter` image, E2B's protocol) reached via the control plane's proxy.

    from wrenn.code_interpreter import Capsule
    with Capsule() as capsule:
        execution = capsule.run_code("import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
        chart = execution.results[0].chart       # {"type": "line", "elements": [...], ...}
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._capsule import AsyncCapsule as _AsyncCapsule
from ._capsule import Capsule as _Capsule
from ._config import RUN_GRACE
from ._exceptions import aerror_from_response, error_from_response
from ._models import CapsuleInfo

#: The code interpreter's image (E2B's `code-interpreter-v1`, the seed's `code-runner-beta`).
DEFAULT_TEMPLATE = "code-interpreter"
#: Where the execution server listens in the capsule.
PORT = 49999
#: Its answers while it is still starting (or the capsule's port not yet open): tried again.
_RETRY = (502, 503)


@dataclass
class ExecutionError:
    """The exception a cell raised: its class name, message and formatted traceback."""

    name: str
    value: str
    traceback: str


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


_FORMATS = (
    "text",
    "html",
    "markdown",
    "svg",
    "png",
    "jpeg",
    "pdf",
    "latex",
    "json",
    "javascript",
    "data",
    "chart",
)


@dataclass
class Result:
    """One rich output of a cell (E2B's `Result`): the value of its last expression (`is_main_result`) or
    something it displayed. `png`/`jpeg`/`pdf` are base64; `chart` is E2B's structured chart of a
    matplotlib figure (`{"type": "line"|"scatter"|"bar"|"pie"|"box_and_whisker"|..., "elements": ...}`);
    `data` a DataFrame's columns; `extra` every other MIME type."""

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: dict[str, Any] | None = None
    javascript: str | None = None
    data: dict[str, Any] | None = None
    chart: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    is_main_result: bool = False

    def formats(self) -> builtins.list[str]:
        """The formats this result has (`["text", "png", "chart"]`), then its extra MIME types."""
        return [name for name in _FORMATS if getattr(self, name)] + list(self.extra)


@dataclass
class Execution:
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        """The text of the main result (the value of the cell's last expression)."""
        return next((r.text for r in self.results if r.is_main_result), None)


@dataclass(frozen=True)
class Context:
    """A separate kernel: its own variables, language and working directory."""

    id: str
    language: str
    cwd: str


Callback = Callable[[Any], Any] | None


@dataclass
class _Handlers:
    on_result: Callback = None
    on_stdout: Callback = None
    on_stderr: Callback = None
    on_error: Callback = None

    def apply(self, execution: Execution, raw: str) -> None:
        """Fold one line of the /execute stream into `execution`, calling the matching handler."""
        if not raw.strip():
            return
        line = json.loads(raw)
        kind = line.pop("type", None)
        if kind == "result":
            result = Result(**{k: v for k, v in line.items() if k in Result.__dataclass_fields__})
            result.extra = result.extra or {}
            execution.results.append(result)
            _call(self.on_result, result)
        elif kind in ("stdout", "stderr"):
            getattr(execution.logs, kind).append(line.get("text", ""))
            _call(self.on_stdout if kind == "stdout" else self.on_stderr, line.get("text", ""))
        elif kind == "error":
            execution.error = ExecutionError(
                line.get("name", ""), line.get("value", ""), line.get("traceback", "")
            )
            _call(self.on_error, execution.error)
        elif kind == "number_of_executions":
            execution.execution_count = line.get("execution_count")


def _call(handler: Callback, value: Any) -> None:
    if handler is not None:
        handler(value)


def _body(code: str, language: str | None, context: Context | str | None, envs: dict[str, str] | None,
          timeout: float | None) -> dict[str, Any]:  # fmt: skip
    context_id = _id(context) if context is not None else None
    return {
        "code": code,
        "language": None if context_id else (language or "python"),
        "context_id": context_id,
        "env_vars": envs,
        "timeout": timeout or None,
    }


def _headers(info: CapsuleInfo) -> dict[str, str]:
    headers = {"E2b-Sandbox-Id": info.id, "E2b-Sandbox-Port": str(PORT)}
    if info.traffic_access_token:
        headers["X-Traffic-Access-Token"] = info.traffic_access_token
    return headers


def _read_timeout(timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(timeout + RUN_GRACE if timeout else None, connect=10.0)


def _id(context: Context | str) -> str:
    return context.id if isinstance(context, Context) else context


def _context(body: Any) -> Context:
    return Context(id=str(body["id"]), language=str(body["language"]), cwd=str(body["cwd"]))


class Capsule(_Capsule):
    """A capsule of the code interpreter image with `run_code` (and everything a `Capsule` has).

    Its template defaults to `code-interpreter` (E2B's `code-interpreter-v1`, the seed's `code-runner-beta`);
    its shape to the image's own (1 vCPU, 1024 MiB), the one an E2B create gets too, so that every client
    shares the image's ready snapshot.
    """

    default_template = DEFAULT_TEMPLATE

    def run_code(
        self,
        code: str,
        language: str | None = "python",
        timeout: float | None = 30,
        jupyter_timeout: float = 30,
        on_result: Callable[[Result], Any] | None = None,
        on_stdout: Callable[[str], Any] | None = None,
        on_stderr: Callable[[str], Any] | None = None,
        on_error: Callable[[ExecutionError], Any] | None = None,
        *,
        context: Context | str | None = None,
        envs: dict[str, str] | None = None,
    ) -> Execution:
        """Run `code` in the language's default context (or in `context`); variables, imports and
        definitions stay for the next call. A cell still running after `timeout` seconds (None or 0: no
        limit) is interrupted, the kernel keeps its state, and `execution.error.name` is `TimeoutError`.
        `envs` are env vars for this cell only. The handlers see each output as it comes.
        `jupyter_timeout`: how long to wait for the interpreter of a capsule that is still starting."""
        handlers = _Handlers(on_result, on_stdout, on_stderr, on_error)
        body = _body(code, language, context, envs, timeout)
        deadline = time.monotonic() + jupyter_timeout
        while True:
            with self._http.stream(
                "POST", "/execute", json=body, headers=_headers(self.info), timeout=_read_timeout(timeout)
            ) as r:
                if r.status_code in _RETRY and time.monotonic() < deadline:
                    r.read()
                    time.sleep(0.5)
                    continue
                if r.status_code >= 400:
                    raise error_from_response(r)
                execution = Execution()
                for line in r.iter_lines():
                    handlers.apply(execution, line)
                return execution

    def create_code_context(self, cwd: str | None = None, language: str | None = None) -> Context:
        """A new context (a kernel of its own) in `cwd` (default: the user's home)."""
        body = {k: v for k, v in (("cwd", cwd), ("language", language)) if v is not None}
        return _context(self._call("POST", "/contexts", body).json())

    def list_code_contexts(self) -> builtins.list[Context]:
        return [_context(c) for c in self._call("GET", "/contexts").json()]

    def restart_code_context(self, context: Context | str) -> None:
        """A fresh kernel for the context: its variables are gone, its directory stays."""
        self._call("POST", f"/contexts/{_id(context)}/restart")

    def remove_code_context(self, context: Context | str) -> None:
        self._call("DELETE", f"/contexts/{_id(context)}")

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        r = self._http.request(method, path, json=body, headers=_headers(self.info), timeout=120)
        if r.status_code >= 400:
            raise error_from_response(r)
        return r


class AsyncCapsule(_AsyncCapsule):
    """`Capsule` of the code interpreter on asyncio: `await AsyncCapsule.create()`, then
    `await capsule.run_code(...)`."""

    default_template = DEFAULT_TEMPLATE

    async def run_code(
        self,
        code: str,
        language: str | None = "python",
        timeout: float | None = 30,
        jupyter_timeout: float = 30,
        on_result: Callable[[Result], Any] | None = None,
        on_stdout: Callable[[str], Any] | None = None,
        on_stderr: Callable[[str], Any] | None = None,
        on_error: Callable[[ExecutionError], Any] | None = None,
        *,
        context: Context | str | None = None,
        envs: dict[str, str] | None = None,
    ) -> Execution:
        """See `Capsule.run_code` (the handlers are plain functions, called as outputs arrive)."""
        handlers = _Handlers(on_result, on_stdout, on_stderr, on_error)
        body = _body(code, language, context, envs, timeout)
        deadline = time.monotonic() + jupyter_timeout
        while True:
            async with self._http.stream(
                "POST", "/execute", json=body, headers=_headers(self.info), timeout=_read_timeout(timeout)
            ) as r:
                if r.status_code in _RETRY and time.monotonic() < deadline:
                    await r.aread()
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code >= 400:
                    raise await aerror_from_response(r)
                execution = Execution()
                async for line in r.aiter_lines():
                    handlers.apply(execution, line)
                return execution

    async def create_code_context(self, cwd: str | None = None, language: str | None = None) -> Context:
        body = {k: v for k, v in (("cwd", cwd), ("language", language)) if v is not None}
        return _context((await self._call("POST", "/contexts", body)).json())

    async def list_code_contexts(self) -> builtins.list[Context]:
        return [_context(c) for c in (await self._call("GET", "/contexts")).json()]

    async def restart_code_context(self, context: Context | str) -> None:
        await self._call("POST", f"/contexts/{_id(context)}/restart")

    async def remove_code_context(self, context: Context | str) -> None:
        await self._call("DELETE", f"/contexts/{_id(context)}")

    async def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        r = await self._http.request(method, path, json=body, headers=_headers(self.info), timeout=120)
        if r.status_code >= 400:
            raise await aerror_from_response(r)
        return r
