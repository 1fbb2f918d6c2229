"""Attacks on egress policies: another team reading or changing a capsule's policy, bad policies (that
must be refused whole, changing nothing), and a guest whose policy allows everything trying the host's
own addresses, the egress proxy's listeners and another capsule. (A request whose TLS SNI and `Host`
differ is refused: tests/network/test_policy.py, which has the test internet that needs.)"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from wrenn import Capsule
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .conftest import Platform

pytestmark = pytest.mark.vm


def _api(platform: Platform, key: str) -> httpx.Client:
    return httpx.Client(base_url=platform.base_url, headers={"X-API-Key": key}, timeout=60)


@pytest.fixture
def open_afterwards(platform: Platform) -> Iterator[None]:
    """Team A's capsule is shared by the suite: its policy goes back to open."""
    yield
    with _api(platform, platform.key_a) as a:
        body = {"allow_out": [], "deny_out": [], "allow_internet_access": True, "rules": {}}
        assert a.patch(f"/v1/capsules/{platform.capsule.capsule_id}/network", json=body).status_code == 200


def test_another_team_can_neither_read_nor_change_a_policy(platform: Platform, open_afterwards: None) -> None:
    capsule = platform.capsule.capsule_id
    with _api(platform, platform.key_a) as a, _api(platform, platform.key_b) as b:
        before = a.get(f"/v1/capsules/{capsule}/network").json()
        assert b.get(f"/v1/capsules/{capsule}/network").status_code == 404
        assert b.patch(f"/v1/capsules/{capsule}/network", json={"deny_out": ["0.0.0.0/0"]}).status_code == 404
        r = b.put(f"/sandboxes/{capsule}/network", json={"denyOut": ["0.0.0.0/0"]})
        assert r.status_code == 404 and r.json()["code"] == 404
        after = a.get(f"/v1/capsules/{capsule}/network").json()
        assert {k: v for k, v in after.items() if k != "events"} == {
            k: v for k, v in before.items() if k != "events"
        }


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"allow_out": ["::/0"]}, "IPv6"),
        ({"deny_out": ["example.com"]}, "deny_out"),
        ({"allow_out": ["exa mple.com"]}, "allow_out"),
        ({"allow_out": ["*.*.com"]}, "allow_out"),
        ({"dns_servers": ["dns.example"]}, "dns_servers"),
        ({"rules": {"a.example": [{"transform": {"headers": {"Host": "evil"}}}]}}, "Host"),
        ({"rules": {"a.example": [{"transform": {"headers": {"X-K": "a\r\nInjected: 1"}}}]}}, "control"),
        ({"rules": {"a.example": [{"transform": {"headers": {"Bad Name": "v"}}}]}}, "Bad Name"),
        ({"rules": {"a.example": [{"transform": {"path": "/x"}}]}}, ""),
        ({"allow_out": ["a.example"], "unknown": 1}, ""),
        ({"egress_bandwidth_kbps": -1}, ""),
    ],
)
def test_a_bad_policy_is_refused_whole(platform: Platform, body: dict[str, object], needle: str) -> None:
    capsule = platform.capsule.capsule_id
    with _api(platform, platform.key_a) as a:
        before = a.get(f"/v1/capsules/{capsule}/network").json()
        r = a.patch(f"/v1/capsules/{capsule}/network", json=body)
        assert r.status_code == 400, r.text
        assert needle in r.text
        after = a.get(f"/v1/capsules/{capsule}/network").json()
        assert after["allow_out"] == before["allow_out"] and after["rules"] == before["rules"]


def test_e2b_fields_wrenn_does_not_implement_are_refused_not_ignored(platform: Platform) -> None:
    capsule = platform.capsule.capsule_id
    with _api(platform, platform.key_a) as a:
        r = a.put(f"/sandboxes/{capsule}/network", json={"egressProxy": {"address": "proxy.example:1080"}})
        assert r.status_code == 400 and "egressProxy" in r.json()["message"]
        assert a.put(f"/sandboxes/{capsule}/network", json={"maskRequestHost": "x"}).status_code == 400


def _host_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not ipaddress.IPv4Address(a).is_loopback]


def _guest_ip(platform: Platform, capsule_id: str) -> str:
    """A capsule's address on its host, from the agent (the API never tells a tenant)."""

    async def ask() -> str:
        async with platform.agent.client() as client:
            found = await client.get_sandbox(pb.GetSandboxRequest(sandbox_id=capsule_id))
        assert found.sandbox is not None and found.sandbox.host_ip, found
        return found.sandbox.host_ip

    return asyncio.run(ask())


def _refused(capsule: Capsule, url: str) -> bool:
    out = capsule.commands.run(f"curl -s -m 6 -o /dev/null -w '%{{http_code}} %{{time_total}}' {url} || true")
    code, seconds = out.stdout.split()
    return code in ("000", "403") and float(seconds) < 4


def test_an_allow_all_guest_reaches_neither_the_host_nor_another_capsule(
    platform: Platform, open_afterwards: None
) -> None:
    guest = platform.capsule
    with _api(platform, platform.key_b) as b:
        other = b.post("/v1/capsules", json={"memory_mb": 256})
        assert other.status_code == 201, other.text
        other_ip = _guest_ip(platform, other.json()["id"])
        try:
            targets = [*_host_addresses(), other_ip]
            with _api(platform, platform.key_a) as a:
                own_ip = _guest_ip(platform, guest.capsule_id)
                allow = ["0.0.0.0/0", *(f"{t}/32" for t in targets), f"{own_ip}/32"]
                r = a.patch(f"/v1/capsules/{guest.capsule_id}/network", json={"allow_out": allow})
                # naming them is accepted (E2B's lists are free), reaching them is not
                assert r.status_code == 200, r.text
            port = platform.cp_port
            for address in [*targets, own_ip]:
                for url in (f"http://{address}:{port}/health", f"http://{address}:49983/health",
                            f"http://{address}/"):  # fmt: skip
                    assert _refused(guest, url), url
            # The egress proxy's listeners in the guest's netns, reached directly.
            for port in (15080, 15443):
                assert _refused(guest, f"http://169.254.0.22:{port}/")
        finally:
            b.delete(f"/v1/capsules/{other.json()['id']}")
