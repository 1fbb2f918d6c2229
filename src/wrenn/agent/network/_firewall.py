"""nftables rulesets, as `nft -f -` text. Each ruleset is built by one function and loaded as a whole
table replacement (`add table; delete table; table {...}` in one transaction), so loading is atomic and
idempotent, and changing a sandbox's internet access is just loading its ruleset again.

Two rulesets:

* `host_ruleset`, table `inet {prefix}` in the root namespace, once per host: sandboxes may not open
  connections to the host itself (input), to each other, and nobody but the host may open connections
  into a sandbox (forward); of the host's own processes only root's reach a sandbox (output: a local
  unprivileged user cannot talk to any guest's envd); guest traffic leaving for the outside world is
  masqueraded.
* `sandbox_ruleset`, table `inet {prefix}` inside each sandbox's netns: DNAT `host_ip` -> guest and SNAT
  of that traffic to the netns's tap0 address (the guest's gateway: whatever slot a guest runs in, the
  host has one address for it, which is what envd answers before it has a token), SNAT of the guest's
  traffic to the netns's veth address, and the guest's egress policy (no private, link-local, loopback,
  multicast or host addresses ever; everything else only when internet is allowed).

Both layers block on their own: a hole in one is still covered by the other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable

from ._addresses import NetworkConfig, NetworkError, SandboxNetwork
from ._egress_rules import egress_rules, refuse
from ._policy import CLOSED, OPEN, EgressPolicy

log = logging.getLogger("wrenn.agent.network")

#: Destinations a guest may never reach, whatever its internet setting.
BLOCKED_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)


def _replace_table(family: str, name: str, body: str) -> str:
    return f"add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"


def host_ruleset(config: NetworkConfig) -> str:
    ours = f'"{config.link_glob}"'
    body = f"""\
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname {ours} ct state established,related accept
    iifname {ours} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {ours} oifname {ours} drop
    oifname {ours} ct state established,related accept
    oifname {ours} drop
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname {ours} meta skuid != 0 reject
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {config.veth_net} oifname != {ours} masquerade
  }}
"""
    return _replace_table("inet", config.prefix, body)


def blocked_elements(host_addresses: Iterable[ipaddress.IPv4Address]) -> list[str]:
    """`BLOCKED_NETWORKS` plus the host's own addresses not already inside them (nft rejects overlaps)."""
    extra = sorted({a for a in host_addresses if not any(a in n for n in BLOCKED_NETWORKS)})
    return [str(n) for n in BLOCKED_NETWORKS] + [str(a) for a in extra]


def sandbox_ruleset(
    net: SandboxNetwork,
    prefix: str,
    *,
    allow_internet: bool = True,
    host_addresses: Iterable[ipaddress.IPv4Address],
    policy: EgressPolicy | None = None,
) -> str:
    """The sandbox's table. `policy` (see `_egress_rules`) replaces the older on/off `allow_internet`."""
    tap, veth, guest = f'"{net.tap}"', f'"{net.ns_veth}"', net.guest_ip
    if policy is None:
        policy = OPEN if allow_internet else CLOSED
    dns = [ipaddress.IPv4Address(a) for a in net.dns]
    egress = egress_rules(policy, tap, veth, dns)
    body = f"""\
  set blocked {{
    type ipv4_addr; flags interval;
    elements = {{ {", ".join(blocked_elements(host_addresses))} }}
  }}
{egress.sets}  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname {veth} ip daddr {net.host_ip} dnat ip to {guest}
{egress.prerouting}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname {tap} ct status dnat snat ip to {net.gateway}
    oifname {veth} ip saddr {guest} snat ip to {net.veth_ns_ip}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname {tap} ct state established,related accept
    iifname {tap} ct status dnat accept comment "redirected to the egress proxy"
{refuse(f"iifname {tap}", "the netns itself")}  }}
  chain output {{
    type filter hook output priority filter; policy accept;
{egress.output}  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {veth} oifname {tap} ct status dnat accept comment "host to guest via host_ip"
    iifname {veth} oifname {tap} ct direction reply accept
    oifname {tap} drop
    iifname {tap} meta nfproto != ipv4 drop
    iifname {tap} ip saddr != {guest} drop
    iifname {tap} ct state invalid drop
    iifname {tap} ct direction reply accept comment "guest answering the host"
{refuse(f"iifname {tap} ip daddr @blocked", "always blocked")}{egress.forward}    iifname {tap} drop
  }}
"""
    return _replace_table("inet", prefix, body)


def delete_table_script(prefix: str) -> str:
    return f"add table inet {prefix}\ndelete table inet {prefix}\n"


async def load(script: str, *, netns: str | None = None) -> None:
    """Run `nft -f -` (inside `netns` when given) with `script`."""
    argv = ["nft", "-f", "-"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    await run(argv, stdin=script)


async def run(argv: list[str], *, stdin: str | None = None, quiet: bool = False) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise NetworkError(f"{argv[0]} is not installed (Debian: apt-get install nftables iproute2)") from exc
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        if not quiet:
            log.error(
                "command failed",
                extra={
                    "argv": " ".join(argv),
                    "rc": proc.returncode,
                    "stderr": err.decode(errors="replace")[-2000:],
                },
            )
        raise NetworkError(
            f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}"
        )
    return out.decode()
