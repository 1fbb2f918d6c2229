"""E2B's REST API beside our `/v1`, over the same database, teams, keys and logic, so that a program
written for the official `e2b` SDK runs against Wrenn with only its key and URLs changed.

Field names, status codes and error bodies (`{"code", "message"}`) are E2B's, as
../shared/reference/e2b-protocol.md records them. An E2B sandbox is a capsule: its `timeout` is a
lifetime deadline (`end_at`; the monitor kills it then, or pauses it with `autoPause`), its `metadata`
are the capsule's labels, `envVars` its default environment.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from .. import _errors
from .._deps import Caller, Capsules, Principal, Templates
from .._time import rfc3339
from ..db import Capsule, as_utc, states, utcnow
from ..db import CapsuleStatus as S
from ..service import TEMPLATE_NAME, CreateSpec, NetworkSpec, listing, logs
from ..service.guest import history as guest_history
from ..service.network import RuleBody, from_e2b
from ..service.usage import latest as latest_sample

router = APIRouter(tags=["e2b"])

#: E2B returns this constant; the SDK only requires the field.
CLIENT_ID = "6532622b"
#: The envd protocol version of a capsule whose image did not say (created before images said it).
ENVD_VERSION_UNKNOWN = "0.6.4"
#: E2B's default template is "base"; ours is "minimal".
ALIASES = {"base": "minimal"}
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 24 * 3600
#: The largest unix time a query takes (year 9999): beyond it, a 400 rather than an overflow.
UNIX_MAX = 253402300799
#: Paths this module answers: their errors are E2B's `{"code", "message"}`.
PREFIXES = (
    "/sandboxes", "/v2/sandboxes", "/snapshots", "/templates", "/v2/templates", "/v3/templates", "/events/",
)  # fmt: skip


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
    allowOut: list[str] | None = None
    denyOut: list[str] | None = None
    dnsServers: list[str] | None = None
    egressProxy: dict[str, Any] | None = None
    rules: dict[str, list[RuleBody]] | None = None


class AutoResume(BaseModel):
    enabled: bool = False


class NewSandbox(BaseModel):
    model_config = ConfigDict(extra="allow")  # mcp, volumeMounts, ...: accepted, not acted on
    templateID: str = Field(default="base", min_length=1, max_length=128)
    timeout: int = Field(default=DEFAULT_TIMEOUT_S, ge=0, le=MAX_TIMEOUT_S)
    autoPause: bool = False
    #: Traffic to the sandbox while it is paused resumes it (E2B's default: off).
    autoResume: AutoResume | None = None
    #: False: the timeout's pause keeps the disk only (not served yet: refused).
    autoPauseMemory: bool | None = None
    secure: bool = True
    allow_internet_access: bool = True
    network: Network | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    envVars: dict[str, str] = Field(default_factory=dict)


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    #: False: keep the disk only and reboot on resume (not served yet: refused).
    memory: bool = True
    requireHealthyGuest: bool = False


class Timeout(BaseModel):
    timeout: int = Field(ge=0, le=MAX_TIMEOUT_S)


class OptionalTimeout(BaseModel):
    model_config = ConfigDict(extra="allow")
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_S)
    autoPause: bool | None = None
    #: False: resume by a reboot from the disk (not served yet: refused).
    memory: bool | None = None


class Refresh(BaseModel):
    duration: int = Field(default=DEFAULT_TIMEOUT_S, ge=0, le=MAX_TIMEOUT_S)


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, pattern=TEMPLATE_NAME)


class ForkBody(BaseModel):
    count: int = Field(default=1, ge=1, le=20)
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_S)


# E2B's filesystem-only pause and reboot resume (`memory: false`), which Wrenn does not do yet.
def _no_filesystem_pause() -> _errors.ApiError:
    return _errors.ApiError(
        400,
        "filesystem_pause_unsupported",
        "a filesystem-only pause or a reboot resume (memory: false) is not supported by this server yet: "
        "pause and resume keep memory (on_resume='restore', the default)",
    )


# --- what the SDK reads back -----------------------------------------------------------------------


def _iso(value: datetime | None) -> str:
    return rfc3339(value or utcnow())


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
        "startedAt": _iso(listing.started(c)),
        "endAt": _iso(c.end_at or (c.started_at or c.created_at) + timedelta(days=3650)),
        "cpuCount": c.vcpus,
        "memoryMB": c.memory_mb,
        "diskSizeMB": c.disk_size_mb,
        "metadata": dict(c.labels or {}),
        "state": listing.state_of(c),
        "envdVersion": _envd_version(c),
    }


def _detail(c: Capsule) -> dict[str, Any]:
    """E2B's `SandboxDetail`."""
    return {
        **_listed(c),
        "envdAccessToken": c.envd_token,
        "domain": None,
        "allowInternetAccess": NetworkSpec.of_capsule(c).allow_internet_access,
        "network": NetworkSpec.of_capsule(c).e2b(),
        "lifecycle": {"autoResume": c.auto_resume, "onTimeout": c.on_timeout},
        "pauseMode": "full",
    }


