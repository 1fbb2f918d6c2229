"""Sandbox networking (`wrenn.agent.network`) against the real kernel: netns, veth, TAP, routes, nftables.

No VM is booted: in the reachability tests `setup(..., guest_link="veth")` puts a veth end with the
guest's address into `{netns}-guest`, which stands in for the microVM. The "internet" is a netns of its
own holding 198.51.100.1 (TEST-NET-2) behind a veth that is not ours. Every address any test sends to
lives on this machine, in a namespace the test created; `_assert_local` checks the route first.

Names use a per-process prefix, so a running agent (prefix "wrn") and parallel sessions never collide;
everything is removed at the end and the host's `ip_forward` is restored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrenn.agent.network import (
    GATEWAY_IP,
    NetworkConfig,
    NetworkError,
    NetworkExhausted,
    NetworkManager,
    SandboxNetwork,
    SlotAllocator,
)
from wrenn.agent.network._firewall import blocked_elements

TAG = f"{os.getpid() % 1000:03d}"
PREFIX = f"wt{TAG}s"  # starts and ends with a letter; "wt" is no prefix of "wrn"
INET_NS = f"wx{TAG}-inet"
INET_VETH = f"wx{TAG}i"  # deliberately not under PREFIX: to the host this is an outside interface
INET_HOST_IP = "198.51.100.2"  # root-ns end: a host address that looks public
INET_SERVER_IP = "198.51.100.1"  # the "internet", inside INET_NS
PAIR_SLOTS = frozenset({20, 21})  # the reachability tests' sandboxes
PORT = 18080
ENVD = 49983
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("nft") is None
    or shutil.which("ip") is None
    or not Path("/dev/net/tun").exists(),
    reason="needs root, nft, ip and /dev/net/tun",
)


# --- pure parts -----------------------------------------------------------------------------------


def test_slot_allocator_lowest_free_release_reuse() -> None:
    slots = SlotAllocator(4)
    assert [slots.acquire() for _ in range(3)] == [1, 2, 3]
    slots.release(2)
    slots.release(2)  # releasing a free slot is a no-op
    assert slots.acquire() == 2
    assert slots.acquire() == 4
    with pytest.raises(NetworkExhausted):
        slots.acquire()
    slots.release(3)
    slots.release(1)
    assert slots.acquire() == 1
    assert slots.acquire() == 3
    assert len(slots) == 4


def test_slot_allocator_claim() -> None:
    slots = SlotAllocator(5)
    slots.claim(1)
    slots.claim(3)
    assert 3 in slots
    assert [slots.acquire(), slots.acquire(), slots.acquire()] == [2, 4, 5]
    with pytest.raises(ValueError):
        slots.claim(3)
    with pytest.raises(ValueError):
        slots.claim(6)
    with pytest.raises(ValueError):
        slots.release(0)
    slots.release(3)
    slots.claim(3)  # claimable again once released
    with pytest.raises(NetworkExhausted):
        slots.acquire()


def test_address_plan() -> None:
    config = NetworkConfig(slots=32767, prefix="wrn")
    one = config.describe(1)
    assert (one.netns, one.host_veth, one.ns_veth, one.tap) == ("wrn-ns-1", "wrn1h", "veth0", "tap0")
    assert (one.host_ip, one.veth_host_ip, one.veth_ns_ip) == ("10.11.0.1", "10.12.0.2", "10.12.0.3")
    assert (one.guest_ip, one.gateway, one.guest_cidr) == ("169.254.0.21", "169.254.0.22", "169.254.0.21/30")
    assert one.kernel_cmdline() == "wrenn.ip=169.254.0.21/30 wrenn.gw=169.254.0.22 wrenn.dns=1.1.1.1,8.8.8.8"
    spill = config.describe(300)
    assert (spill.host_ip, spill.veth_host_ip, spill.veth_ns_ip) == ("10.11.1.44", "10.12.2.88", "10.12.2.89")
    last = config.describe(32767)
    assert len(last.host_veth) <= 15
    assert (last.host_ip, last.veth_ns_ip) == ("10.11.127.255", "10.12.255.255")
    # Every guest looks the same, so a snapshot resumes in any slot.
    assert one.mac == last.mac and one.guest_ip == last.guest_ip
    with pytest.raises(ValueError):
        config.describe(0)
    for bad in ("Wrn", "wrn-", "1wrn", "wrn1", "averyveryverylongprefix"):
        with pytest.raises(ValueError):
            NetworkConfig(prefix=bad)
    with pytest.raises(ValueError):
        NetworkConfig(slots=40000)


def test_blocked_set_adds_only_uncovered_host_addresses() -> None:
    addrs = [ipaddress.IPv4Address(a) for a in ("127.0.0.1", "10.12.0.2", "192.0.2.2", "203.0.113.9")]
    elements = blocked_elements(addrs)
    assert "192.0.2.2" in elements and "203.0.113.9" in elements
    assert "127.0.0.1" not in elements and "10.12.0.2" not in elements  # inside 127/8 and 10/8 already


# --- kernel helpers -------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=10).stdout


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


def link_names(netns: str | None = None) -> set[str]:
    argv = ["ip", "-j", "link", "show"] if netns is None else ["ip", "-n", netns, "-j", "link", "show"]
    return {link["ifname"] for link in json.loads(sh(*argv))}


def our_leftovers() -> list[str]:
    names = [n for n in netns_names() if n.startswith(PREFIX)]
    names += [n for n in link_names() if n.startswith(PREFIX)]
    if sh("nft", "list", "table", "inet", PREFIX, check=False):
        names.append(f"table inet {PREFIX}")
    return names


def host_routes() -> list[str]:
    return [r["dst"] for r in json.loads(sh("ip", "-j", "route", "show"))]


def _assert_local(addr: str, netns: str | None = None) -> None:
    """Guard for the workplace rule, checked before any test traffic: from `netns` (all of whose links
    are ours) `addr` is either on-link, or goes to a gateway and ends up in the root namespace, which must
    route it to this machine or into one of our own links, never out of a real interface."""
    if netns is not None:
        inner = json.loads(sh("ip", "-n", netns, "-j", "route", "get", addr))[0]
        if inner.get("type") == "local" or "gateway" not in inner:
            return
    route = json.loads(sh("ip", "-j", "route", "get", addr))[0]
    dev = route.get("dev", "")
    assert route.get("type") == "local" or dev.startswith(PREFIX) or dev == INET_VETH, (addr, route)


_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        s.settimeout(1)
        print(s.recv(64).decode())
except OSError as e:
    print(type(e).__name__, file=sys.stderr)
    sys.exit(1)
"""

