"""What an `EgressPolicy` becomes in a sandbox's netns: nftables rules (loaded with the rest of the
sandbox's table, so a policy change is one atomic table replacement) and a traffic-control qdisc.

In the netns's forward chain, after the always-blocked set (refused), for what the guest starts:

    tcp dport 25                      refused, unless the policy allows SMTP
    ip daddr <dns servers> port 53    accepted, when the policy names domains
    ip daddr @allow                   accepted
    ip daddr @deny                    refused
    everything else                   accepted

"Refused" is a TCP reset or an ICMP administratively-prohibited, so a blocked connection fails at once.
When the policy names domains or sets headers, TCP to ports 80 and 443 never reaches that chain: it is
redirected to the egress proxy's listeners in the netns (`HTTP_LISTEN`, `HTTPS_LISTEN`), which decide by
name and dial out from the netns themselves (the output chain refuses the always-blocked set there too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ._policy import HTTP_PORT, HTTPS_PORT, SMTP_PORT, EgressPolicy

#: The egress proxy's listeners inside every sandbox netns (on the guest's gateway address).
HTTP_LISTEN = 15080
HTTPS_LISTEN = 15443
#: The firewall mark of the egress proxy's upstream sockets (the netns's output chain checks those).
PROXY_MARK = 0x77726E


def refuse(match: str, comment: str) -> str:
    """Two rules that refuse `match` at once: a TCP reset, or ICMP admin-prohibited for other protocols."""
    return (
        f'    {match} meta l4proto tcp reject with tcp reset comment "{comment}"\n'
        f'    {match} reject with icmpx admin-prohibited comment "{comment}"\n'
    )


def _elements(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


@dataclass(frozen=True, slots=True)
class EgressRules:
    """nft text for the pieces of the sandbox table that depend on the policy."""

    sets: str
    prerouting: str
    forward: str
    output: str


def egress_rules(
    policy: EgressPolicy, tap: str, veth: str, default_dns: Iterable[ipaddress.IPv4Address]
) -> EgressRules:
    sets = ""
    for set_name, networks in (("allow", policy.allow_networks), ("deny", policy.deny_networks)):
        if networks:
            sets += (
                f"  set {set_name} {{\n    type ipv4_addr; flags interval;\n"
                f"    elements = {{ {_elements(networks)} }}\n  }}\n"
            )
    prerouting = ""
    if policy.needs_proxy:
        for port, listen, what in ((HTTP_PORT, HTTP_LISTEN, "Host"), (HTTPS_PORT, HTTPS_LISTEN, "SNI")):
            redirect = f"iifname {tap} tcp dport {port} redirect to :{listen}"
            prerouting += f'    {redirect} comment "egress proxy: {what}"\n'

    forward = ""
    if not policy.allow_smtp:
        forward += refuse(f"iifname {tap} tcp dport {SMTP_PORT}", "smtp closed")
    if policy.has_names:
        resolvers = policy.dns_servers or tuple(default_dns)
        if resolvers:
            forward += (
                f"    iifname {tap} ip daddr {{ {_elements(resolvers)} }} meta l4proto {{ tcp, udp }} "
                f'th dport 53 accept comment "dns for allowed domains"\n'
            )
    if policy.allow_networks:
        forward += f'    iifname {tap} ip daddr @allow accept comment "allow_out"\n'
    if policy.deny_networks:
        forward += refuse(f"iifname {tap} ip daddr @deny", "deny_out")
    forward += f'    iifname {tap} oifname {veth} accept comment "default: allowed"\n'
    output = refuse(f"meta mark {PROXY_MARK:#x} oifname {veth} ip daddr @blocked", "egress proxy: blocked")
    return EgressRules(sets=sets, prerouting=prerouting, forward=forward, output=output)
