"""A sandbox's egress policy and the decisions it makes, with E2B's semantics (shared: the agent applies it,
the control plane validates what callers send with the same parser).

* `allow_out`: CIDRs, IPs, domains and `*.domain` wildcards; `deny_out`: CIDRs and IPs. Allow beats
  deny; with neither, everything is allowed. Always-blocked ranges (`BLOCKED_NETWORKS` and the host's
  own addresses) are refused whatever the lists say: that is the firewall's job, and the egress proxy
  checks it again on every address it dials.
* Domains are matched by name on port 80 (the HTTP `Host` header) and 443 (the TLS SNI), in the egress
  proxy; everything else, and a connection whose name matches no domain, is decided by address.
* `rules`: per-domain headers the proxy sets on matching HTTPS requests (TLS interception with the
  sandbox's own CA). A rule does not allow anything by itself: the domain must be allowed too.

This module knows no kernel and no socket: it parses and decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Ports whose connections go through the egress proxy when the policy has names to match.
HTTP_PORT = 80
HTTPS_PORT = 443
SMTP_PORT = 25

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}$")
#: HTTP header names (RFC 9110 tokens) and values a rule may set (no control characters).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]{0,8192}$")
#: Headers a rule may never set: they would change how the request is framed or routed.
_FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)

MAX_ENTRIES = 256
MAX_RULE_DOMAINS = 64
MAX_HEADERS = 16


class PolicyError(ValueError):
    """A policy that cannot be applied (a bad entry); the message names it."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Headers set on every HTTPS request to `domain` (exact or `*.` wildcard)."""

    domain: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    allow_networks: tuple[ipaddress.IPv4Network, ...] = ()
    #: Exact names and wildcard suffixes (`*.example.com` is kept as `.example.com`).
    allow_names: frozenset[str] = frozenset()
    allow_suffixes: tuple[str, ...] = ()
    deny_networks: tuple[ipaddress.IPv4Network, ...] = ()
    #: Resolvers the guest may reach on port 53 when the policy names domains.
    dns_servers: tuple[ipaddress.IPv4Address, ...] = ()
    allow_smtp: bool = False
    #: Bits per second the guest may send out; 0: unlimited.
    egress_bps: int = 0
    rules: tuple[Rule, ...] = ()
    #: The sandbox's CA (PEM), for intercepting the HTTPS of `rules`; both empty when there are none.
    ca_cert_pem: bytes = field(default=b"", repr=False)
    ca_key_pem: bytes = field(default=b"", repr=False)

    @property
    def has_names(self) -> bool:
        return bool(self.allow_names or self.allow_suffixes)

    @property
    def needs_proxy(self) -> bool:
        """Whether ports 80 and 443 must go through the egress proxy (names to match or headers to set)."""
        return self.has_names or bool(self.rules)

    @property
    def intercepts(self) -> bool:
        return bool(self.rules) and bool(self.ca_cert_pem) and bool(self.ca_key_pem)

    def allows_address(self, address: ipaddress.IPv4Address) -> bool:
        """The address rule alone (not the always-blocked ranges): allow beats deny, default allow."""
        if any(address in n for n in self.allow_networks):
            return True
        return not any(address in n for n in self.deny_networks)

    def allows_name(self, name: str) -> bool:
        name = normalize_name(name)
        return name in self.allow_names or any(name.endswith(s) for s in self.allow_suffixes)

    def rule_for(self, name: str) -> Rule | None:
        """The rule whose domain matches `name` (an exact domain before a wildcard), or None."""
        name = normalize_name(name)
        for rule in self.rules:
            if rule.domain == name:
                return rule
        for rule in self.rules:
            if rule.domain.startswith("*.") and name.endswith(rule.domain[1:]):
                return rule
        return None

    def describe(self) -> dict[str, object]:
        """The policy without its secrets (header values, the CA's key), for logs and state files."""
        return {
            "allow_out": [str(n) for n in self.allow_networks]
            + sorted(self.allow_names)
            + ["*" + s for s in self.allow_suffixes],
            "deny_out": [str(n) for n in self.deny_networks],
            "dns_servers": [str(a) for a in self.dns_servers],
            "allow_smtp": self.allow_smtp,
            "egress_bps": self.egress_bps,
            "rules": {r.domain: [name for name, _ in r.headers] for r in self.rules},
        }


