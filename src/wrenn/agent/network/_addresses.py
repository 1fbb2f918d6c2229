"""The address and name plan: everything about a slot that can be computed without touching the kernel.

Slot `n` (1..N) owns:

* netns `{prefix}-ns-{n}` (and, in the test-only veth mode, `{prefix}-ns-{n}-guest` for the fake guest);
* a veth pair: `{prefix}{n}h` in the root namespace with `10.12.0.{2n}/31`, and `veth0` inside the netns
  with the other address of the /31;
* `host_ip` = `10.11.0.0 + n`, the address the host uses to reach the guest (DNAT inside the netns);
* `tap0` inside the netns with `169.254.0.22/30`; the guest is always `169.254.0.21` with one MAC, so a
  snapshot taken in one slot resumes in any other.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

IFNAMSIZ = 15  # longest interface name Linux accepts (16 bytes with the NUL)
MAX_SLOTS = 32767  # one /31 per slot in a /16

GUEST_IP = "169.254.0.21"
GATEWAY_IP = "169.254.0.22"
GUEST_PREFIXLEN = 30
GUEST_MAC = "02:fc:00:00:00:05"
TAP_NAME = "tap0"
NS_VETH_NAME = "veth0"
ENVD_PORT = 49983

_PREFIX_RE = re.compile(r"^[a-z](?:[a-z0-9]*[a-z])?$")


class NetworkError(Exception):
    """A sandbox network could not be set up or changed."""


class NetworkExhausted(NetworkError):
    """Every slot is taken."""


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    #: Highest slot number; slots are 1..slots.
    slots: int = 1024
    #: Start of every netns, link and nftables table name this manager owns. Lower-case letters and
    #: digits, starting and ending with a letter (so `{prefix}{slot}h` is unambiguous). Two managers on
    #: one host must not have prefixes where one starts with the other: the nftables rules match our
    #: links by the wildcard `"{prefix}*"`.
    prefix: str = "wrn"
    #: Resolvers handed to the guest on its kernel command line (reached through the internet path).
    dns: tuple[str, ...] = ("1.1.1.1", "8.8.8.8")
    #: CA certificates (a PEM file) the egress proxy verifies intercepted HTTPS upstreams against; None:
    #: the system's trust store. Tests point it at their own CA.
    upstream_ca: str | None = None
    #: Host-side addresses of the guests, one per slot.
    host_net: str = "10.11.0.0/16"
    #: One /31 per slot for the veth pair between the root namespace and the sandbox's netns.
    veth_net: str = "10.12.0.0/16"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"bad network prefix {self.prefix!r}: lower-case letters/digits, letter at both ends"
            )
        longest = len(self.prefix) + len(str(self.slots)) + 1
        if longest > IFNAMSIZ:
            raise ValueError(
                f"prefix {self.prefix!r} with {self.slots} slots gives {longest}-char link names"
            )
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 1..{MAX_SLOTS}")
        host_net = ipaddress.IPv4Network(self.host_net)
        veth_net = ipaddress.IPv4Network(self.veth_net)
        if host_net.num_addresses <= self.slots or veth_net.num_addresses < 2 * (self.slots + 1):
            raise ValueError("host_net/veth_net are too small for that many slots")
        if host_net.overlaps(veth_net):
            raise ValueError("host_net and veth_net overlap")
        for server in self.dns:
            ipaddress.IPv4Address(server)

    @property
    def netns_re(self) -> re.Pattern[str]:
        """Our netns names; group 1 is the slot, group 2 is set for the test-only fake-guest netns."""
        return re.compile(rf"^{self.prefix}-ns-(\d+)(-guest)?$")

    @property
    def link_re(self) -> re.Pattern[str]:
        """Our links in the root namespace: host veths (`h`) and TAPs not yet moved into a netns (`t`)."""
        return re.compile(rf"^{self.prefix}(\d+)[ht]$")

    @property
    def link_glob(self) -> str:
        """nftables wildcard for our root-namespace links (nft only supports a trailing `*`)."""
        return f"{self.prefix}*"

    def describe(self, slot: int) -> SandboxNetwork:
        """The network of `slot`, computed; nothing is created."""
        if not 1 <= slot <= self.slots:
            raise ValueError(f"slot {slot} outside 1..{self.slots}")
        host_net = ipaddress.IPv4Network(self.host_net)
        veth_net = ipaddress.IPv4Network(self.veth_net)
        veth_host = veth_net.network_address + 2 * slot
        netns = f"{self.prefix}-ns-{slot}"
        return SandboxNetwork(
            slot=slot,
            netns=netns,
            host_veth=f"{self.prefix}{slot}h",
            ns_veth=NS_VETH_NAME,
            tap=TAP_NAME,
            host_ip=str(host_net.network_address + slot),
            veth_host_ip=str(veth_host),
            veth_ns_ip=str(veth_host + 1),
            dns=self.dns,
        )


@dataclass(frozen=True, slots=True)
class SandboxNetwork:
    """Names and addresses of one sandbox's network (see the module docstring for the plan)."""

    slot: int
    netns: str
    host_veth: str
    ns_veth: str
    tap: str
    #: Where the host reaches the guest (e.g. envd at `host_ip:49983`).
    host_ip: str
    #: Root-namespace end of the veth pair (/31).
    veth_host_ip: str
    #: Netns end of the veth pair; the guest's traffic leaves the netns with this source address.
    veth_ns_ip: str
    dns: tuple[str, ...] = ()
    guest_ip: str = GUEST_IP
    gateway: str = GATEWAY_IP
    guest_prefixlen: int = GUEST_PREFIXLEN
    mac: str = GUEST_MAC
    envd_port: int = field(default=ENVD_PORT)

    @property
    def guest_cidr(self) -> str:
        return f"{self.guest_ip}/{self.guest_prefixlen}"

    @property
    def guest_netns(self) -> str:
        """Netns of the fake guest in the test-only `guest_link="veth"` mode."""
        return f"{self.netns}-guest"

    @property
    def tap_tmp(self) -> str:
        """Name of the TAP between its creation in the root namespace and its move into the netns."""
        return self.host_veth[:-1] + "t"

    def kernel_cmdline(self) -> str:
        """Kernel arguments the guest init (`wrenn-init`) reads to configure eth0."""
        args = [f"wrenn.ip={self.guest_cidr}", f"wrenn.gw={self.gateway}"]
        if self.dns:
            args.append(f"wrenn.dns={','.join(self.dns)}")
        return " ".join(args)
