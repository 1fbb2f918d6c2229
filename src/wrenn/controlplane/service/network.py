"""Capsules' egress policies: what callers may ask for (E2B's names and ours), how a policy is kept (its
public part as JSON, its secrets sealed, each capsule's own egress CA), what the host agent is sent at
create, resume, thaw and on a live update, and what is shown back (never a secret).

One policy, two spellings: `/v1` says `allow_out`, `deny_out`, `dns_servers`, E2B says `allowOut`,
`denyOut`, `dnsServers`; both say `allow_internet_access` and `rules` (E2B's shape:
`{"api.example.com": [{"transform": {"headers": {"Authorization": "Bearer ..."}}}]}`). A rule's header
values are secrets: sealed in the database, sent to the agent (which keeps them in memory), shown back
as `"***"`. See docs/network.md.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

from wrenn._shared.egress import PolicyError, parse
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool
from .._principal import Principal, audit_fields
from ..db import Capsule, Template
from ..db import CapsuleStatus as S

if TYPE_CHECKING:
    from .capsules import CapsuleService

log = logging.getLogger("wrenn.controlplane")

#: What a rule's header value is shown as.
REDACTED = "***"
MAX_BANDWIDTH_KBPS = 100_000_000


class Transform(BaseModel):
    model_config = ConfigDict(extra="forbid")
    headers: dict[str, str] = Field(default_factory=dict)


class RuleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transform: Transform | None = None


class NetworkBody(BaseModel):
    """`/v1`'s policy: in a capsule's create, and `PATCH /v1/capsules/{id}/network` (fields left out
    keep their value there)."""

    model_config = ConfigDict(extra="forbid")
    allow_out: list[str] | None = Field(default=None, max_length=256)
    deny_out: list[str] | None = Field(default=None, max_length=256)
    #: Resolvers the guest may reach when allow_out names domains; null: the host's.
    dns_servers: list[str] | None = Field(default=None, max_length=10)
    allow_internet_access: bool | None = None
    allow_smtp: bool | None = None
    #: The guest's outbound bandwidth, in kbit/s; 0: unlimited.
    egress_bandwidth_kbps: int | None = Field(default=None, ge=0, le=MAX_BANDWIDTH_KBPS)
    rules: dict[str, list[RuleBody]] | None = Field(default=None, max_length=64)


class E2BNetworkUpdate(BaseModel):
    """E2B's `PUT /sandboxes/{id}/network` body (it replaces the whole policy)."""

    model_config = ConfigDict(extra="forbid")
    allowOut: list[str] | None = Field(default=None, max_length=256)
    denyOut: list[str] | None = Field(default=None, max_length=256)
    dnsServers: list[str] | None = Field(default=None, max_length=10)
    egressProxy: dict[str, Any] | None = None
    rules: dict[str, list[RuleBody]] | None = Field(default=None, max_length=64)
    allow_internet_access: bool | None = None


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A capsule's policy, secrets included."""

    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] | None = None
    allow_internet_access: bool = True
    allow_smtp: bool = False
    egress_bandwidth_kbps: int = 0
    #: {domain: {header: value}}
    rules: dict[str, dict[str, str]] = field(default_factory=dict)

    def check(self) -> NetworkSpec:
        """The spec, if the agent will take it; 400 naming the bad entry otherwise."""
        try:
            parse(
                self.allow_out, self.deny_out, dns_servers=self.dns_servers or (), rules=self.rules,
                egress_bps=self.egress_bandwidth_kbps * 1000,
            )  # fmt: skip
        except PolicyError as exc:
            raise _errors.bad_request(f"network: {exc}") from None
        return self

    def public(self) -> dict[str, Any]:
        """What is stored in the clear and shown: header names only."""
        return {
            "allow_out": list(self.allow_out),
            "deny_out": list(self.deny_out),
            "dns_servers": list(self.dns_servers) if self.dns_servers is not None else None,
            "allow_internet_access": self.allow_internet_access,
            "allow_smtp": self.allow_smtp,
            "egress_bandwidth_kbps": self.egress_bandwidth_kbps,
            "rules": {domain: sorted(headers) for domain, headers in self.rules.items()},
        }

    def secrets(self) -> str:
        return json.dumps(self.rules, sort_keys=True) if self.rules else ""

    @classmethod
    def stored(cls, public: dict[str, Any] | None, secrets: str) -> NetworkSpec:
        public = public or {}
        dns = public.get("dns_servers")
        return cls(
            allow_out=tuple(public.get("allow_out") or ()),
            deny_out=tuple(public.get("deny_out") or ()),
            dns_servers=tuple(dns) if dns is not None else None,
            allow_internet_access=bool(public.get("allow_internet_access", True)),
            allow_smtp=bool(public.get("allow_smtp", False)),
            egress_bandwidth_kbps=int(public.get("egress_bandwidth_kbps") or 0),
            rules=dict(json.loads(secrets)) if secrets else {},
        )

    @classmethod
    def of_capsule(cls, capsule: Capsule) -> NetworkSpec:
        return cls.stored(capsule.network, capsule.network_secrets)

    @classmethod
    def of_template(cls, template: Template) -> NetworkSpec | None:
        return cls.stored(template.network, template.network_secrets) if template.network else None

    def to_proto(self, ca_cert: str = "", ca_key: str = "") -> pb.NetworkPolicy:
        deny = list(self.deny_out) + ([] if self.allow_internet_access else ["0.0.0.0/0"])
        return pb.NetworkPolicy(
            allow_out=list(self.allow_out),
            deny_out=deny,
            dns_servers=list(self.dns_servers or ()),
            allow_smtp=self.allow_smtp,
            egress_bps=self.egress_bandwidth_kbps * 1000,
            rules=[pb.EgressRule(domain=d, headers=dict(h)) for d, h in self.rules.items()],
            ca_cert_pem=ca_cert.encode() if self.rules else b"",
            ca_key_pem=ca_key.encode() if self.rules else b"",
        )

    def e2b(self) -> dict[str, Any]:
        """E2B's `network` of a sandbox's detail (header values redacted)."""
        out: dict[str, Any] = {"allowOut": list(self.allow_out), "denyOut": list(self.deny_out)}
        if self.dns_servers is not None:
            out["dnsServers"] = list(self.dns_servers)
        if self.rules:
            out["rules"] = {
                d: [{"transform": {"headers": dict.fromkeys(h, REDACTED)}}] for d, h in self.rules.items()
            }
        return out


