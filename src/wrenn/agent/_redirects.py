"""Redirects from a server in a sandbox that name the sandbox's own address, rewritten to the public URL
the client used (the seed's proxy does the same).

A server in the guest knows itself as `localhost`, `127.0.0.1`, `0.0.0.0`, `[::1]`, the guest's address or
the host's address for it, so `Location: http://localhost:8000/login` would send a browser to its own
machine. The client reached the server as `{port}-{id}.{domain}` (or, with E2B's headers, at the control
plane's address): that is where the redirect must point. The traffic listener sees the client's `Host`
and `X-Forwarded-Proto`, which the control plane passes on.

- Same port: `{scheme}://{the client's Host}{path}`, whichever way the request was routed.
- Another port of the sandbox, on a request routed by `{port}-{id}.{domain}`: `{scheme}://{that
  port}-{id}.{domain}{path}`. Routed by E2B's headers, another port has no URL of its own: left alone.
- Relative redirects, and absolute ones to any other host, are left alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

#: Names a guest's server gives itself whatever its address.
_SELF_NAMES = frozenset({"localhost", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_own(host: str, own_addresses: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    if host in _SELF_NAMES or host in own_addresses:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_location(
    location: str,
    *,
    own_addresses: Iterable[str],
    port: int,
    sandbox_id: str,
    public_host: str,
    public_scheme: str,
) -> str | None:
    """The `Location` to send instead of `location`, or None to send it as it is. `public_host` is the
    Host the client used (with its port, if any), `public_scheme` http or https."""
    try:
        url = urlsplit(location.strip())
        scheme = url.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not url.hostname or not _is_own(url.hostname, own_addresses):
            return None
        target = url.port or _DEFAULT_PORTS[scheme]
    except ValueError:  # an unparseable URL or port: not one we can vouch for
        return None
    if not public_host or public_scheme not in _DEFAULT_PORTS:
        return None
    if target == port:
        netloc = public_host
    else:
        label, _, rest = public_host.partition(".")
        if label.lower() != f"{port}-{sandbox_id}" or not rest:
            return None  # routed by E2B's headers: another port has no public URL
        netloc = f"{target}-{sandbox_id}.{rest}"
    return urlunsplit((public_scheme, netloc, url.path or "/", url.query, url.fragment))