OPEN = EgressPolicy()
#: `allow_internet=false`: E2B's `allow_internet_access: false`, `denyOut: ["0.0.0.0/0"]`.
CLOSED = EgressPolicy(deny_networks=(ipaddress.IPv4Network("0.0.0.0/0"),))


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _network(entry: str, field_name: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise PolicyError(f"{field_name}: {entry[:100]!r} is not an IPv4 address or CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise PolicyError(f"{field_name}: {entry[:100]!r} is IPv6; sandboxes have no IPv6 at all")
    return net


def parse(
    allow_out: Iterable[str] = (),
    deny_out: Iterable[str] = (),
    *,
    dns_servers: Iterable[str] = (),
    allow_smtp: bool = False,
    egress_bps: int = 0,
    rules: Mapping[str, Mapping[str, str]] | None = None,
    ca_cert_pem: bytes = b"",
    ca_key_pem: bytes = b"",
) -> EgressPolicy:
    """An `EgressPolicy` from the wire's strings; `PolicyError` names the first bad entry."""
    allow, deny = list(allow_out), list(deny_out)
    if len(allow) > MAX_ENTRIES or len(deny) > MAX_ENTRIES:
        raise PolicyError(f"allow_out and deny_out take at most {MAX_ENTRIES} entries each")
    networks: list[ipaddress.IPv4Network] = []
    names: set[str] = set()
    suffixes: list[str] = []
    for raw in allow:
        entry = raw.strip()
        if _looks_like_address(entry):
            networks.append(_network(entry, "allow_out"))
            continue
        name = normalize_name(entry)
        if not _DOMAIN.match(name) or len(name) > 253:
            raise PolicyError(f"allow_out: {raw[:100]!r} is not a CIDR, an IP, a domain or a *.domain")
        if name.startswith("*."):
            suffixes.append(name[1:])
        else:
            names.add(name)
    denied = [_network(entry.strip(), "deny_out") for entry in deny]
    resolvers = []
    for server in dns_servers:
        try:
            resolvers.append(ipaddress.IPv4Address(server.strip()))
        except ValueError:
            raise PolicyError(f"dns_servers: {server[:100]!r} is not an IPv4 address") from None
    if egress_bps < 0:
        raise PolicyError("the egress bandwidth limit must be positive (or 0: none)")
    return EgressPolicy(
        allow_networks=tuple(_collapse(networks)),
        allow_names=frozenset(names),
        allow_suffixes=tuple(sorted(set(suffixes))),
        deny_networks=tuple(_collapse(denied)),
        dns_servers=tuple(dict.fromkeys(resolvers)),
        allow_smtp=allow_smtp,
        egress_bps=egress_bps,
        rules=_rules(rules or {}),
        ca_cert_pem=ca_cert_pem,
        ca_key_pem=ca_key_pem,
    )


def _looks_like_address(entry: str) -> bool:
    return bool(entry) and (":" in entry or entry.replace(".", "").replace("/", "").isdigit())


def _collapse(networks: list[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    """Merged and without overlaps (nft refuses overlapping elements in an interval set)."""
    return list(ipaddress.collapse_addresses(networks))


def _rules(rules: Mapping[str, Mapping[str, str]]) -> tuple[Rule, ...]:
    if len(rules) > MAX_RULE_DOMAINS:
        raise PolicyError(f"rules take at most {MAX_RULE_DOMAINS} domains")
    out = []
    for domain, headers in rules.items():
        name = normalize_name(domain)
        if not _DOMAIN.match(name):
            raise PolicyError(f"rules: {domain[:100]!r} is not a domain or a *.domain")
        if len(headers) > MAX_HEADERS:
            raise PolicyError(f"rules: {name}: at most {MAX_HEADERS} headers")
        pairs = []
        for key, value in headers.items():
            if not _HEADER_NAME.match(key) or key.lower() in _FRAMING:
                raise PolicyError(f"rules: {name}: {key[:100]!r} is not a header a rule may set")
            if not _HEADER_VALUE.match(value):
                raise PolicyError(f"rules: {name}: the value of {key!r} has control characters")
            pairs.append((key, value))
        out.append(Rule(domain=name, headers=tuple(pairs)))
    return tuple(out)