# --- helpers --------------------------------------------------------------------------------------


async def _find(capsules: Capsules, caller: Principal, sandbox_id: str, *, killed: bool = False) -> Capsule:
    """The team's live capsule (or, with `killed`, one destroyed too: its metrics outlive it); 404 (E2B's
    "sandbox not found") for anything else."""
    capsule = await capsules.session.get(Capsule, sandbox_id)
    wanted = (*states.VISIBLE, S.MISSING, S.STOPPED) if killed else (*states.VISIBLE, S.MISSING)
    if capsule is None or capsule.team_id != caller.team_id or capsule.status not in wanted:
        raise _errors.ApiError(404, "sandbox_not_found", f"sandbox {sandbox_id} not found")
    return capsule


def _deadline(seconds: int | None) -> datetime | None:
    return utcnow() + timedelta(seconds=seconds) if seconds else None


def _network(body: NewSandbox) -> NetworkSpec | None:
    """The egress policy of a create: `network`'s lists and rules with `allow_internet_access`."""
    n = body.network
    if n is None or not ({"allowOut", "denyOut", "dnsServers", "egressProxy", "rules"} & n.model_fields_set):
        return None if body.allow_internet_access else from_e2b(None, None, None, None, False)
    return from_e2b(n.allowOut, n.denyOut, n.dnsServers, n.rules, body.allow_internet_access, n.egressProxy)


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
    if body.autoPauseMemory is False:
        raise _no_filesystem_pause()
    spec = CreateSpec(
        template=template,
        timeout_sec=0,  # the lifetime deadline below replaces the idle timeout
        allow_public_traffic=body.network.allowPublicTraffic if body.network else True,
        envs=body.envVars,
        labels=body.metadata,
        end_at=_deadline(body.timeout),
        on_timeout="pause" if body.autoPause else "kill",
        auto_resume=bool(body.autoResume and body.autoResume.enabled),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        network=_network(body),
    )
    try:
        (capsule,) = await capsules.create(caller, spec)
    except _errors.ApiError as exc:
        if exc.code == "not_found":
            raise _errors.ApiError(
                404, "template_not_found", f"template {body.templateID!r} not found"
            ) from None
        raise
    ignored = _ignored(body)
    headers = {"Warning": f'299 wrenn "ignored: {", ".join(ignored)}"'} if ignored else {}
    return JSONResponse(_sandbox(capsule, body.templateID), status_code=201, headers=headers)


def _ignored(body: NewSandbox) -> list[str]:
    """The create's fields that Wrenn accepts without acting on them (docs/e2b.md lists them)."""
    found = [k for k, v in (body.model_extra or {}).items() if v not in (None, [], {}, "")]
    if body.network is not None:
        found += [
            f"network.{k}" for k, v in (body.network.model_extra or {}).items() if v not in (None, [], {})
        ]
    if not body.secure:
        found.append("secure")
    return sorted(found)