_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"ok {peer[0]}".encode())
    c.close()
"""


def _in(netns: str | None, argv: list[str]) -> list[str]:
    return argv if netns is None else ["ip", "netns", "exec", netns, *argv]


def connect(netns: str | None, addr: str, port: int, attempts: int = 1) -> str | None:
    """Connect from `netns` (None: the root namespace); the server's reply ("ok <peer ip>") or None.
    Each attempt times out after 1 s."""
    _assert_local(addr, netns)
    for _ in range(attempts):
        proc = subprocess.run(
            _in(netns, [sys.executable, "-c", _CLIENT, addr, str(port)]),
            capture_output=True,
            text=True,
            timeout=10,
        )
        if proc.returncode == 0:
            return proc.stdout.strip()
    return None


@dataclass
class Servers:
    procs: list[subprocess.Popen[str]]

    def start(self, netns: str | None, addr: str, port: int) -> None:
        proc = subprocess.Popen(
            _in(netns, [sys.executable, "-c", _SERVER, addr, str(port)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


#: Address ranges of their own, so these tests can run beside any agent on this machine.
TEST_CONFIG = NetworkConfig(slots=32, prefix=PREFIX, host_net="10.236.0.0/16", veth_net="10.237.0.0/16")


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def manager() -> AsyncIterator[NetworkManager]:
    forward_before = IP_FORWARD.read_text()
    mgr = NetworkManager(TEST_CONFIG)
    try:
        await mgr.cleanup_stale()
        await mgr.start()
        yield mgr
    finally:
        await mgr.uninstall()
        IP_FORWARD.write_text(forward_before)
    assert our_leftovers() == []


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    """A stand-in for the internet: INET_NS with 198.51.100.1, joined to the root ns by a non-wrenn veth."""
    try:
        sh("ip", "netns", "add", INET_NS)
        sh("ip", "link", "add", INET_VETH, "type", "veth", "peer", "name", "eth0", "netns", INET_NS)
        sh("ip", "addr", "add", f"{INET_HOST_IP}/30", "dev", INET_VETH)
        sh("ip", "link", "set", INET_VETH, "up")
        sh("ip", "-n", INET_NS, "addr", "add", f"{INET_SERVER_IP}/30", "dev", "eth0")
        sh("ip", "-n", INET_NS, "link", "set", "eth0", "up")
        sh("ip", "-n", INET_NS, "link", "set", "lo", "up")
        sh("ip", "-n", INET_NS, "route", "add", "default", "via", INET_HOST_IP)
        yield
    finally:
        sh("ip", "link", "del", INET_VETH, check=False)
        sh("ip", "netns", "del", INET_NS, check=False)


@dataclass
class Pair:
    a: SandboxNetwork  # internet denied
    b: SandboxNetwork  # internet allowed


@pytest.fixture(scope="module")
async def pair(manager: NetworkManager, internet: None) -> AsyncIterator[Pair]:
    a = await manager.setup(20, allow_internet=False, guest_link="veth")
    b = await manager.setup(21, allow_internet=True, guest_link="veth")
    assert {a.slot, b.slot} == PAIR_SLOTS
    servers = Servers([])
    try:
        for net in (a, b):
            servers.start(net.guest_netns, "0.0.0.0", ENVD)  # envd stand-in in the fake guest
            servers.start(net.guest_netns, "0.0.0.0", PORT)
            servers.start(net.netns, "0.0.0.0", PORT)  # something listening in the sandbox's netns
            servers.start(None, net.veth_host_ip, PORT)  # the host, on its veth address
        servers.start(None, INET_HOST_IP, PORT)  # the host, on a "public" address
        servers.start(INET_NS, INET_SERVER_IP, PORT)  # the internet
        yield Pair(a, b)
    finally:
        servers.stop()
        await manager.teardown(a)
        await manager.teardown(b)


# --- lifecycle ------------------------------------------------------------------------------------


@needs_root
async def test_setup_creates_everything_and_teardown_removes_it(manager: NetworkManager) -> None:
    net = await manager.setup(1, allow_internet=True)
    assert net.netns in netns_names()
    assert net.host_veth in link_names()
    assert f"{net.host_ip}" in host_routes()
    route = json.loads(sh("ip", "-j", "route", "get", net.host_ip))[0]
    assert (route["dev"], route["gateway"]) == (net.host_veth, net.veth_ns_ip)
    host_addrs = json.loads(sh("ip", "-j", "addr", "show", "dev", net.host_veth))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in host_addrs if a["family"] == "inet"] == [
        (net.veth_host_ip, 31)
    ]

    assert link_names(net.netns) == {"lo", "veth0", "tap0"}
    tap = json.loads(sh("ip", "-n", net.netns, "-j", "-d", "addr", "show", "dev", "tap0"))[0]
    assert tap["linkinfo"]["info_kind"] == "tun" and tap["linkinfo"]["info_data"]["type"] == "tap"
    assert "UP" in tap["flags"]
    assert [(a["local"], a["prefixlen"]) for a in tap["addr_info"]] == [(GATEWAY_IP, 30)]
    ns_routes = json.loads(sh("ip", "-n", net.netns, "-j", "route", "show"))
    assert {"dst": "default", "gateway": net.veth_host_ip} in [
        {k: r.get(k) for k in ("dst", "gateway")} for r in ns_routes
    ]
    assert sh("ip", "netns", "exec", net.netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    rules = sh("ip", "netns", "exec", net.netns, "nft", "list", "table", "inet", PREFIX)
    assert f"ip daddr {net.host_ip} dnat ip to {net.guest_ip}" in rules
    assert f"snat ip to {net.veth_ns_ip}" in rules
    assert "iifname" in sh("nft", "list", "table", "inet", PREFIX)
    assert 1 in manager.list_existing()

    await manager.teardown(net)
    assert net.netns not in netns_names()
    assert net.host_veth not in link_names()
    assert net.host_ip not in host_routes()
    await manager.teardown(net)  # twice is harmless
    assert 1 not in manager.list_existing()


@needs_root
async def test_teardown_of_half_made_network(manager: NetworkManager) -> None:
    net = manager.describe(5)
    sh("ip", "netns", "add", net.netns)
    sh("ip", "tuntap", "add", "dev", net.tap_tmp, "mode", "tap")  # as if setup died before moving it
    await manager.teardown(net)
    assert net.netns not in netns_names() and net.tap_tmp not in link_names()
    await manager.teardown(manager.describe(6))  # nothing of it ever existed


@needs_root
async def test_failed_setup_rolls_back(manager: NetworkManager) -> None:
    net = manager.describe(7)
    sh("ip", "tuntap", "add", "dev", net.host_veth, "mode", "tap")  # the name is taken: veth creation fails
    with pytest.raises(NetworkError):
        await manager.setup(7, allow_internet=False)
    assert net.netns not in netns_names() and net.host_veth not in link_names()


@needs_root
async def test_setup_refuses_existing_netns(manager: NetworkManager) -> None:
    net = await manager.setup(8, allow_internet=False)
    try:
        with pytest.raises(NetworkError):
            await manager.setup(8, allow_internet=False)
        assert net.netns in netns_names() and net.host_veth in link_names()  # left intact
    finally:
        await manager.teardown(net)


@needs_root
async def test_cleanup_stale_honours_keep(manager: NetworkManager) -> None:
    nets = [await manager.setup(slot, allow_internet=False) for slot in (2, 3, 4)]
    sh("ip", "tuntap", "add", "dev", manager.describe(9).tap_tmp, "mode", "tap")
    assert {2, 3, 4} <= set(manager.list_existing())

    removed = await manager.cleanup_stale(keep={3} | PAIR_SLOTS)
    assert set(removed) == {
        nets[0].netns,
        nets[0].host_veth,
        nets[2].netns,
        nets[2].host_veth,
        manager.describe(9).tap_tmp,
    }
    assert set(manager.list_existing()) - PAIR_SLOTS == {3}
    assert nets[1].host_veth in link_names() and nets[1].host_ip in host_routes()

    removed = await manager.cleanup_stale(keep=PAIR_SLOTS)
    assert set(removed) == {nets[1].netns, nets[1].host_veth}
    assert set(manager.list_existing()) - PAIR_SLOTS == set()


@needs_root
async def test_setup_needs_start() -> None:
    with pytest.raises(NetworkError, match="start"):
        await NetworkManager(TEST_CONFIG).setup(10, allow_internet=False)
    assert f"{PREFIX}-ns-10" not in netns_names()


@needs_root
async def test_start_is_idempotent(manager: NetworkManager) -> None:
    before = sh("nft", "list", "table", "inet", PREFIX)
    await manager.start()
    await manager.start()
    assert sh("nft", "list", "table", "inet", PREFIX) == before
    assert IP_FORWARD.read_text().strip() == "1"


# --- reachability and isolation -------------------------------------------------------------------


def _ok(reply: str | None) -> str:
    assert reply is not None and reply.startswith("ok "), reply
    return reply.removeprefix("ok ")


@needs_root
def test_host_reaches_guest_at_host_ip(pair: Pair) -> None:
    for net in (pair.a, pair.b):
        # The guest sees its gateway as the peer, in every slot: the one address envd trusts before /init.
        assert _ok(connect(None, net.host_ip, ENVD, attempts=3)) == GATEWAY_IP
        assert _ok(connect(None, net.host_ip, PORT, attempts=3)) == GATEWAY_IP


@needs_root
def test_only_root_on_the_host_reaches_a_guest(pair: Pair) -> None:
    """A local unprivileged user opens no connection to any guest (its envd least of all)."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    for net in (pair.a, pair.b):
        assert _ok(connect(None, net.host_ip, ENVD, attempts=3))
        proc = subprocess.run(
            [*nobody, sys.executable, "-c", _CLIENT, net.host_ip, str(ENVD)], capture_output=True, text=True
        )
        assert proc.returncode == 1 and "ok" not in proc.stdout, (proc.stdout, proc.stderr)


