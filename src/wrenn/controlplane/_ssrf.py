"""Requests the control plane makes to URLs a user gave (webhooks, image registries, identity providers, as
those features land) go through `guarded_client`: server-side request forgery stops here.

A URL's host is resolved and every address checked **when the connection is opened**, and the
connection goes to the checked address itself (never resolved a second time), so a name that answers a
public address to a first lookup and a private one to the next (DNS rebinding) gains nothing; redirects
are not followed, and each connection of a caller that follows them is checked again. Refused:

- anything that is not a public unicast address (`ipaddress`' `is_global`): loopback, private (RFC 1918,
  unique local), link-local (169.254.0.0/16 with the clouds' metadata services, fe80::/10), shared address
  space (100.64.0.0/10, CGNAT), unspecified, documentation, benchmarking and reserved ranges; multicast;
- IPv4 inside IPv6 (`::ffff:a.b.c.d`, 6to4, NAT64 `64:ff9b::/96`), judged as the IPv4 address it carries;
- the addresses of the platform's host agents (`agent_addresses`), which may well be public ones;
- schemes other than http and https.

An operator may allow networks explicitly (`allow`: an internal registry); the agents stay refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn._shared import dial

from ._ca import split_address
from .db import Host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(httpcore.ConnectError):
    """The URL leads somewhere the control plane does not fetch for users."""


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressGuard:
    def __init__(self, blocked: Iterable[str] = (), allow: Iterable[str] = ()) -> None:
        #: Always refused, allowed or not (the host agents).
        self.blocked = [ipaddress.ip_network(b, strict=False) for b in blocked]
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]

    def problem(self, address: str) -> str | None:
        """Why the control plane must not connect to `address` (an IP), or None."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        judged: IPAddress = _embedded_ipv4(ip) or ip
        for each in {ip, judged}:
            if any(each in net for net in self.blocked):
                return f"{address} is a host agent's address"
        if any(judged in net for net in self.allow):
            return None
        if judged.is_multicast or not judged.is_global:
            return f"{address} is not a public address"
        return None

    def check_url(self, url: str) -> None:
        """Refuse a URL whose scheme is not http(s) or that has no host, before anything is resolved."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"only http and https URLs with a host are fetched, not {url[:100]!r}")


class GuardedBackend(dial.Dialer):
    """Resolves a name, checks every address it has, and connects to an accepted one by its address."""

    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    async def address(self, host: str, port: int) -> str:
        try:
            found = await anyio.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        problems = [p for p in (self.guard.problem(a) for a in addresses) if p]
        if problems or not addresses:
            # One bad address refuses the name: a client must not get to pick among them.
            raise Refused(f"refused to connect to {host}: {'; '.join(problems) or 'no address'}")
        return addresses[0]


def guarded_client(guard: AddressGuard, timeout_s: float = 10.0) -> httpx.AsyncClient:
    """An httpx client for user-given URLs: every connection checked by `guard`, no redirects followed, no
    proxies or credentials from the environment. Check each URL with `guard.check_url` first."""
    return httpx.AsyncClient(
        transport=dial.transport(GuardedBackend(guard)),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
    )


async def agent_addresses(session: AsyncSession) -> list[str]:
    """The IP addresses of every host agent the platform knows (registered addresses resolved)."""
    found: list[str] = []
    for address in (await session.execute(select(Host.address).where(Host.address != ""))).scalars():
        name, _ = split_address(address.split("://", 1)[-1].split("/", 1)[0])
        try:
            found.append(str(ipaddress.ip_address(name)))
        except ValueError:
            try:
                infos = await anyio.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError:
                continue
            found += [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(found))
