"""envd's own HTTP routes: /health, /metrics, /envs, /init and /snapshot/prepare."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from datetime import datetime
from http import HTTPStatus
from typing import Any

import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import _identity, _users
from ._config import EnvdConfig
from ._files import error
from ._quiesce import Quiescer
from ._state import EnvdState

log = logging.getLogger("wrenn.envd")

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
#: Below this drift the guest clock is left alone.
CLOCK_TOLERANCE_S = 0.05


class SystemRoutes:
    def __init__(self, config: EnvdConfig, state: EnvdState, quiescer: Quiescer) -> None:
        self._config = config
        self._state = state
        self._quiescer = quiescer
        psutil.cpu_percent(interval=None)  # the first reading primes the counter

    async def health(self, request: Request) -> Response:
        return Response(status_code=204)

    async def metrics(self, request: Request) -> Response:
        mem = psutil.virtual_memory()
        disk = psutil.disk_usage("/")
        return JSONResponse(
            {
                "ts": int(time.time()),
                "cpu_count": psutil.cpu_count() or 1,
                "cpu_used_pct": psutil.cpu_percent(interval=None),
                "mem_total": mem.total,
                "mem_used": mem.total - mem.available,
                "mem_cache": getattr(mem, "cached", 0),
                "mem_total_mib": mem.total // (1 << 20),
                "mem_used_mib": (mem.total - mem.available) // (1 << 20),
                "disk_used": disk.used,
                "disk_total": disk.total,
            }
        )

    async def envs(self, request: Request) -> Response:
        return JSONResponse(self._state.env_vars)

    async def init(self, request: Request) -> Response:
        try:
            body: Any = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return error(HTTPStatus.BAD_REQUEST, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        problem = _validate_init(body)
        if problem:
            return error(HTTPStatus.BAD_REQUEST, problem)
        if (user := body.get("defaultUser")) is not None:
            try:
                _users.lookup(user)
            except _users.UnknownUserError as exc:
                return error(HTTPStatus.BAD_REQUEST, f"defaultUser: {exc}")
            self._state.default_user = user
        if (workdir := body.get("defaultWorkdir")) is not None:
            self._state.default_workdir = workdir or None
        if (env := body.get("envVars")) is not None:
            self._state.env_vars.update(env)
        if "accessToken" in body and body["accessToken"] is not None:
            self._state.access_token = body["accessToken"] or None
        if (stamp := body.get("timestamp")) is not None:
            self._set_clock(stamp)
        # Wrenn's own fields, for guests restored from a shared snapshot (dev mode leaves the host alone).
        if (hostname := body.get("hostname")) and not self._config.dev:
            _identity.set_hostname(hostname)
        if (entropy := body.get("entropy")) and not self._config.dev:
            _identity.reseed(base64.b64decode(entropy))
            _identity.publish(_identity.IDENTITY_FILE)
        self._quiescer.after_restore(request.scope.get("client"))
        log.info(
            "initialised",
            extra={"default_user": self._state.default_user, "env_vars": len(self._state.env_vars)},
        )
        return Response(status_code=204)

    def _set_clock(self, stamp: str) -> None:
        target = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        drift = target - time.time()
        if self._config.dev or abs(drift) < CLOCK_TOLERANCE_S:
            return
        try:
            time.clock_settime(time.CLOCK_REALTIME, target)
            log.info("clock set", extra={"drift_s": round(drift, 3)})
        except OSError as exc:
            log.warning("cannot set the clock", extra={"error": str(exc)})

    async def snapshot_prepare(self, request: Request) -> Response:
        self._quiescer.prepare(request.scope.get("client"))
        os.sync()
        return Response(status_code=204, headers={"Connection": "close"})


def _validate_init(body: dict[str, Any]) -> str | None:
    env = body.get("envVars")
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        return "envVars must be an object of strings"
    for key in ("accessToken", "defaultUser", "defaultWorkdir", "timestamp", "hostname", "entropy"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    workdir = body.get("defaultWorkdir")
    if workdir and not workdir.startswith("/"):
        return "defaultWorkdir must be an absolute path"
    hostname = body.get("hostname")
    if hostname and not _HOSTNAME.match(hostname):
        return "hostname must be 1-63 letters, digits and hyphens"
    entropy = body.get("entropy")
    if entropy:
        try:
            raw = base64.b64decode(entropy, validate=True)
        except (binascii.Error, ValueError):
            return "entropy must be base64"
        if len(raw) > _identity.MAX_ENTROPY_BYTES:
            return f"entropy must be at most {_identity.MAX_ENTROPY_BYTES} bytes"
    stamp = body.get("timestamp")
    if stamp:
        try:
            datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return "timestamp must be RFC 3339"
    return None
