"""E2B's REST API beside our `/v1`, over the same database, teams, keys and logic, so that a program
written for the official `e2b` SDK runs against Wrenn with only its key and URLs changed.

Field names, status codes and error bodies (`{"code", "message"}`) are E2B's, as
../shared/reference/e2b-protocol.md records them. An E2B sandbox is a capsule: its `timeout` is a
lifetime deadline (`end_at`; the monitor kills it then, or pauses it with `autoPause`), its `metadata`
are the capsule's labels, `envVars` its default environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from .. import _errors
from .._deps import Caller, Capsules, Principal, Templates
from ..db import Capsule, as_utc, states, utcnow
from ..db import CapsuleStatus as S
from ..service import TEMPLATE_NAME, CreateSpec, Guest

router = APIRouter(tags=["e2b"])

#: E2B returns this constant; the SDK only requires the field.
CLIENT_ID = "6532622b"
#: The envd protocol version of a capsule whose image did not say (created before images said it).
ENVD_VERSION_UNKNOWN = "0.6.4"
#: E2B's default template is "base"; ours is "minimal".
ALIASES = {"base": "minimal"}
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 24 * 3600
#: Paths this module answers: their errors are E2B's `{"code", "message"}`.
PREFIXES = ("/sandboxes", "/v2/sandboxes", "/snapshots", "/templates", "/v2/templates", "/v3/templates")


def is_e2b_path(path: str) -> bool:
    return path.startswith(PREFIXES)


def error_body(status: int, message: str, code: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"code": status, "message": message}
    if code:
        body["error_code"] = code
    return body


class Network(BaseModel):
    model_config = ConfigDict(extra="allow")
    allowPublicTraffic: bool = True


class NewSandbox(BaseModel):
    model_config = ConfigDict(extra="allow")  # mcp, volumeMounts, ...: accepted, not acted on
    templateID: str = Field(default="base", min_length=1, max_length=128)
    timeout: int = Field(default=DEFAULT_TIMEOUT_S, ge=0, le=MAX_TIMEOUT_S)
    autoPause: bool = False
    secure: bool = True
    allow_internet_access: bool = True
    network: Network | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    envVars: dict[str, str] = Field(default_factory=dict)


class Timeout(BaseModel):
    timeout: int = Field(ge=0, le=MAX_TIMEOUT_S)


class OptionalTimeout(BaseModel):
    model_config = ConfigDict(extra="allow")
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_S)
    autoPause: bool | None = None


class Refresh(BaseModel):
    duration: int = Field(default=DEFAULT_TIMEOUT_S, ge=0, le=MAX_TIMEOUT_S)


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, pattern=TEMPLATE_NAME)


class ForkBody(BaseModel):
    count: int = Field(default=1, ge=1, le=20)
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_S)


# --- what the SDK reads back -----------------------------------------------------------------------


def _iso(value: datetime | None) -> str:
    return as_utc(value or utcnow()).isoformat().replace("+00:00", "Z")


def _state(c: Capsule) -> str:
    return "paused" if c.status in states.ASLEEP else "running"


def _envd_version(c: Capsule) -> str:
    return str((c.metadata_ or {}).get("envd_version") or ENVD_VERSION_UNKNOWN)


def _sandbox(c: Capsule, template_id: str) -> dict[str, Any]:
    """E2B's `Sandbox`: the reply to create, connect, resume and fork."""
    return {
        "templateID": template_id,
        "sandboxID": c.id,
        "clientID": CLIENT_ID,
        "alias": c.template,
        "envdVersion": _envd_version(c),
        "envdAccessToken": c.envd_token,
        "trafficAccessToken": c.traffic_access_token,
        "domain": None,
    }


def _listed(c: Capsule) -> dict[str, Any]:
    """E2B's `ListedSandbox` (no tokens)."""
    return {
        "templateID": c.template,
        "alias": c.template,
        "sandboxID": c.id,
        "clientID": CLIENT_ID,
        "startedAt": _iso(c.started_at or c.created_at),
        "endAt": _iso(c.end_at or (c.started_at or c.created_at) + timedelta(days=3650)),
        "cpuCount": c.vcpus,
        "memoryMB": c.memory_mb,
        "diskSizeMB": c.disk_size_mb,
        "metadata": dict(c.labels or {}),
        "state": _state(c),
        "envdVersion": _envd_version(c),
    }


