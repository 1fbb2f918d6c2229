"""The control plane's ASGI app: the REST API under /v1, OpenAPI at /openapi.json, docs at /docs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException

from wrenn import __version__
from wrenn._shared.asgiproxy import Scope, Send, send_error
from wrenn._shared.logs import RequestIdMiddleware
from wrenn._shared.private import private_dir

from . import _site
from ._agents import AgentPool
from ._ca import CertificateAuthority
from ._deadlines import Deadlines
from ._dispatcher import Dispatcher
from ._errors import ApiError
from ._hosts import register_local
from ._inflight import InFlight
from ._janitor import Janitor
from ._limits import Limited, RequestLimits
from ._mail import Mailer
from ._metrics import Metrics
from ._monitor import HostMonitor
from ._proxy import TrafficProxy
from ._sampler import Sampler
from ._secretbox import SecretBox
from ._security import Tokens, load_or_create_secret
from ._settings import Settings
from .db import make_engine, migrate, private_sqlite_file, sessions
from .routes import (
    account,
    admin,
    admin_platform,
    auth,
    builds,
    capsules,
    channels,
    dashboard,
    e2b,
    e2b_templates,
    e2b_webhooks,
    host_tags,
    keys,
    metrics,
    network,
    oauth,
    observability,
    snapshots,
    streams,
    teams,
)
from .routes import hosts as hosts_routes
from .service.accounts import prepare_bootstrap
from .service.builds import BuildWorker

log = logging.getLogger("wrenn.controlplane")

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
}


def create_app(settings: Settings) -> FastAPI:
    settings.check()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        private_dir(settings.data_dir)  # 0700 when the control plane creates it
        private_sqlite_file(settings.resolved_database_url)
        box = SecretBox.load_or_create(settings.encryption_key, settings.data_dir)
        engine = make_engine(settings.resolved_database_url, box)
        await migrate(engine)
        app.state.settings = settings
        app.state.sessions = sessions(engine)
        app.state.tokens = Tokens(
            load_or_create_secret(settings.jwt_secret, settings.data_dir), settings.jwt_ttl_s
        )
        app.state.ca = CertificateAuthority.load_or_create(
            settings.data_dir, settings.ca_cert_file, settings.ca_key_file
        )
        app.state.agents = AgentPool(app.state.ca, settings.local_agent_token(), InFlight(engine))
        app.state.mailer = Mailer(settings)
        async with app.state.sessions() as session:
            await prepare_bootstrap(session, settings.data_dir)
            for address in settings.local_agents:
                await register_local(session, app.state.agents, address)
        monitor = app.state.monitor = HostMonitor(
            app.state.sessions, app.state.agents, settings, engine.dialect.name
        )
        monitor.start()
        app.state.upload_key = app.state.tokens.derive(b"wrenn template uploads")
        builds = app.state.builds = BuildWorker(app.state.sessions, app.state.agents, settings)
        builds.start()
        deadlines = app.state.deadlines = Deadlines(
            app.state.sessions, app.state.agents, settings, engine.dialect.name, app.state.metrics
        )
        deadlines.start()
        janitor = app.state.janitor = Janitor(
            app.state.sessions, app.state.agents, settings, engine.dialect.name
        )
        janitor.start()
        sampler = app.state.sampler = Sampler(
            app.state.sessions, app.state.agents, settings, engine.dialect.name
        )
        sampler.start()
        dispatcher = app.state.dispatcher = Dispatcher(
            app.state.sessions, app.state.agents, settings, engine.dialect.name, app.state.metrics
        )
        dispatcher.start()
        log.info("control plane ready", extra={"database": engine.url.render_as_string(hide_password=True)})
        try:
            yield
        finally:
            await dispatcher.stop()
            await sampler.stop()
            await builds.stop()
            await deadlines.stop()
            await janitor.stop()
            await monitor.stop()
            await app.state.mailer.drain()
            await app.state.agents.close()
            await engine.dispose()

    app = FastAPI(title="Wrenn", version=__version__, lifespan=lifespan)
    app.state.metrics = Metrics()  # before the lifespan: the proxy and the services count into it

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if e2b.is_e2b_path(request.url.path):  # E2B's SDK parses its own error shape
            body = e2b.error_body(exc.status, exc.message, exc.code)
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        if e2b.is_e2b_path(request.url.path):
            return JSONResponse(e2b.error_body(400, problems, "invalid_request"), status_code=400)
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        if e2b.is_e2b_path(request.url.path):
            body = e2b.error_body(exc.status_code, str(exc.detail), code)
            return JSONResponse(body, status_code=exc.status_code)
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(
            {"error": {"code": "internal_error", "message": "internal error"}}, status_code=500
        )

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, IntegrityError):
            # A unique or foreign key the route did not check first, or lost a race on (two sign-ups with
            # one email): the request conflicts with the stored data; it is not a server fault.
            log.warning("integrity error", extra={"path": request.url.path, "error": str(exc.orig)[:300]})
            return JSONResponse(
                {"error": {"code": "conflict", "message": "the request conflicts with existing data"}},
                status_code=409,
            )
        if str(getattr(exc.orig, "sqlstate", "") or "").startswith("22"):
            # PostgreSQL's "data exception" class: a value the column cannot hold (a NUL character in a
            # string, mostly; SQLite stores those). Bad input, said as such.
            return JSONResponse(
                {"error": {"code": "invalid_request", "message": "a value contains characters or a size "
                           "the database cannot store (e.g. a NUL character)"}},
                status_code=400,
            )  # fmt: skip
        return await internal(request, exc)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    routers = (auth, account, oauth, admin, admin_platform, keys, observability, capsules, snapshots, streams)
    for module in routers:
        app.include_router(module.router)
    app.include_router(hosts_routes.router)
    app.include_router(host_tags.router)
    app.include_router(teams.router)
    app.include_router(builds.router)  # template builds: /v1/templates, /v1/admin/builds
    app.include_router(e2b_templates.router)  # E2B's template builds (before e2b's /templates/{id})
    app.include_router(e2b.router)  # E2B's REST API: /sandboxes, /v2/sandboxes, ...
    app.include_router(e2b_webhooks.router)  # E2B's lifecycle webhooks: /events/webhooks
    app.include_router(network.router)  # egress policies: /v1/capsules/{id}/network, E2B's PUT
    app.include_router(channels.router)  # notification channels and their deliveries
    app.include_router(metrics.router)  # Prometheus, behind the scrape token
    app.include_router(dashboard.router)  # the dashboard's session cookie and downloads
    _site.mount(app, settings.dashboard_dir)  # the dashboard's pages, last: they never shadow the API
    app.add_middleware(RequestLimits, settings=settings, respond=_refuse)  # bodies (413), rates (429)
    # `{port}-{capsule_id}.{domain}` traffic, outermost: its bodies and rates are not the API's
    app.add_middleware(TrafficProxy, state=app.state, settings=settings)
    # outermost: every request has an id (the client's X-Request-Id, or a new one) in its log records and
    # on the calls made to agents for it, and gets it back in its answer's X-Request-Id
    app.add_middleware(RequestIdMiddleware)
    return app


async def _refuse(scope: Scope, send: Send, refusal: Limited) -> None:
    """A request refused by `RequestLimits`, answered in its path's dialect."""
    if e2b.is_e2b_path(scope["path"]):
        body = e2b.error_body(refusal.status, refusal.message, refusal.code)
    else:
        body = {"error": {"code": refusal.code, "message": refusal.message}}
    if scope["type"] == "websocket":
        await send_error(scope, send, refusal.status, refusal.code, refusal.message, headers=refusal.headers)
        return
    await JSONResponse(body, status_code=refusal.status, headers=refusal.headers)(scope, _no_receive, send)


async def _no_receive() -> dict[str, object]:
    return {"type": "http.disconnect"}
