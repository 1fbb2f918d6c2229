"""Putting the host agent together: pick the driver and accelerator, then serve the Connect API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from wrenn import images
from wrenn._shared import asgiproxy
from wrenn._shared.logs import RequestIdMiddleware
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceASGIApplication

from ._access import RequireToken, load_or_create_token
from ._cgroup import Cgroups, Limits, kill_all
from ._config import AgentConfig
from ._manager import SandboxManager
from ._prometheus import Operations, with_metrics
from ._proxy import ProxyApp
from ._registration import (
    Credentials,
    CredentialStore,
    HostLink,
    LinkState,
    RegistrationError,
    host_facts,
    register,
)
from ._service import AgentService
from .network import NetworkConfig, NetworkManager
from .vmm import Accelerator, Confinement, Driver, Jail
from .vmm._probe import AcceleratorChoice, choose
from .vmm.qemu import QemuDriver

log = logging.getLogger("wrenn.agent")


class AgentError(RuntimeError):
    pass


def make_driver(config: AgentConfig) -> Driver:
    jail = Jail(None if config.insecure else config.jail_dir)
    if config.vmm == "qemu":
        return QemuDriver(config.qemu_binary, jail=jail)
    if config.vmm == "firecracker":
        from .vmm.firecracker import FirecrackerDriver

        if config.firecracker_binary is None or not config.firecracker_binary.exists():
            raise AgentError(
                "--vmm firecracker needs --firecracker-binary pointing at a firecracker executable"
            )
        return FirecrackerDriver(config.firecracker_binary, jail=jail)
    raise AgentError(f"unknown vmm {config.vmm!r} (qemu or firecracker)")


async def check_jail(config: AgentConfig, driver: Driver, cgroups: Cgroups, accelerator: Accelerator) -> None:
    """Start a VMM in a jail as every VM will get one, and check it from outside (uid, capabilities,
    seccomp, root, cgroup). Anything short of it stops the agent, unless `--insecure` says to go on (then
    it is logged, loudly, with every sandbox)."""
    missing = [f"cgroup controller {c!r}" for c in cgroups.missing()]
    if not config.insecure:
        group = f"{config.name_prefix}-jail-check"
        procs = cgroups.create(group, Limits(memory_bytes=256 << 20, cpus=1.0, pids=64))
        confinement = Confinement(config.vmm_uid(0), config.vmm_uid(0), procs, 1 << 20)
        try:
            missing += await driver.check_jail(confinement, accelerator)
        except OSError as exc:
            missing.append(f"cannot start a jailed VMM: {exc}")
        finally:
            kill_all(cgroups, group)
            cgroups.remove(group)
    elif not missing:
        missing = ["the jail is turned off (--insecure)"]
    if not missing:
        log.info("vmm jail checked", extra={"uid_base": config.vmm_uid(0), "cgroups": cgroups.version.value})
        return
    if not config.insecure:
        raise AgentError(
            "cannot confine the VMMs on this host: " + "; ".join(missing)
            + ". Fix that (see docs/security.md), or run with --insecure to go on without a jail."
        )  # fmt: skip
    log.warning(
        "INSECURE: VMMs run without their jail (as root, sharing the host's file system)",
        extra={"missing": "; ".join(missing)},
    )


async def choose_accelerator(config: AgentConfig, driver: Driver) -> AcceleratorChoice:
    image = images.find(config.default_template, config.data_dir)
    if image is None:
        if config.accelerator is not None:
            return AcceleratorChoice(config.accelerator, "forced by configuration")
        raise AgentError(
            f"no {config.default_template!r} image in {config.data_dir}: build it first (wrenn image build)"
        )
    if driver.capabilities.kvm_only:
        return AcceleratorChoice(Accelerator.KVM, f"{driver.name} runs only on KVM")
    return await choose(
        image.vmlinuz,
        config.data_dir / "accelerator.json",
        qemu_binary=config.qemu_binary,
        force=config.accelerator,
        reprobe=config.reprobe,
    )


class _SignalFreeServer(uvicorn.Server):
    """The traffic listener's server: the API server owns the process's signals and stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Agent:
    """The host agent: a sandbox manager behind the HostAgentService Connect API."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.manager: SandboxManager | None = None
        self._server: uvicorn.Server | None = None
        self._proxy_server: uvicorn.Server | None = None
        self._cgroups = Cgroups(parent="wrenn")
        self._own_group: Path | None = None

    async def start(self) -> SandboxManager:
        if os.geteuid() != 0:
            raise AgentError("the host agent needs root (network namespaces, TAP devices, cgroups)")
        # Everything the agent (and what it runs: qemu-img, cp, tar) creates is its own alone: sandboxes'
        # directories, disks, snapshots, templates, archives, logs, state.
        os.umask(0o077)
        if self.config.memory_limit_mb:
            self._own_group = self._cgroups.limit_self(
                f"{self.config.name_prefix}.agent", self.config.memory_limit_mb << 20
            )
        driver = make_driver(self.config)
        accelerator = await choose_accelerator(self.config, driver)
        await check_jail(self.config, driver, self._cgroups, accelerator.accelerator)
        log.info(
            "accelerator chosen",
            extra={
                "accelerator": accelerator.accelerator.value,
                "reason": accelerator.reason,
                "vmm": driver.name,
            },
        )
        network = NetworkManager(
            NetworkConfig(
                slots=self.config.slots,
                prefix=self.config.name_prefix,
                host_net=self.config.host_net,
                veth_net=self.config.veth_net,
                dns=self.config.dns,
                upstream_ca=str(self.config.egress_upstream_ca) if self.config.egress_upstream_ca else None,
            )
        )
        self.manager = SandboxManager(self.config, driver, accelerator, network, self._cgroups)
        await self.manager.start()
        return self.manager

    def release(self) -> None:
        """Leave the agent's own cgroup (at exit)."""
        if self._own_group is not None:
            self._cgroups.release_self(self._own_group)
            self._own_group = None

    async def credentials(self, manager: SandboxManager) -> Credentials | None:
        """The saved credentials; registering first when given a token and none are saved."""
        store = CredentialStore(self.config.data_dir)
        try:
            creds = store.load()
            if creds is None and self.config.register_token:
                assert self.config.control_plane and self.config.address
                facts = host_facts(
                    self.config.data_dir,
                    self.config.slots,
                    manager.accelerator.accelerator.value,
                    self.config.proxy_port,
                )
                creds = await register(
                    self.config.control_plane, self.config.register_token, self.config.address, facts
                )
                store.save(creds)
                log.info("registered with the control plane", extra={"host": creds.host_id})
            elif creds is not None and self.config.register_token:
                log.info("already registered: ignoring --register", extra={"host": creds.host_id})
        except RegistrationError as exc:
            raise AgentError(str(exc)) from None
        if creds is not None and self.config.control_plane:
            creds.control_plane = self.config.control_plane.rstrip("/")
        return creds

    async def serve(self) -> None:
        manager = await self.start()
        try:
            creds = await self.credentials(manager)
        except BaseException:
            await manager.close()
            raise
        store = CredentialStore(self.config.data_dir)
        registry = CollectorRegistry()  # /metrics: the agent's own, never the process-wide one
        service = AgentService(
            manager,
            on_terminate=self.shutdown,
            proxy_port=self.config.proxy_port,
            operations=Operations(registry),
        )
        api: asgiproxy.ASGIApp = HostAgentServiceASGIApplication(service)
        sandboxes = lambda: list(manager.sandboxes.values())  # noqa: E731
        link_state = LinkState() if creds is not None else None
        api = with_metrics(api, sandboxes, self.config.slots, registry, manager.pool.stats, link_state)
        # One client for all proxied traffic, for the agent's life. No pooled connections: a guest's
        # address is reused by the next sandbox in its slot (or by itself after a pause), and a pooled
        # connection to it would be dead; a dial over the local veth costs next to nothing.
        upstream = asgiproxy.new_client(keepalive=False)
        proxy: asgiproxy.ASGIApp = ProxyApp(manager, upstream)
        tls: dict[str, object] = {}
        if creds is not None:  # registered: mutual TLS on both listeners, the control plane's cert only
            tls = {
                "ssl_certfile": str(store.cert_file),
                "ssl_keyfile": str(store.key_file),
                "ssl_ca_certs": str(store.ca_file),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
            }
        else:  # local: plain HTTP, so a secret only root can read
            try:
                token = load_or_create_token(self.config.resolved_api_token_file)
            except (OSError, ValueError) as exc:
                await manager.close()
                raise AgentError(f"the API token: {exc}") from None
            api, proxy = RequireToken(api, token), RequireToken(proxy, token)
        # the control plane's X-Request-Id (or a new one) on the log records of a call and its calls to envd
        api = RequestIdMiddleware(api, echo=False)
        config = self._uvicorn_config(api, self.config.port, tls)
        proxy_config = self._uvicorn_config(proxy, self.config.proxy_port, tls)
        self._server = uvicorn.Server(config)
        self._proxy_server = _SignalFreeServer(proxy_config)
        link: HostLink | None = None
        if creds is not None:

            async def deleted() -> None:
                await manager.terminate()
                self.shutdown()

            def contexts() -> list[ssl.SSLContext | None]:
                return [config.ssl, proxy_config.ssl]

            link = HostLink(
                store, creds, self.config.heartbeat_interval_s, ssl_contexts=contexts, on_deleted=deleted,
                proxy_port=self.config.proxy_port, state=link_state,
            )  # fmt: skip
            link.start()
        log.info(
            "agent listening",
            extra={
                "host": self.config.host,
                "port": self.config.port,
                "proxy_port": self.config.proxy_port,
                "tls": creds is not None,
            },
        )
        proxy_task = asyncio.create_task(self._proxy_server.serve())
        try:
            await self._server.serve()
        finally:
            self._proxy_server.should_exit = True
            await asyncio.gather(proxy_task, return_exceptions=True)
            if link is not None:
                await link.stop()
            await upstream.aclose()
            await manager.close()

    def _uvicorn_config(self, app: asgiproxy.ASGIApp, port: int, tls: dict[str, object]) -> uvicorn.Config:
        config = uvicorn.Config(
            app, host=self.config.host, port=port, log_config=None, access_log=False, lifespan="off",
            **tls,  # type: ignore[arg-type]
        )  # fmt: skip
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
        return config

    def shutdown(self) -> None:
        if self._proxy_server is not None:
            self._proxy_server.should_exit = True
        if self._server is not None:
            self._server.should_exit = True
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(os.getpid(), signal.SIGTERM)


def run(config: AgentConfig) -> None:
    agent = Agent(config)
    try:
        asyncio.run(agent.serve())
    except AgentError as exc:
        raise SystemExit(f"wrenn agent: {exc}") from None
    finally:
        agent.release()