@needs_root
def test_guest_cannot_reach_host_or_its_netns(pair: Pair) -> None:
    # The servers are up: the host reaches its own.
    assert connect(None, INET_HOST_IP, PORT, attempts=3) is not None
    for net in (pair.a, pair.b):  # whatever the internet setting
        assert connect(None, net.veth_host_ip, PORT, attempts=3) is not None
        assert connect(net.guest_netns, net.veth_host_ip, PORT) is None
        assert connect(net.guest_netns, INET_HOST_IP, PORT) is None  # a host address that looks public
        # The netns itself: its tap0 address and its veth address.
        assert connect(net.guest_netns, GATEWAY_IP, PORT) is None
        assert connect(net.guest_netns, net.veth_ns_ip, PORT) is None


@needs_root
def test_guest_cannot_reach_another_sandbox(pair: Pair) -> None:
    assert _ok(connect(None, pair.b.host_ip, ENVD, attempts=3))
    assert connect(pair.a.guest_netns, pair.b.host_ip, ENVD) is None
    assert connect(pair.a.guest_netns, pair.b.veth_host_ip, PORT) is None
    assert connect(pair.b.guest_netns, pair.a.host_ip, ENVD) is None
    # Even its own host_ip: nothing private is reachable from inside.
    assert connect(pair.a.guest_netns, pair.a.host_ip, ENVD) is None