def _detail(c: Capsule) -> dict[str, Any]:
    """E2B's `SandboxDetail`."""
    return {
        **_listed(c),
        "envdAccessToken": c.envd_token,
        "domain": None,
        "allowInternetAccess": True,
        "lifecycle": {"autoResume": True, "onTimeout": c.on_timeout},
    }


# --- helpers --------------------------------------------------------------------------------------


async def _find(capsules: Capsules, caller: Principal, sandbox_id: str) -> Capsule:
    """The team's live capsule; 404 (E2B's "sandbox not found") for anything else."""
    capsule = await capsules.session.get(Capsule, sandbox_id)
    if (
        capsule is None
        or capsule.team_id != caller.team_id
        or capsule.status not in (*states.VISIBLE, S.MISSING)
    ):
        raise _errors.ApiError(404, "sandbox_not_found", f"sandbox {sandbox_id} not found")
    return capsule


def _deadline(seconds: int | None) -> datetime | None:
    return utcnow() + timedelta(seconds=seconds) if seconds else None


def _hash(body: NewSandbox) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


# --- sandboxes ------------------------------------------------------------------------------------


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)
async def create_sandbox(
    body: NewSandbox,
    caller: Caller,
    capsules: Capsules,
    idempotency_key: str | None = Header(default=None, pattern=r"^[A-Za-z0-9-]{1,255}$"),
) -> JSONResponse:
    """`Sandbox.create`: a capsule from `templateID` ("base" is our "minimal", or a team template)."""
    request_hash = _hash(body)
    if idempotency_key:
        found = (
            await capsules.session.execute(
                select(Capsule).where(
                    Capsule.team_id == caller.team_id, Capsule.idempotency_key == idempotency_key
                )
            )
        ).scalar_one_or_none()
        if found is not None:
            if found.request_hash != request_hash:
                raise _errors.ApiError(
                    409, "idempotency_request_mismatch", "this Idempotency-Key was used for another request"
                )
            if found.status in (S.PENDING, S.STARTING):
                raise _errors.ApiError(409, "idempotency_in_progress", "that create is still under way")
            if found.status != S.ERROR:
                return JSONResponse(_sandbox(found, body.templateID), status_code=201)
            found.idempotency_key = None  # that attempt failed: this retry is a new create
            await capsules.session.commit()
    # E2B names a template `name`, `namespace/name` or `name:tag`; Wrenn's are plain names.
    name = body.templateID.rsplit("/", 1)[-1].split(":", 1)[0]
    template = ALIASES.get(name, name)
    if not re.fullmatch(TEMPLATE_NAME, template):
        raise _errors.ApiError(404, "template_not_found", f"template {body.templateID!r} not found")
    spec = CreateSpec(
        template=template,
        timeout_sec=0,  # the lifetime deadline below replaces the idle timeout
        allow_public_traffic=body.network.allowPublicTraffic if body.network else True,
        envs=body.envVars,
        labels=body.metadata,
        end_at=_deadline(body.timeout),
        on_timeout="pause" if body.autoPause else "kill",
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    try:
        (capsule,) = await capsules.create(caller, spec)
    except _errors.ApiError as exc:
        if exc.code == "not_found":
            raise _errors.ApiError(
                404, "template_not_found", f"template {body.templateID!r} not found"
            ) from None
        raise
    return JSONResponse(_sandbox(capsule, body.templateID), status_code=201)


async def _list(
    capsules: Capsules, caller: Principal, metadata: str | None, state: str | None
) -> list[Capsule]:
    wanted = {s.strip() for s in (state or "running,paused").split(",") if s.strip()}
    statuses = [s for s in states.VISIBLE if ("paused" if s in states.ASLEEP else "running") in wanted]
    rows = await capsules.session.execute(
        select(Capsule)
        .where(Capsule.team_id == caller.team_id, Capsule.status.in_(statuses))
        .order_by(Capsule.created_at, Capsule.id)
    )
    labels = {unquote(k): unquote(v) for k, v in parse_qsl(metadata or "", keep_blank_values=True)}
    return [c for c in rows.scalars() if all((c.labels or {}).get(k) == v for k, v in labels.items())]


@router.get("/v2/sandboxes")
async def list_sandboxes_v2(
    caller: Caller,
    capsules: Capsules,
    metadata: str | None = None,
    state: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    nextToken: str | None = None,
) -> JSONResponse:
    """`Sandbox.list`: filtered by `metadata` (URL-encoded `k=v` pairs) and `state`, paged by
    `nextToken` / the `x-next-token` header."""
    found = await _list(capsules, caller, metadata, state)
    start = 0
    if nextToken:
        try:
            after = base64.urlsafe_b64decode(nextToken.encode()).decode()
        except ValueError:
            raise _errors.bad_request("nextToken is not one this server handed out") from None
        ids = [c.id for c in found]
        start = ids.index(after) + 1 if after in ids else len(ids)
    page = found[start : start + limit]
    headers = {}
    if start + limit < len(found):
        headers["x-next-token"] = base64.urlsafe_b64encode(page[-1].id.encode()).decode()
    return JSONResponse([_listed(c) for c in page], headers=headers)


@router.get("/sandboxes")
async def list_sandboxes(
    caller: Caller, capsules: Capsules, metadata: str | None = None
) -> list[dict[str, Any]]:
    """The v1 list: every running sandbox of the team."""
    return [_listed(c) for c in await _list(capsules, caller, metadata, "running")]


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, caller: Caller, capsules: Capsules) -> dict[str, Any]:
    return _detail(await _find(capsules, caller, sandbox_id))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, caller: Caller, capsules: Capsules) -> Response:
    await capsules.destroy(await _find(capsules, caller, sandbox_id), caller)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: Timeout, caller: Caller, capsules: Capsules) -> Response:
    """The sandbox now ends `timeout` seconds from now (which may shorten its life)."""
    capsule = await _find(capsules, caller, sandbox_id)
    capsule.end_at = _deadline(body.timeout) or utcnow()
    await capsules.session.commit()
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204)
async def refresh(sandbox_id: str, body: Refresh, caller: Caller, capsules: Capsules) -> Response:
    """Extend the sandbox's life to at least `duration` seconds from now."""
    capsule = await _find(capsules, caller, sandbox_id)
    wanted = utcnow() + timedelta(seconds=body.duration)
    if capsule.end_at is not None and as_utc(capsule.end_at) < wanted:
        capsule.end_at = wanted
    await capsules.session.commit()
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause_sandbox(sandbox_id: str, caller: Caller, capsules: Capsules) -> Response:
    capsule = await _find(capsules, caller, sandbox_id)
    if capsule.status in states.ASLEEP:
        raise _errors.conflict(f"sandbox {sandbox_id} is already paused")
    await capsules.pause(capsule, caller)
    return Response(status_code=204)


