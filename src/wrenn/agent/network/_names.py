"""The name a connection is for, from its first bytes: the SNI of a TLS ClientHello, or the `Host` header
of an HTTP/1.x request. Both parsers take a prefix of the stream and answer `NEED_MORE` while it is too
short to tell, None when the bytes are not what the port expects (or name nothing)."""

from __future__ import annotations

import re
from typing import Final

NEED_MORE: Final = ""
#: The most the proxy waits for: a ClientHello record, or an HTTP request's headers.
MAX_PREFIX = 16 * 1024 + 5

_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*)", re.IGNORECASE)
_NAME = re.compile(r"^[a-z0-9.-]{1,253}$")


def _clean(name: str) -> str | None:
    """A host name, lower-case; None for anything else (an address literal names no domain)."""
    name = name.strip().rstrip(".").lower()
    if not _NAME.match(name) or name.replace(".", "").isdigit():
        return None
    return name


def http_host(data: bytes) -> str | None:
    """The `Host` of the first request in `data` (without a port), `NEED_MORE`, or None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return NEED_MORE if len(data) < MAX_PREFIX else None
    head = data[: end + 2]
    if not re.match(rb"^[A-Z]{3,10} \S+ HTTP/1\.[01]\r\n", head):
        return None
    hosts = _HOST.findall(head)
    if len(hosts) != 1:  # none, or two (a request smuggling trick): no name
        return None
    value = hosts[0].decode("ascii", "replace").strip()
    if value.startswith("["):
        return None  # an IPv6 literal
    return _clean(value.rsplit(":", 1)[0] if ":" in value else value)


def tls_sni(data: bytes) -> str | None:
    """The server name of the ClientHello that starts `data`, `NEED_MORE`, or None."""
    if len(data) < 5:
        return NEED_MORE
    if data[0] != 0x16 or data[1] != 0x03:
        return None
    record_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + record_len:
        return NEED_MORE if 5 + record_len <= MAX_PREFIX else None
    body = data[5 : 5 + record_len]
    try:
        return _sni_of(body)
    except IndexError:
        return None


def _sni_of(hello: bytes) -> str | None:
    if hello[0] != 0x01:  # handshake type: ClientHello
        return None
    length = int.from_bytes(hello[1:4], "big")
    if length + 4 > len(hello):
        return None  # a ClientHello spread over several records: not supported, so no name
    pos = 4 + 2 + 32  # version, random
    pos += 1 + hello[pos]  # session id
    pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher suites
    pos += 1 + hello[pos]  # compression methods
    end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
    pos += 2
    found: str | None = None
    while pos + 4 <= end:
        kind = int.from_bytes(hello[pos : pos + 2], "big")
        size = int.from_bytes(hello[pos + 2 : pos + 4], "big")
        ext = hello[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if kind != 0:
            continue
        if found is not None:
            return None  # two server_name extensions
        # server_name_list: length(2), then entries of type(1) length(2) name
        p = 2
        while p + 3 <= len(ext):
            name_type, name_len = ext[p], int.from_bytes(ext[p + 1 : p + 3], "big")
            name = ext[p + 3 : p + 3 + name_len]
            p += 3 + name_len
            if name_type == 0:
                found = _clean(name.decode("ascii", "replace"))
                break
        if found is None:
            return None
    return found
