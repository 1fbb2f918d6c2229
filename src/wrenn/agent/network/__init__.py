"""Per-sandbox networking for microVMs.

Every sandbox gets a slot `n` and, in it, its own network namespace; the VMM runs inside that netns and
attaches to its TAP:

    root netns                                  netns {prefix}-ns-{n}                     guest
    {prefix}{n}h 10.12.0.{2n}/31  <--veth-->  veth0 10.12.0.{2n+1}/31
    route 10.11.0.{n}/32 via veth0             tap0 169.254.0.22/30  <--TAP-->  eth0 169.254.0.21/30
                                               DNAT 10.11.0.{n} -> 169.254.0.21
                                               SNAT 169.254.0.21 -> 10.12.0.{2n+1}

(`10.11.0.0 + n` and `10.12.0.0 + 2n` spill into the third octet for n > 255.) The host reaches the
guest at `host_ip` (envd on `host_ip:49983`). Every guest has the same address and MAC, so a snapshot
resumes in any slot. Isolation, in two independent layers (see `_firewall`): a guest cannot open
connections to the host, its netns, private/link-local/loopback/multicast ranges or another sandbox, and
reaches the internet only when allowed; nobody but the host can open connections to a guest.

Each sandbox has an egress policy (`EgressPolicy`, E2B's allow and deny lists, header rules): nftables
rules in its netns, and for names and headers the agent's egress proxy (`_egress`), which listens inside
the netns. See docs/network.md.

`NetworkManager.start()` must run once at agent start (host-wide rules, `ip_forward`), followed by
`cleanup_stale(keep=adopted_slots)`.
"""

from __future__ import annotations

from ._addresses import (
    ENVD_PORT,
    GATEWAY_IP,
    GUEST_IP,
    GUEST_MAC,
    NetworkConfig,
    NetworkError,
    NetworkExhausted,
    SandboxNetwork,
)
from ._egress import NetworkEvent
from ._firewall import BLOCKED_NETWORKS
from ._manager import NetworkManager
from ._netns import GuestLink
from ._policy import CLOSED, OPEN, EgressPolicy, PolicyError, Rule
from ._policy import parse as parse_policy
from ._slots import SlotAllocator

__all__ = [
    "BLOCKED_NETWORKS",
    "CLOSED",
    "ENVD_PORT",
    "GATEWAY_IP",
    "GUEST_IP",
    "GUEST_MAC",
    "OPEN",
    "EgressPolicy",
    "GuestLink",
    "NetworkConfig",
    "NetworkError",
    "NetworkEvent",
    "NetworkExhausted",
    "NetworkManager",
    "PolicyError",
    "Rule",
    "SandboxNetwork",
    "SlotAllocator",
    "parse_policy",
]