async def _wake(
    capsules: Capsules, caller: Principal, sandbox_id: str, lifetime_s: int | None
) -> tuple[Capsule, bool]:
    """Resume the sandbox if it is paused; extend its life to `lifetime_s` from now. Whether it resumed."""
    capsule = await _find(capsules, caller, sandbox_id)
    resumed = capsule.status in states.ASLEEP and await capsules.resume(capsule, caller)
    if lifetime_s:
        wanted = utcnow() + timedelta(seconds=lifetime_s)
        if resumed or capsule.end_at is None or as_utc(capsule.end_at) < wanted:
            capsule.end_at = wanted
    await capsules.session.commit()
    return capsule, resumed


@router.post("/sandboxes/{sandbox_id}/connect")
@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect_sandbox(
    sandbox_id: str, caller: Caller, capsules: Capsules, body: OptionalTimeout | None = None
) -> JSONResponse:
    """`Sandbox.connect`: 200 when it was running (its life extended), 201 when it was resumed."""
    capsule, resumed = await _wake(capsules, caller, sandbox_id, body.timeout if body else None)
    return JSONResponse(_sandbox(capsule, capsule.template), status_code=201 if resumed else 200)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201)
async def resume_sandbox(
    sandbox_id: str, caller: Caller, capsules: Capsules, body: OptionalTimeout | None = None
) -> JSONResponse:
    """The 2.0-2.3 SDKs' connect: 409 when it already runs."""
    capsule = await _find(capsules, caller, sandbox_id)
    if capsule.status not in states.ASLEEP:
        raise _errors.conflict(f"sandbox {sandbox_id} is already running")
    if body is not None and body.autoPause is not None:
        capsule.on_timeout = "pause" if body.autoPause else "kill"
    capsule, _ = await _wake(capsules, caller, sandbox_id, body.timeout if body else None)
    return JSONResponse(_sandbox(capsule, capsule.template), status_code=201)


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str,
    caller: Caller,
    capsules: Capsules,
    start: int | None = None,
    end: int | None = None,
) -> list[dict[str, Any]]:
    """CPU, memory and disk samples (the host keeps up to 24 h); empty while paused."""
    capsule = await _find(capsules, caller, sandbox_id)
    if capsule.status != S.RUNNING or capsule.host_id is None:
        return []
    host = await capsules.host_of(capsule)
    memory_total = capsule.memory_mb << 20
    disk_total = capsule.disk_size_mb << 20
    out = []
    for p in await Guest(capsules.agents, capsule, host).metrics("24h"):
        seconds = p.timestamp.seconds if p.timestamp else 0
        if (start is not None and seconds < start) or (end is not None and seconds > end):
            continue
        out.append(
            {
                "timestamp": _iso(datetime.fromtimestamp(seconds, UTC)),
                "timestampUnix": seconds,
                "cpuCount": capsule.vcpus,
                "cpuUsedPct": p.cpu_pct,
                "memUsed": p.mem_bytes,
                "memTotal": memory_total,
                "memCache": 0,
                "diskUsed": p.disk_bytes,
                "diskTotal": disk_total,
            }
        )
    return out


