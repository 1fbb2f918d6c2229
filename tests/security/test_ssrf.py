"""Server-side request forgery: the guard every user-given URL goes through (webhooks, registries, identity
providers, as they land) refuses loopback, private, link-local and metadata, CGNAT, multicast and
reserved addresses, IPv4 hidden in IPv6, and the host agents' own addresses; at connect time, so a name
that resolves to one of those (now or on a second lookup) gets nowhere. Nothing here leaves loopback."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from wrenn.controlplane._ssrf import AddressGuard, Refused, guarded_client

REFUSED = [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "224.0.0.251", "239.255.255.250", "255.255.255.255", "192.0.2.1",
    "198.18.0.1", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "2001:db8::1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert AddressGuard().problem(address) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert AddressGuard().problem(address) is None


def test_agents_are_refused_even_when_public_or_allowed() -> None:
    guard = AddressGuard(blocked=["8.8.4.4", "2001:4860::8844"], allow=["10.0.0.0/8", "8.8.4.0/24"])
    assert "host agent" in (guard.problem("8.8.4.4") or "")
    assert "host agent" in (guard.problem("::ffff:8.8.4.4") or "")
    assert guard.problem("2001:4860::8844") is not None
    assert guard.problem("10.9.9.9") is None  # an operator's internal registry, allowed on purpose
    assert guard.problem("8.8.4.5") is None


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://127.0.0.1/", "ftp://example.com/", "http:///nohost", "unix:/run/x"],
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(Refused):
        AddressGuard().check_url(url)
    AddressGuard().check_url("https://example.com/hook")


@pytest.fixture
def listener() -> tuple[int, list[bytes]]:
    """A server on loopback that records whatever reaches it."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                got.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], got
    server.close()


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"]
)
def test_names_that_lead_to_loopback_connect_nowhere(listener: tuple[int, list[bytes]], host: str) -> None:
    port, got = listener

    async def fetch() -> None:
        async with guarded_client(AddressGuard()) as client:
            await client.get(f"http://{host}:{port}/hook")

    with pytest.raises(httpx.ConnectError, match="refused"):
        asyncio.run(fetch())
    assert got == []  # not a byte reached the listener


def test_an_allowed_address_is_reached_as_named(listener: tuple[int, list[bytes]]) -> None:
    """The control: the same client reaches an address the operator allowed, with the URL's own Host."""
    port, got = listener

    async def fetch() -> httpx.Response:
        async with guarded_client(AddressGuard(allow=["127.0.0.0/8"])) as client:
            return await client.get(f"http://localhost:{port}/hook")

    assert asyncio.run(fetch()).text == "ok"
    assert got and b"host: localhost:" in got[0].lower()
    refused_agent = AddressGuard(blocked=["127.0.0.1"], allow=["127.0.0.0/8"])

    async def to_agent() -> None:
        async with guarded_client(refused_agent) as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError, match="host agent"):
        asyncio.run(to_agent())
