"""Kernel plumbing through pyroute2: netns, veth, TAP, addresses, routes. Synchronous and quick; the
manager runs these in a worker thread.

pyroute2 reaches into a netns by forking a short-lived child that opens the netlink socket there
(`IPRoute(netns=...)`); we always pass `flags=0` so that a missing netns raises instead of being created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from ._addresses import SandboxNetwork

log = logging.getLogger("wrenn.agent.network")

NETNS_DIR = Path("/run/netns")

GuestLink = Literal["tap", "veth"]

# <linux/if_tun.h>
_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def list_links() -> list[str]:
    """Names of the links in the root namespace."""
    with IPRoute() as ipr:
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


def host_ipv4_addresses() -> list[ipaddress.IPv4Address]:
    """Every IPv4 address of the root namespace (the guest must reach none of them)."""
    with IPRoute() as ipr:
        return sorted(
            {ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=socket.AF_INET)}
        )


def create_netns(name: str) -> None:
    netns.create(name)


def remove_netns(name: str) -> bool:
    """Unmount and unlink the netns; False when it was not there. The namespace itself goes away once
    no process (such as a VMM that is still exiting) is inside it."""
    if not netns_exists(name):
        return False
    netns.remove(name)
    return True


def delete_link(name: str) -> bool:
    """Delete a root-namespace link (for a veth, its peer goes too); False when it was not there."""
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            return False
        try:
            ipr.link("del", index=indexes[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            return False
    return True


def disable_ipv6(ifname: str) -> None:
    """No IPv6 on the host end of a veth: nothing of ours uses it and it would be one more path."""
    with contextlib.suppress(FileNotFoundError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1\n")


def create_tap(name: str) -> None:
    """A persistent TAP (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the root namespace. The VMM opens it by
    name later; QEMU and Firecracker both set their own flags when they attach."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR))
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _ns(name: str) -> Iterator[IPRoute]:
    with IPRoute(netns=name, flags=0) as ipr:
        yield ipr


def _index(ipr: IPRoute, ifname: str) -> int:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        raise NetlinkError(errno.ENODEV, f"no link {ifname}")
    return int(indexes[0])


def build_links(net: SandboxNetwork, guest_link: GuestLink) -> None:
    """Everything below the firewall, in an existing netns `net.netns`.

    With `guest_link="veth"` (tests only) the guest side is a veth pair instead of a TAP: `tap0` stays
    in the sandbox's netns and its peer `eth0` lands in `net.guest_netns`, configured as the guest
    would configure its own eth0 from the kernel command line.
    """
    with IPRoute() as ipr:
        ipr.link(
            "add", ifname=net.host_veth, kind="veth", peer={"ifname": net.ns_veth, "net_ns_fd": net.netns}
        )
        disable_ipv6(net.host_veth)
        host_idx = _index(ipr, net.host_veth)
        ipr.addr("add", index=host_idx, address=net.veth_host_ip, prefixlen=31)
        ipr.link("set", index=host_idx, state="up")
        if guest_link == "tap":
            create_tap(net.tap_tmp)
            ipr.link("set", index=_index(ipr, net.tap_tmp), net_ns_fd=net.netns, ifname=net.tap)

    if guest_link == "veth":
        netns.create(net.guest_netns)
        with _ns(net.netns) as ns:
            ns.link("add", ifname=net.tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": net.guest_netns})
        with _ns(net.guest_netns) as guest:
            guest.link("set", index=_index(guest, "lo"), state="up")
            eth0 = _index(guest, "eth0")
            guest.link("set", index=eth0, address=net.mac)
            guest.addr("add", index=eth0, address=net.guest_ip, prefixlen=net.guest_prefixlen)
            guest.link("set", index=eth0, state="up")
            guest.route("add", dst="0.0.0.0/0", gateway=net.gateway)

    with _ns(net.netns) as ns:
        ns.link("set", index=_index(ns, "lo"), state="up")
        veth = _index(ns, net.ns_veth)
        ns.addr("add", index=veth, address=net.veth_ns_ip, prefixlen=31)
        ns.link("set", index=veth, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=net.veth_host_ip)
        tap = _index(ns, net.tap)
        ns.addr("add", index=tap, address=net.gateway, prefixlen=net.guest_prefixlen)
        ns.link("set", index=tap, state="up")

    # Last, so the guest is only routable once its netns is complete.
    with IPRoute() as ipr:
        ipr.route("add", dst=f"{net.host_ip}/32", gateway=net.veth_ns_ip, oif=_index(ipr, net.host_veth))


def destroy(net: SandboxNetwork) -> list[str]:
    """Remove whatever exists of `net`; returns the names removed. Never fails on missing pieces."""
    removed = [name for name in (net.host_veth, net.tap_tmp) if delete_link(name)]
    removed += [name for name in (net.guest_netns, net.netns) if remove_netns(name)]
    return removed