@router.get("/sandboxes/{sandbox_id}/logs")
async def sandbox_logs(sandbox_id: str, caller: Caller, capsules: Capsules) -> dict[str, Any]:
    """E2B's log shape. Wrenn keeps no guest log stream yet: the lists are empty."""
    await _find(capsules, caller, sandbox_id)
    return {"logs": [], "logEntries": []}


# --- snapshots and forks --------------------------------------------------------------------------


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(
    sandbox_id: str, caller: Caller, templates: Templates, body: SnapshotBody | None = None
) -> dict[str, Any]:
    """A template of the sandbox as it is now; the sandbox runs on (E2B's behaviour)."""
    capsule = await _find(templates.capsules, caller, sandbox_id)
    name = (body.name if body else None) or f"snapshot-{secrets.token_hex(4)}"
    await templates.claim_name(caller.team_id, name)
    template = await templates.checkpoint(caller, capsule, name)
    return {"snapshotID": template.name, "names": [template.name]}


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(
    sandbox_id: str, body: ForkBody, caller: Caller, templates: Templates
) -> list[dict[str, Any]]:
    capsule = await _find(templates.capsules, caller, sandbox_id)
    forks = await templates.fork(caller, capsule, body.count)
    for forked in forks:
        forked.end_at = _deadline(body.timeout)
    await templates.session.commit()
    return [{"sandbox": _sandbox(forked, capsule.template)} for forked in forks]


@router.get("/snapshots")
async def list_snapshots(caller: Caller, templates: Templates) -> list[dict[str, Any]]:
    return [{"snapshotID": t.name, "names": [t.name]} for t in await templates.of_team(caller.team_id)]


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(template_id: str, caller: Caller, templates: Templates) -> Response:
    await templates.delete(caller, template_id)
    return Response(status_code=204)
