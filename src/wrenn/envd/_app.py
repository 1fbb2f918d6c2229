"""Assembling envd: the Connect services and the HTTP routes behind one ASGI app, with auth."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from wrenn._shared.logs import RequestIdMiddleware
from wrenn.proto.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from wrenn.proto.envd.process.process_connect import ProcessASGIApplication

from . import _users
from ._codecs import codecs
from ._config import EnvdConfig
from ._files import FileRoutes
from ._quiesce import Quiescer
from ._state import EnvdState
from ._system import SystemRoutes
from .filesystem import FilesystemService
from .process import ProcessManager, ProcessService

#: Routes that answer without the access token: health always, /files with a token or a signed URL.
#: Until a token is set, every route but health answers only the host (`EnvdConfig.host_address`).
_OPEN = {"/health"}
_SELF_CHECKED = {"/files"}
_CONNECT_PREFIXES = ("/process.Process/", "/filesystem.Filesystem/")


class Envd:
    """One envd: its state, its services and the ASGI app that serves them."""

    def __init__(self, config: EnvdConfig, connections: Callable[[], Iterable[Any]] | None = None) -> None:
        self.config = config
        default_user = _users.current_user_name() if config.dev else "root"
        self.state = EnvdState(default_user=default_user)
        self.quiescer = Quiescer(connections)
        self.processes = ProcessManager(retention_s=config.exited_retention_s)
        self.filesystem = FilesystemService(self.state, watcher_idle_s=config.watcher_idle_s)
        system = SystemRoutes(config, self.state, self.quiescer)
        files = FileRoutes(self.state, config.max_upload_bytes)
        self._http = Starlette(
            routes=[
                Route("/health", system.health, methods=["GET"]),
                Route("/metrics", system.metrics, methods=["GET"]),
                Route("/envs", system.envs, methods=["GET"]),
                Route("/init", system.init, methods=["POST"]),
                Route("/snapshot/prepare", system.snapshot_prepare, methods=["POST"]),
                Route("/files", files.download, methods=["GET"]),
                Route("/files", files.upload, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )
        self._process_app = ProcessASGIApplication(
            ProcessService(self.state, self.processes), codecs=codecs()
        )
        self._filesystem_app = FilesystemASGIApplication(self.filesystem, codecs=codecs())
        self._with_request_id = RequestIdMiddleware(self._route, create=False, echo=False)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.filesystem.close()
        with contextlib.suppress(TimeoutError):
            await self.processes.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the host's X-Request-Id (a create's, say) on the log records of the request it came with
        await self._with_request_id(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._http(scope, receive, send)
            return
        path: str = scope["path"]
        if path not in _OPEN and not self._reachable(scope):
            await _denied(path, HTTPStatus.FORBIDDEN, "envd answers only the host until it is initialised")(
                scope, receive, send
            )
            return
        if path not in _OPEN and path not in _SELF_CHECKED and not self._authorised(scope):
            await _denied(path, HTTPStatus.UNAUTHORIZED, "missing or invalid X-Access-Token")(
                scope, receive, send
            )
            return
        app: ASGIApp = self._http
        if path.startswith(_CONNECT_PREFIXES[0]):
            app = self._process_app
        elif path.startswith(_CONNECT_PREFIXES[1]):
            app = self._filesystem_app
        await app(scope, receive, send)

    def _reachable(self, scope: Scope) -> bool:
        """Whether the caller may talk to envd at all: anyone once it has a token; before, the host only."""
        host = self.config.host_address
        if self.state.access_token is not None or host is None:
            return True
        client = scope.get("client")
        return client is not None and client[0] == host

    def _authorised(self, scope: Scope) -> bool:
        if self.state.access_token is None:
            return True
        token = next((v.decode() for k, v in scope["headers"] if k == b"x-access-token"), None)
        return self.state.token_ok(token)


def _denied(path: str, status: HTTPStatus, message: str) -> JSONResponse:
    if path.startswith(_CONNECT_PREFIXES):  # a Connect error body
        code = "unauthenticated" if status is HTTPStatus.UNAUTHORIZED else "permission_denied"
        return JSONResponse({"code": code, "message": message}, status_code=status)
    return JSONResponse({"code": int(status), "message": message}, status_code=status)