@needs_root
async def test_host_layer_holds_on_its_own(manager: NetworkManager, pair: Pair) -> None:
    """Traffic that starts in the sandbox's netns (not from tap0) skips the netns's rules, so these
    are stopped by the host table alone: no connections to the host, none between sandboxes, and none
    from outside into a sandbox. The control run without the table shows the table is what stops them."""
    probes = [
        (pair.a.netns, pair.a.veth_host_ip, PORT),  # host input
        (pair.a.netns, INET_HOST_IP, PORT),
        (pair.a.netns, pair.b.host_ip, ENVD),  # host forward, veth -> veth
        (pair.b.netns, pair.a.host_ip, ENVD),
        (INET_NS, pair.a.host_ip, ENVD),  # outside -> sandbox
        (INET_NS, pair.b.host_ip, ENVD),
    ]
    for netns, addr, port in probes:
        assert connect(netns, addr, port) is None, (netns, addr, port)
    sh("nft", "delete", "table", "inet", PREFIX)
    try:
        for netns, addr, port in probes:
            assert connect(netns, addr, port, attempts=3) is not None, (netns, addr, port)
    finally:
        await manager.start()
    assert connect(pair.a.netns, pair.a.veth_host_ip, PORT) is None


@needs_root
async def test_sandbox_layer_control(manager: NetworkManager, pair: Pair) -> None:
    """Only the netns's input chain keeps the guest from its gateway: without the sandbox's table the
    same probe connects. (On-link from the guest, so nothing leaves the two namespaces.)"""
    assert connect(pair.a.guest_netns, GATEWAY_IP, PORT) is None
    sh("ip", "netns", "exec", pair.a.netns, "nft", "delete", "table", "inet", PREFIX)
    try:
        assert _ok(connect(pair.a.guest_netns, GATEWAY_IP, PORT, attempts=3)) == pair.a.guest_ip
    finally:
        await manager.set_internet(pair.a, False)
    assert connect(pair.a.guest_netns, GATEWAY_IP, PORT) is None
    assert _ok(connect(None, pair.a.host_ip, ENVD, attempts=3))


