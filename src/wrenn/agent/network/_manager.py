"""`NetworkManager`: sets up and tears down sandbox networks and owns the host-wide rules."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from . import _firewall, _netns
from ._addresses import NetworkConfig, NetworkError, SandboxNetwork
from ._netns import GuestLink
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
        await _firewall.load(_firewall.delete_table_script(self.config.prefix))
        self._started = False
        return removed

    async def setup(
        self, slot: int, *, allow_internet: bool, guest_link: GuestLink = "tap"
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
        extra = {"slot": slot, "netns": net.netns, "host_ip": net.host_ip, "internet": allow_internet}
        try:
            await asyncio.to_thread(_netns.create_netns, net.netns)
            await _firewall.run(["ip", "netns", "exec", net.netns, "sysctl", "-q", "-w", *_NETNS_SYSCTLS])
            await asyncio.to_thread(_netns.build_links, net, guest_link)
            await self._load_sandbox_rules(net, allow_internet)
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
        await self._load_sandbox_rules(net, allowed)
        log.info(
            "sandbox internet changed", extra={"slot": net.slot, "netns": net.netns, "internet": allowed}
        )

    async def teardown(self, net: SandboxNetwork) -> None:
        """Remove everything of `net` that exists. Missing pieces are fine, so it is safe to repeat and to
        call on a half-made network; only an unexpected kernel error raises (`NetworkError`).

        Kill the VMM first: the netns only really goes once no process is inside it.
        """
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

    async def _load_sandbox_rules(self, net: SandboxNetwork, allow_internet: bool) -> None:
        host_addresses = await asyncio.to_thread(_netns.host_ipv4_addresses)
        script = _firewall.sandbox_ruleset(
            net, self.config.prefix, allow_internet=allow_internet, host_addresses=host_addresses
        )
        await _firewall.load(script, netns=net.netns)