def _query(
    metadata: str | None,
    state: str | None,
    started_after: str | None = None,
    template: str | None = None,
    order: str = "asc",
) -> listing.SandboxQuery:
    """E2B's list parameters as a query: `state` comma-joined, `metadata` its double-encoded `k=v`
    pairs, `startedAfter` RFC 3339 with an offset, `template` names (comma-joined), `order` asc or desc."""
    wanted = frozenset(s.strip() for s in (state or "running,paused").split(",") if s.strip())
    if wanted - {"running", "paused"}:
        raise _errors.bad_request(f"state: running and/or paused, not {state!r}")
    labels = {unquote(k): unquote(v) for k, v in parse_qsl(metadata or "", keep_blank_values=True)}
    after = None
    if started_after:
        try:
            after = datetime.fromisoformat(started_after.replace("Z", "+00:00"))
        except ValueError:
            raise _errors.bad_request("startedAfter: an RFC 3339 time, e.g. 2026-01-02T03:04:05Z") from None
        if after.tzinfo is None:
            raise _errors.bad_request("startedAfter: give its offset (Z or +hh:mm)")
    names = frozenset(ALIASES.get(t.strip(), t.strip()) for t in (template or "").split(",") if t.strip())
    if order not in ("asc", "desc"):
        raise _errors.bad_request(f"order: asc or desc, not {order!r}")
    return listing.SandboxQuery(wanted, labels, after, names, order == "desc")


@router.get("/v2/sandboxes")
async def list_sandboxes_v2(
    caller: Caller,
    capsules: Capsules,
    metadata: str | None = None,
    state: str | None = None,
    startedAfter: str | None = None,
    template: str | None = None,
    order: str = "asc",
    limit: int = Query(default=100, ge=1, le=1000),
    nextToken: str | None = None,
) -> JSONResponse:
    """`Sandbox.list`: filtered by `state`, `metadata`, `startedAfter` and `template`, in start-time
    `order`, paged by `nextToken` / the `x-next-token` header (stable: see `service.listing`)."""
    query = _query(metadata, state, startedAfter, template, order)
    found = await listing.sandboxes(capsules.session, caller.team_id, query)
    chosen, token = listing.page(found, limit, nextToken, listing.sandbox_key, query.descending)
    return JSONResponse([_listed(c) for c in chosen], headers={"x-next-token": token} if token else {})


@router.get("/sandboxes")
async def list_sandboxes(
    caller: Caller, capsules: Capsules, metadata: str | None = None
) -> list[dict[str, Any]]:
    """The v1 list: every running sandbox of the team."""
    return [
        _listed(c)
        for c in await listing.sandboxes(capsules.session, caller.team_id, _query(metadata, "running"))
    ]


@router.get("/sandboxes/metrics")  # before /sandboxes/{sandbox_id}, which it would match
async def sandboxes_metrics(
    caller: Caller, capsules: Capsules, sandbox_ids: str = Query(min_length=1, max_length=4000)
) -> dict[str, Any]:
    """The newest sample of each of the team's sandboxes named (comma-joined, at most 100), running, paused
    or killed: `{"sandboxes": {id: SandboxMetric}}`; an unknown id, or one never sampled, is left out."""
    ids = list(dict.fromkeys(i.strip() for i in sandbox_ids.split(",") if i.strip()))
    if len(ids) > 100:
        raise _errors.bad_request("sandbox_ids: at most 100")
    found: dict[str, Any] = {}
    for sandbox_id in ids:
        try:
            capsule = await _find(capsules, caller, sandbox_id, killed=True)
            # the newest stored sample, and the host's of the last 5 minutes while it runs (one call)
            since = await latest_sample(capsules.session, capsule.id) or 0
            samples = await guest_history(capsules.session, capsules.agents, capsule, since, "5m")
        except _errors.ApiError as exc:
            if exc.status in (404, 503):  # not the team's, or its host is away: nothing to show
                continue
            raise
        if samples:
            found[sandbox_id] = _metric(capsule, samples[-1])
    return {"sandboxes": found}


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
async def pause_sandbox(
    sandbox_id: str, caller: Caller, capsules: Capsules, body: PauseBody | None = None
) -> Response:
    """A full pause (memory and disk); `requireHealthyGuest` always holds here (the host's pause asks
    envd to prepare first, and a guest that cannot be paused is answered 503, left running)."""
    if body is not None and not body.memory:
        raise _no_filesystem_pause()
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
    if body is not None and body.memory is False:
        raise _no_filesystem_pause()
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


