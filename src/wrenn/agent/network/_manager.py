"""`NetworkManager`: sets up and tears down sandbox networks and owns the host-wide rules."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from . import _firewall, _netns
from ._addresses import NetworkConfig, NetworkError, SandboxNetwork
from ._egress import EgressProxy, NetworkEvent
from ._netns import GuestLink
from ._policy import CLOSED, OPEN, EgressPolicy
from ._slots import SlotAllocator

log = logging.getLogger("wrenn.agent.network")

_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

# Inside each new netns, before any link exists (so `default` covers veth0 and tap0): route between
# veth0 and tap0, and no IPv6 at all.
_NETNS_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.default.disable_ipv6=1",
    "net.ipv6.conf.all.disable_ipv6=1",
)


class NetworkManager:
    """Per-sandbox networks named after `config.prefix`; see `wrenn.agent.network` for the topology."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self.allocator = SlotAllocator(self.config.slots)
        self._started = False
        self._host_addresses: frozenset[ipaddress.IPv4Address] = frozenset()
        self.egress = EgressProxy(
            self.config.dns,
            scratch=Path("/run") / f"wrenn-{self.config.prefix}-tls",
            upstream_ca=Path(self.config.upstream_ca) if self.config.upstream_ca else None,
            host_addresses=lambda: self._host_addresses,
        )

    def describe(self, slot: int) -> SandboxNetwork:
        """The network of `slot` (for adopting a sandbox whose netns already exists)."""
        return self.config.describe(slot)

    async def start(self) -> None:
        """Enable IPv4 forwarding and install the host-wide rules. Idempotent."""
        try:
            await asyncio.to_thread(_IP_FORWARD.write_text, "1\n")
        except OSError as exc:
            raise NetworkError(f"cannot enable IPv4 forwarding: {exc}") from exc
        await _firewall.load(_firewall.host_ruleset(self.config))
        self._started = True
        log.info(
            "host network rules installed",
            extra={"prefix": self.config.prefix, "table": f"inet {self.config.prefix}"},
        )

    async def uninstall(self) -> list[str]:
        """Remove every sandbox network with our prefix and the host-wide table (tests, agent uninstall).
        `ip_forward` is left as it is: other software on the host may rely on it."""
        removed = await self.cleanup_stale()
        await self.egress.close()
        await _firewall.load(_firewall.delete_table_script(self.config.prefix))
        self._started = False
        return removed

    async def setup(
        self,
        slot: int,
        *,
        allow_internet: bool = True,
        guest_link: GuestLink = "tap",
        policy: EgressPolicy | None = None,
        sandbox_id: str = "",
    ) -> SandboxNetwork:
        """Create the netns, links, routes and rules of `slot`. On failure nothing of it is left.

        `guest_link="veth"` is for tests without a VM: a veth pair stands in for the TAP and its far end
        lives in `net.guest_netns`, set up as the guest would set up its eth0.
        """
        if not self._started:
            # Without the host table a guest could reach the host and other sandboxes' host ports.
            raise NetworkError("NetworkManager.start() has not run: the host-wide rules are missing")
        net = self.describe(slot)
        if await asyncio.to_thread(_netns.netns_exists, net.netns):
            raise NetworkError(f"netns {net.netns} already exists (slot {slot} in use?)")
        if policy is None:
            policy = OPEN if allow_internet else CLOSED
        extra = {"slot": slot, "netns": net.netns, "host_ip": net.host_ip, "policy": policy.describe()}
        try:
            await asyncio.to_thread(_netns.create_netns, net.netns)
            await _firewall.run(["ip", "netns", "exec", net.netns, "sysctl", "-q", "-w", *_NETNS_SYSCTLS])
            await asyncio.to_thread(_netns.build_links, net, guest_link)
            await self._apply(net, sandbox_id or net.netns, policy)
        except BaseException as exc:
            log.warning("network setup failed; rolling back", extra={**extra, "error": repr(exc)})
            try:
                await self.teardown(net)
            except NetworkError as cleanup:
                log.error("rollback incomplete", extra={**extra, "error": str(cleanup)})
            if isinstance(exc, OSError | NetlinkError):
                raise NetworkError(f"setting up the network of slot {slot} failed: {exc!r}") from exc
            raise
        log.info("sandbox network up", extra=extra)
        return net

    async def set_internet(self, net: SandboxNetwork, allowed: bool) -> None:
        """Allow or deny the guest's outbound internet. Denying also cuts connections already open."""
        await self.set_policy(net, net.netns, OPEN if allowed else CLOSED)

    async def set_policy(self, net: SandboxNetwork, sandbox_id: str, policy: EgressPolicy) -> None:
        """Replace the guest's egress policy now. Packets of connections already open meet the new rules
        (a tightening cuts them); the egress proxy applies it to its new connections."""
        await self._apply(net, sandbox_id, policy)
        log.info(
            "sandbox egress policy changed",
            extra={"slot": net.slot, "netns": net.netns, "sandbox": sandbox_id, "policy": policy.describe()},
        )

    def events(self, sandbox_id: str) -> list[NetworkEvent]:
        """What the egress proxy refused or intercepted lately for the sandbox, oldest first."""
        return self.egress.events(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        self.egress.forget(sandbox_id)

    async def teardown(self, net: SandboxNetwork) -> None:
        """Remove everything of `net` that exists. Missing pieces are fine, so it is safe to repeat and to
        call on a half-made network; only an unexpected kernel error raises (`NetworkError`).

        Kill the VMM first: the netns only really goes once no process is inside it.
        """
        await self.egress.detach(net.netns)
        try:
            removed = await asyncio.to_thread(_netns.destroy, net)
        except (OSError, NetlinkError) as exc:
            raise NetworkError(f"tearing down the network of slot {net.slot} failed: {exc!r}") from exc
        if removed:
            log.info(
                "sandbox network removed", extra={"slot": net.slot, "netns": net.netns, "removed": removed}
            )

    def list_existing(self) -> list[int]:
        """Slots whose netns exists (candidates for adoption after an agent restart)."""
        slots = set()
        for name in _netns.list_netns():
            match = self.config.netns_re.match(name)
            if match and not match.group(2):
                slots.add(int(match.group(1)))
        return sorted(slots)

    async def cleanup_stale(self, keep: set[int] | frozenset[int] = frozenset()) -> list[str]:
        """Remove every netns and root-namespace link with our prefix whose slot is not in `keep`, and
        return their names. Run at agent start so a previous run's leftovers never linger. (The netns's
        own rules and the host routes go with the netns and links.)"""
        names_ns, names_links = await asyncio.to_thread(lambda: (_netns.list_netns(), _netns.list_links()))
        stale_ns = [
            n for n in names_ns if (m := self.config.netns_re.match(n)) and int(m.group(1)) not in keep
        ]
        stale_links = [
            n for n in names_links if (m := self.config.link_re.match(n)) and int(m.group(1)) not in keep
        ]

        def remove() -> list[str]:
            removed = [name for name in stale_links if _netns.delete_link(name)]
            # "-guest" (test-only) sorts after its sandbox netns; order does not matter for removal.
            removed += [name for name in stale_ns if _netns.remove_netns(name)]
            return removed

        removed = await asyncio.to_thread(remove)
        if removed:
            log.info(
                "stale sandbox networks removed", extra={"prefix": self.config.prefix, "removed": removed}
            )
        return removed

    async def _apply(self, net: SandboxNetwork, sandbox_id: str, policy: EgressPolicy) -> None:
        """The proxy's listeners first (the rules may redirect to them), then the rules, then the shaping."""
        host_addresses = await asyncio.to_thread(_netns.host_ipv4_addresses)
        self._host_addresses = frozenset(host_addresses)
        if policy.needs_proxy or self.egress.attached(net.netns):
            await self.egress.attach(sandbox_id, net.netns, net.gateway, policy)
        script = _firewall.sandbox_ruleset(
            net, self.config.prefix, host_addresses=host_addresses, policy=policy
        )
        await _firewall.load(script, netns=net.netns)
        await _shape(net.netns, net.ns_veth, policy.egress_bps)


async def _shape(netns: str, veth: str, egress_bps: int) -> None:
    """The guest's outbound bandwidth: a token bucket on the netns's veth (its way out), or none."""
    base = ["ip", "netns", "exec", netns, "tc", "qdisc"]
    if egress_bps <= 0:
        with contextlib.suppress(NetworkError):  # no qdisc of ours: nothing to remove
            await _firewall.run([*base, "del", "dev", veth, "root"], quiet=True)
        return
    burst = max(egress_bps // 8 // 20, 16 * 1024)  # 50 ms worth, at least 16 KiB
    await _firewall.run([*base, "replace", "dev", veth, "root", "tbf", "rate", f"{egress_bps}bit",
                         "burst", str(burst), "latency", "100ms"])  # fmt: skip
