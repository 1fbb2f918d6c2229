"""Test hosts in network namespaces: a veth pair from the host into a namespace of the test's own, and
waiting for a test server to answer."""

from __future__ import annotations

import subprocess
import time

import httpx


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def veth_netns(netns: str, host_if: str, host_cidr: str, ns_if: str, ns_cidr: str) -> None:
    """Namespace `netns` joined to the host by a veth pair: `host_if` with `host_cidr` here, `ns_if` with
    `ns_cidr` there, both up (and the namespace's loopback)."""
    sh("ip", "netns", "add", netns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns)
    sh("ip", "addr", "add", host_cidr, "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "-n", netns, "addr", "add", ns_cidr, "dev", ns_if)
    sh("ip", "-n", netns, "link", "set", ns_if, "up")
    sh("ip", "-n", netns, "link", "set", "lo", "up")


def wait_http(url: str, timeout_s: float = 20) -> None:
    """Until `url` answers 200 (or `timeout_s` passed: the test's own request then says what is wrong)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