@needs_root
async def test_internet_allowed_and_denied(manager: NetworkManager, pair: Pair) -> None:
    # Allowed: through the netns SNAT and the host's masquerade, so the server sees the host's address.
    assert _ok(connect(pair.b.guest_netns, INET_SERVER_IP, PORT, attempts=3)) == INET_HOST_IP
    assert connect(pair.a.guest_netns, INET_SERVER_IP, PORT) is None
    try:
        await manager.set_internet(pair.a, True)
        assert _ok(connect(pair.a.guest_netns, INET_SERVER_IP, PORT, attempts=3)) == INET_HOST_IP
        await manager.set_internet(pair.a, False)
        assert connect(pair.a.guest_netns, INET_SERVER_IP, PORT) is None
        # Denying internet keeps the host -> guest path.
        assert _ok(connect(None, pair.a.host_ip, ENVD, attempts=3))
    finally:
        await manager.set_internet(pair.a, False)


@needs_root
async def test_deny_cuts_open_connections(manager: NetworkManager, pair: Pair) -> None:
    """A connection the guest opened while allowed stops working once internet is denied."""
    echo = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
print(s.recv(64).decode(), flush=True)
sys.stdin.readline()
s.settimeout(1)
try:
    s.sendall(b"x")
    data = s.recv(64)
    print("alive" if data else "closed", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"""
    _assert_local(INET_SERVER_IP, pair.b.guest_netns)
    # A server that answers each byte with a byte, so the connection can be probed twice.
    server = subprocess.Popen(
        _in(
            INET_NS,
            [
                sys.executable,
                "-c",
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                f"s.bind(('{INET_SERVER_IP}',{PORT + 1}));s.listen(4);print('ready',flush=True)\n"
                "c,_=s.accept();c.sendall(b'ok')\nwhile (d:=c.recv(64)): c.sendall(d)\n",
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = subprocess.Popen(
        _in(pair.b.guest_netns, [sys.executable, "-c", echo, INET_SERVER_IP, str(PORT + 1)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ok"
        await manager.set_internet(pair.b, False)
        client.stdin.write("\n")
        client.stdin.flush()
        line = client.stdout.readline().strip()  # the client gives up after 1 s
        assert line not in ("alive", ""), line
    finally:
        await manager.set_internet(pair.b, True)
        for proc in (client, server):
            proc.kill()
            proc.wait()