def _metric(c: Capsule, point: dict[str, Any]) -> dict[str, Any]:
    """E2B's `SandboxMetric` of one sample."""
    return {
        "timestamp": _iso(datetime.fromtimestamp(point["t"], UTC)),
        "timestampUnix": point["t"],
        "cpuCount": c.vcpus,
        "cpuUsedPct": point["cpu_pct"],
        "memUsed": point["mem_bytes"],
        "memTotal": c.memory_mb << 20,
        "memCache": 0,
        "diskUsed": point["disk_bytes"],
        "diskTotal": c.disk_size_mb << 20,
    }


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str,
    caller: Caller,
    capsules: Capsules,
    start: Annotated[int | None, Query(ge=0, le=UNIX_MAX)] = None,
    end: Annotated[int | None, Query(ge=0, le=UNIX_MAX)] = None,
) -> list[dict[str, Any]]:
    """CPU, memory and disk samples between `start` and `end` (unix seconds), running or paused: a paused
    sandbox's are those copied to the database before it was paused; a killed one's, before it was."""
    capsule = await _find(capsules, caller, sandbox_id, killed=True)
    return [
        _metric(capsule, p)
        for p in await guest_history(capsules.session, capsules.agents, capsule, start or 0)
        if end is None or p["t"] <= end
    ]


@router.get("/sandboxes/{sandbox_id}/logs")
async def sandbox_logs(
    sandbox_id: str,
    caller: Caller,
    capsules: Capsules,
    start: int | None = Query(default=None, ge=0),
    limit: int = Query(default=1000, ge=1, le=10000),
) -> dict[str, Any]:
    """The guest's console (kernel, init, envd, processes started and ended) from `start` (unix ms)."""
    capsule = await _find(capsules, caller, sandbox_id)
    chosen = logs.page(await logs.entries(capsules, capsule), limit, start)
    entries = [logs.as_e2b(e) for e in chosen]
    return {
        "logs": [{"timestamp": e["timestamp"], "line": e["message"]} for e in entries],
        "logEntries": entries,
    }


@router.get("/v2/sandboxes/{sandbox_id}/logs")
async def sandbox_logs_v2(
    sandbox_id: str,
    caller: Caller,
    capsules: Capsules,
    cursor: int | None = Query(default=None, ge=0),
    limit: int = Query(default=1000, ge=1, le=10000),
    direction: Literal["forward", "backward"] = "forward",
    level: Literal["debug", "info", "warn", "error"] | None = None,
    search: str | None = Query(default=None, max_length=256),
) -> dict[str, Any]:
    """E2B's paged logs: `forward` from `cursor` (unix ms) oldest first, `backward` up to it newest first."""
    capsule = await _find(capsules, caller, sandbox_id)
    found = await logs.entries(capsules, capsule)
    chosen = logs.page(found, limit, cursor, direction == "backward", level, search)
    return {"logs": [logs.as_e2b(e) for e in chosen]}


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
async def list_snapshots(
    caller: Caller,
    templates: Templates,
    sandboxID: str | None = None,
    name: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    nextToken: str | None = None,
) -> JSONResponse:
    """`Sandbox.list_snapshots`: the team's templates, only those made from `sandboxID` or called `name`,
    paged as the sandbox list is."""
    if name:  # E2B's names may carry a namespace and a tag: `team/name:tag`
        name = name.rsplit("/", 1)[-1].split(":", 1)[0]
    found = await listing.templates(templates.session, caller.team_id, name, sandboxID)
    chosen, token = listing.page(found, limit, nextToken, listing.template_key)
    body = [{"snapshotID": t.name, "names": [t.name]} for t in chosen]
    return JSONResponse(body, headers={"x-next-token": token} if token else {})


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(template_id: str, caller: Caller, templates: Templates) -> Response:
    await templates.delete(caller, template_id)
    return Response(status_code=204)
