"""The execution server's HTTP API, E2B's (`e2b-code-interpreter` talks to it unchanged):

GET  /health                      200 "OK" once the default Python context is ready, 503 before
POST /execute                     {code, language?, context_id?, env_vars?, timeout?} -> JSON lines
POST /contexts                    {language?, cwd?} -> {id, language, cwd}
GET  /contexts                    [{id, language, cwd}]
POST /contexts/{id}/restart       a fresh kernel for the context
DELETE /contexts/{id}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import _results
from ._config import InterpreterConfig
from ._context import Context, ContextError
from ._contexts import Contexts
from ._jupyter import Jupyter, JupyterError
from ._languages import Language, UnknownLanguage, check_env, resolve

log = logging.getLogger("wrenn.interpreter")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Server:
    def __init__(self, config: InterpreterConfig) -> None:
        self.config = config
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60))
        self.contexts = Contexts(config, Jupyter(config.jupyter_url, self.http), self.http)
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def startup(self) -> None:
        """Wait for Jupyter, then start (and warm) the preloaded languages' default contexts."""
        try:
            await self.contexts.jupyter.wait_ready(self.config.startup_timeout_s)
            self.contexts.kernels = await self.contexts.jupyter.kernel_names()
            for name in self.config.preload:
                await self.contexts.default(resolve(name), warm=True)
            self._tasks.append(asyncio.create_task(self.contexts.watch_identity()))
            log.info("ready", extra={"kernels": sorted(self.contexts.kernels)})
        except Exception as exc:  # noqa: BLE001 (reported by /health and every request)
            self.failure = str(exc)
            log.error("cannot start", extra={"error": str(exc)})
        finally:
            self.ready.set()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.contexts.close()
        await self.http.aclose()

    async def wait_ready(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), self.config.startup_timeout_s)
        if not self.ready.is_set():
            raise _Refused(503, "the code interpreter is still starting")
        if self.failure is not None:
            raise _Refused(503, f"the code interpreter failed to start: {self.failure}")

    # --- routes --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.ready.is_set() and self.failure is None:
            return JSONResponse("OK")
        return JSONResponse({"status": "failed" if self.failure else "starting"}, status_code=503)

    async def execute(self, request: Request) -> Response:
        await self.wait_ready()
        body = await self._body(request)
        code = body.get("code")
        if not isinstance(code, str):
            raise _Refused(400, "code must be a string")
        context_id, language = body.get("context_id"), body.get("language")
        if context_id and language:
            raise _Refused(400, "Only one of context_id or language can be provided")
        timeout = body.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0 or timeout > 86400):
            raise _Refused(400, "timeout must be a number of seconds between 0 and 86400")
        envs = self._env(body.get("env_vars"))
        context = await self._context(context_id, language)
        lines = context.execute(
            code,
            envs=envs,
            sandbox_env=self.contexts.sandbox_env,
            access_token=request.headers.get("x-access-token"),
            identity=self.contexts.identity(),
            timeout_s=float(timeout) if timeout else None,
        )
        return StreamingResponse(_json_lines(lines), media_type="application/x-ndjson")

    async def create_context(self, request: Request) -> Response:
        await self.wait_ready()
        body = await self._body(request)
        cwd = body.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd):
            raise _Refused(400, "cwd must be an absolute path")
        language = self._language(body.get("language"))
        try:
            context = await self.contexts.create(language, cwd)
        except ContextError as exc:
            raise _Refused(400, str(exc)) from None
        return JSONResponse(context.describe())

    async def list_contexts(self, request: Request) -> Response:
        await self.wait_ready()
        return JSONResponse([c.describe() for c in self.contexts.by_id.values()])

    async def restart_context(self, request: Request) -> Response:
        await self.wait_ready()
        context = self._existing(request.path_params["context_id"])
        await context.restart()
        return Response(status_code=204)

    async def remove_context(self, request: Request) -> Response:
        await self.wait_ready()
        context = self._existing(request.path_params["context_id"])
        await self.contexts.remove(context)
        return Response(status_code=204)

    # --- helpers -------------------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.config.max_body_bytes:
                raise _Refused(413, f"the request body is over {self.config.max_body_bytes} bytes")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Refused(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the request body must be a JSON object")
        return body

    def _env(self, value: object) -> dict[str, str]:
        try:
            return check_env(value)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None

    def _language(self, name: object) -> Language:
        if name is not None and not isinstance(name, str):
            raise _Refused(400, "language must be a string")
        try:
            language = resolve(name)
            self.contexts.check_available(language)
        except UnknownLanguage as exc:
            raise _Refused(400, str(exc)) from None
        return language

    def _existing(self, context_id: str) -> Context:
        context = self.contexts.get(context_id)
        if context is None:
            raise _Refused(404, f"Context {context_id} not found")
        return context

    async def _context(self, context_id: object, language: object) -> Context:
        if context_id is not None:
            if not isinstance(context_id, str):
                raise _Refused(400, "context_id must be a string")
            return self._existing(context_id)
        return await self.contexts.default(self._language(language))


async def _json_lines(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield (json.dumps(line) + "\n").encode()
    except (ContextError, JupyterError) as exc:
        yield (json.dumps(_results.error("ExecutionError", str(exc), "")) + "\n").encode()
    finally:
        await lines.aclose()  # type: ignore[attr-defined]
    yield (json.dumps(_results.END) + "\n").encode()


def create_app(config: InterpreterConfig | None = None) -> Starlette:
    server = Server(config or InterpreterConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        startup = asyncio.create_task(server.startup())
        try:
            yield
        finally:
            startup.cancel()
            await server.shutdown()

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return PlainTextResponse(exc.message, status_code=exc.status)

    async def failed(request: Request, exc: Exception) -> Response:
        log.warning("request failed", extra={"path": request.url.path, "error": str(exc)})
        return PlainTextResponse(str(exc), status_code=500)

    app = Starlette(
        routes=[
            Route("/health", server.health, methods=["GET"]),
            Route("/execute", server.execute, methods=["POST"]),
            Route("/contexts", server.create_context, methods=["POST"]),
            Route("/contexts", server.list_contexts, methods=["GET"]),
            Route("/contexts/{context_id}/restart", server.restart_context, methods=["POST"]),
            Route("/contexts/{context_id}", server.remove_context, methods=["DELETE"]),
        ],
        lifespan=lifespan,
        exception_handlers={_Refused: refused, JupyterError: failed, ContextError: failed},
    )
    app.state.server = server
    return app