def _rules(rules: dict[str, list[RuleBody]] | None) -> dict[str, dict[str, str]]:
    """E2B's rule lists as one header map per domain (later rules of a domain override earlier ones)."""
    out: dict[str, dict[str, str]] = {}
    for domain, items in (rules or {}).items():
        headers: dict[str, str] = {}
        for item in items:
            headers.update(item.transform.headers if item.transform else {})
        out[domain] = headers
    return out


def _kept(rules: dict[str, dict[str, str]], base: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """`rules` with each `"***"` value replaced by the one `base` holds for the same domain and header
    (so a client that cannot read the secrets, the dashboard, can replace the rules of one domain and
    keep the others'). A secret stays with its domain and name: `"***"` for one `base` has not is 400."""
    out: dict[str, dict[str, str]] = {}
    for domain, headers in rules.items():
        stored = base.get(domain, {})
        out[domain] = {}
        for name, value in headers.items():
            if value == REDACTED:
                if name not in stored:
                    raise _errors.bad_request(f"network.rules: {domain} has no {name} header to keep")
                value = stored[name]
            out[domain][name] = value
    return out


def from_v1(body: NetworkBody, base: NetworkSpec | None = None) -> NetworkSpec:
    """A `/v1` body over `base` (the fields it leaves out keep their value; a rule's header value
    `"***"` keeps the one stored for that domain and header)."""
    base = base or NetworkSpec()
    given = body.model_fields_set
    return NetworkSpec(
        allow_out=tuple(body.allow_out or ()) if "allow_out" in given else base.allow_out,
        deny_out=tuple(body.deny_out or ()) if "deny_out" in given else base.deny_out,
        dns_servers=(
            (tuple(body.dns_servers) if body.dns_servers is not None else None)
            if "dns_servers" in given
            else base.dns_servers
        ),
        allow_internet_access=(
            body.allow_internet_access
            if "allow_internet_access" in given and body.allow_internet_access is not None
            else base.allow_internet_access
        ),
        allow_smtp=body.allow_smtp if body.allow_smtp is not None else base.allow_smtp,
        egress_bandwidth_kbps=(
            body.egress_bandwidth_kbps
            if body.egress_bandwidth_kbps is not None
            else base.egress_bandwidth_kbps
        ),
        rules=_kept(_rules(body.rules), base.rules) if "rules" in given else base.rules,
    ).check()


def from_e2b(
    allow_out: list[str] | None,
    deny_out: list[str] | None,
    dns_servers: list[str] | None,
    rules: dict[str, list[RuleBody]] | None,
    allow_internet_access: bool | None,
    egress_proxy: dict[str, Any] | None = None,
) -> NetworkSpec:
    """E2B's fields (a create's `network` with `allow_internet_access`, or a whole update)."""
    if egress_proxy:
        raise _errors.bad_request(
            "network.egressProxy: Wrenn does not tunnel egress through a SOCKS5 proxy (unsupported)"
        )
    return NetworkSpec(
        allow_out=tuple(allow_out or ()),
        deny_out=tuple(deny_out or ()),
        dns_servers=tuple(dns_servers) if dns_servers is not None else None,
        allow_internet_access=allow_internet_access is not False,
        rules=_rules(rules),
    ).check()


def new_ca(capsule_id: str) -> tuple[str, str]:
    """A capsule's own egress CA (certificate, key) in PEM: its guest trusts it for intercepted HTTPS."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Wrenn"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Wrenn egress CA of capsule {capsule_id}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=5 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def apply(capsule: Capsule, spec: NetworkSpec) -> None:
    """Store `spec` on the capsule (and give it its CA once it has header rules)."""
    capsule.network = spec.public()
    capsule.network_secrets = spec.secrets()
    if spec.rules and not capsule.egress_ca_cert:
        capsule.egress_ca_cert, capsule.egress_ca_key = new_ca(capsule.id)


def policy_of(capsule: Capsule) -> pb.NetworkPolicy:
    """What the capsule's host agent is sent (secrets included)."""
    return NetworkSpec.of_capsule(capsule).to_proto(capsule.egress_ca_cert, capsule.egress_ca_key)


class NetworkService:
    def __init__(self, capsules: CapsuleService) -> None:
        self.capsules = capsules
        self.session = capsules.session
        self.agents = capsules.agents

    async def replace(self, capsule: Capsule, spec: NetworkSpec, actor: Principal) -> None:
        """Make `spec` the capsule's policy: a running capsule's agent applies it first (a refusal
        leaves the old one in force and stored); a sleeping one gets it when it wakes."""
        if capsule.status in (S.STOPPED, S.ERROR):
            raise _errors.invalid_state(f"capsule {capsule.id} is {capsule.status}")
        previous = NetworkSpec.of_capsule(capsule)
        apply(capsule, spec)
        if capsule.status == S.RUNNING:
            host = await self.capsules.host_of(capsule)
            request = pb.UpdateNetworkPolicyRequest(sandbox_id=capsule.id, network=policy_of(capsule))
            try:
                await self.agents.call(
                    host.id, self.agents.client(host.address, host_id=host.id).update_network_policy(request)
                )
            except _errors.ApiError:
                apply(capsule, previous)
                await self.session.rollback()
                raise
        fields = audit_fields(actor)
        fields["team_id"] = capsule.team_id
        _audit.record(
            self.session, **fields, resource_type="capsule", resource_id=capsule.id, action="network",
            metadata={"network": spec.public()},
        )  # fmt: skip
        await self.session.commit()

    async def view(self, capsule: Capsule) -> dict[str, Any]:
        """The policy (no secrets) and, for a running capsule, what its egress proxy lately refused."""
        out: dict[str, Any] = {"capsule_id": capsule.id, **NetworkSpec.of_capsule(capsule).public()}
        out["events"], out["secrets_loaded"] = [], None  # known only from a running capsule's agent
        if capsule.status == S.RUNNING and capsule.host_id:
            host = await self.capsules.host_of(capsule)
            found = await self.agents.call(
                host.id,
                self.agents.client(host.address, host_id=host.id).get_sandbox_network(
                    pb.GetSandboxNetworkRequest(sandbox_id=capsule.id)
                ),
            )
            out["secrets_loaded"] = found.secrets_loaded
            out["events"] = [
                {
                    "at": datetime.datetime.fromtimestamp(
                        e.at.seconds + e.at.nanos / 1e9 if e.at else 0, datetime.UTC
                    ).isoformat(),
                    "action": e.action,
                    "destination": e.destination,
                    "port": e.port,
                    "name": e.name,
                    "reason": e.reason,
                }
                for e in found.events
            ]
        return out


async def resend_secrets(
    sessions: Callable[[], Any], agents: AgentPool, host_id: str, address: str, sandboxes: Iterable[Any]
) -> int:
    """Send their policies again to the running capsules whose agent lost the secrets (it restarted and
    adopted them); how many. The monitor calls it after each reconciliation."""
    running = pb.SandboxStatus.RUNNING
    missing = [s.sandbox_id for s in sandboxes if s.network_secrets_missing and s.status == running]
    sent = 0
    for capsule_id in missing:
        async with sessions() as session:
            capsule = await session.get(Capsule, capsule_id)
            if capsule is None or capsule.host_id != host_id or capsule.status != S.RUNNING:
                continue
            request = pb.UpdateNetworkPolicyRequest(sandbox_id=capsule.id, network=policy_of(capsule))
        try:
            await agents.call(host_id, agents.client(address, host_id=host_id).update_network_policy(request))
            sent += 1
        except _errors.ApiError as exc:
            extra = {"capsule": capsule_id, "error": exc.message}
            log.warning("cannot resend a capsule's network policy", extra=extra)
    if sent:
        log.info("network policies resent after an agent restart", extra={"host": host_id, "capsules": sent})
    return sent
