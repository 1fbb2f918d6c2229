"""A sandbox's egress policy on this host: from the wire, into its network, and its CA into the guest.

The policy arrives with CreateSandbox, ResumeSandbox, ThawSandbox and UpdateNetworkPolicy. The agent
keeps it in memory; `state.json` keeps it without its secrets (header values, the CA's key), so after an
agent restart a sandbox's header rules are suspended until the control plane sends them again
(`secrets_loaded` false).

The CA goes into the guest once per CA, when a policy with header rules first reaches a running guest
(at create, on a template's or a ready snapshot's clone, or on a later update): its certificate is written
to `/usr/local/share/ca-certificates/wrenn-egress.crt` and appended, between markers, to the system bundle
`/etc/ssl/certs/ca-certificates.crt` (a previous Wrenn CA, one a template's guest inherited, is replaced),
through envd's file API; envd's default environment gets `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` (the
bundle) and `NODE_EXTRA_CA_CERTS` (the CA alone), so curl, OpenSSL, Python's ssl, requests/certifi and
Node trust it. No `update-ca-certificates` run: it takes seconds under emulation, and the bundle edit is
what it would produce for these programs.
"""

from __future__ import annotations

import hashlib
import logging

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._errors import SandboxError
from ._sandbox import Sandbox
from .network import CLOSED, OPEN, EgressPolicy, PolicyError, parse_policy

log = logging.getLogger("wrenn.agent")

CA_FILE = "/usr/local/share/ca-certificates/wrenn-egress.crt"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_BEGIN = b"# wrenn egress CA: begin\n"
_END = b"# wrenn egress CA: end\n"
CA_ENV = {"SSL_CERT_FILE": BUNDLE, "REQUESTS_CA_BUNDLE": BUNDLE, "NODE_EXTRA_CA_CERTS": CA_FILE}


def from_proto(message: pb.NetworkPolicy | None, allow_internet: bool = True) -> EgressPolicy:
    """The policy a request carries; without one, `allow_internet` alone (open, or everything denied)."""
    if message is None:
        return OPEN if allow_internet else CLOSED
    try:
        return parse_policy(
            message.allow_out,
            message.deny_out,
            dns_servers=message.dns_servers,
            allow_smtp=message.allow_smtp,
            egress_bps=message.egress_bps,
            rules={r.domain: dict(r.headers) for r in message.rules},
            ca_cert_pem=message.ca_cert_pem,
            ca_key_pem=message.ca_key_pem,
        )
    except PolicyError as exc:
        raise SandboxError("invalid_argument", f"network policy: {exc}") from None


def to_proto(policy: EgressPolicy) -> pb.NetworkPolicy:
    """The policy without its secrets: header names with empty values, the CA's certificate only."""
    described = policy.describe()
    return pb.NetworkPolicy(
        allow_out=described["allow_out"],  # type: ignore[arg-type]
        deny_out=described["deny_out"],  # type: ignore[arg-type]
        dns_servers=described["dns_servers"],  # type: ignore[arg-type]
        allow_smtp=policy.allow_smtp,
        egress_bps=policy.egress_bps,
        rules=[pb.EgressRule(domain=r.domain, headers={k: "" for k, _ in r.headers}) for r in policy.rules],
        ca_cert_pem=policy.ca_cert_pem,
    )


def from_state(state: dict[str, object]) -> tuple[EgressPolicy, bool]:
    """The policy `state.json` kept (no secrets), and whether it had header rules that are now missing."""
    allow, deny = state.get("allow_out") or [], state.get("deny_out") or []
    dns, bps = state.get("dns_servers") or [], state.get("egress_bps") or 0
    assert isinstance(allow, list) and isinstance(deny, list) and isinstance(dns, list)
    policy = parse_policy(
        [str(a) for a in allow], [str(d) for d in deny], dns_servers=[str(d) for d in dns],
        allow_smtp=bool(state.get("allow_smtp")), egress_bps=int(str(bps)),
    )  # fmt: skip
    return policy, bool(state.get("rules"))


def ca_digest(policy: EgressPolicy) -> str:
    return hashlib.sha256(policy.ca_cert_pem).hexdigest() if policy.ca_cert_pem else ""


async def install_ca(sandbox: Sandbox, default_user: str) -> None:
    """Make the running guest trust the policy's CA (once per CA; see the module's docstring)."""
    policy, envd = sandbox.policy, sandbox.envd
    digest = ca_digest(policy)
    if not policy.intercepts or sandbox.ca_installed == digest or envd is None:
        return
    bundle = b"".join([chunk async for chunk in envd.download(BUNDLE, user="root")])
    start, end = bundle.find(_BEGIN), bundle.find(_END)
    if start >= 0 and end > start:
        bundle = bundle[:start] + bundle[end + len(_END) :]
    if bundle and not bundle.endswith(b"\n"):
        bundle += b"\n"
    cert = policy.ca_cert_pem if policy.ca_cert_pem.endswith(b"\n") else policy.ca_cert_pem + b"\n"
    await envd.upload(CA_FILE, cert, user="root")
    await envd.upload(BUNDLE, bundle + _BEGIN + cert + _END, user="root")
    params = sandbox.params
    await envd.init(
        access_token=params.envd_access_token or None,
        default_user=params.default_user or default_user,
        env={**params.default_env, **CA_ENV},
    )
    sandbox.ca_installed = digest
    log.info("sandbox CA installed in the guest", extra={"sandbox": sandbox.id, "ca": digest[:16]})
