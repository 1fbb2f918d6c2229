"""Joining a control plane: registration with a one-time token, the saved credentials, heartbeats.

`wrenn agent --register TOKEN --control-plane URL --address IP:PORT` trades the token for credentials
(`POST /v1/hosts/register`): a host JWT, a refresh token and a certificate from the control plane's
internal CA, saved to `{data_dir}/host-credentials.json` (mode 0600). From then on the agent serves its API
over TLS and accepts only clients with a certificate from that CA (the control plane), and heartbeats every
30 s with `X-Host-Token`. A 401/403 refreshes the credentials (and the served certificate, without a
restart); a 404 means the host was deleted: the agent destroys its sandboxes, deletes the credentials and
exits. Without credentials the agent serves plain HTTP (the `--local-agent` setup).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography import x509

from wrenn import images

from ._private import write_private

log = logging.getLogger("wrenn.agent.registration")
CREDENTIALS_FILE = "host-credentials.json"
TLS_DIR = "host-tls"
#: Refresh the credentials when the certificate has less than this left.
REFRESH_MARGIN = timedelta(days=2)


class RegistrationError(RuntimeError):
    pass


@dataclass
class Credentials:
    host_id: str
    control_plane: str
    address: str
    token: str
    refresh_token: str
    cert_pem: str
    key_pem: str
    ca_cert_pem: str

    @classmethod
    def from_response(cls, body: dict[str, Any], control_plane: str, address: str) -> Credentials:
        try:
            return cls(
                host_id=body["host"]["id"],
                control_plane=control_plane,
                address=address,
                token=body["token"],
                refresh_token=body["refresh_token"],
                cert_pem=body["cert_pem"],
                key_pem=body["key_pem"],
                ca_cert_pem=body["ca_cert_pem"],
            )
        except (KeyError, TypeError) as exc:
            raise RegistrationError(f"unexpected answer from the control plane: missing {exc}") from None

    def cert_not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.cert_pem.encode()).not_valid_after_utc


class CredentialStore:
    """The credentials file and the PEM files the TLS server loads, under the agent's data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / CREDENTIALS_FILE
        self.tls_dir = data_dir / TLS_DIR

    def load(self) -> Credentials | None:
        try:
            return Credentials(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise RegistrationError(f"{self.path} is damaged ({exc}); remove it and register again") from None

    def save(self, creds: Credentials) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(asdict(creds), indent=2))
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        write_private(self.cert_file, creds.cert_pem)
        write_private(self.key_file, creds.key_pem)
        write_private(self.ca_file, creds.ca_cert_pem)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.tls_dir, ignore_errors=True)

    @property
    def cert_file(self) -> Path:
        return self.tls_dir / "cert.pem"

    @property
    def key_file(self) -> Path:
        return self.tls_dir / "key.pem"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"


def host_images(data_dir: Path) -> list[dict[str, Any]]:
    """The base images built here, as the control plane learns them (registration, heartbeats and
    `GetHostInfo.images`)."""
    return [
        {
            "name": image.template,
            "version": image.version,
            "envd_version": image.envd_version,
            "kernel_version": image.kernel_version,
            "description": image.description,
            "aliases": image.aliases(),
            "memory_mb": image.memory_mb(),
        }
        for image in images.available(data_dir)
    ]


def host_usage(data_dir: Path) -> dict[str, Any]:
    """Capacity and use, sent at registration and with every heartbeat: placement weighs them."""
    disk = shutil.disk_usage(data_dir)
    return {
        "cpu_cores": os.cpu_count() or 1,
        "cpu_load": os.getloadavg()[0],
        "memory_mb": psutil.virtual_memory().total >> 20,
        "disk_gb": disk.total >> 30,
        "disk_free_mb": disk.free >> 20,
    }


def host_facts(data_dir: Path, slots: int, accelerator: str, proxy_port: int) -> dict[str, Any]:
    return {
        "proxy_port": proxy_port,
        "images": host_images(data_dir),
        "arch": platform.machine(),
        **host_usage(data_dir),
        "slot_capacity": slots,
        "accelerator": accelerator,
    }


def _error_of(r: httpx.Response) -> str:
    try:
        error = r.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:200]}"


async def register(control_plane: str, token: str, address: str, facts: dict[str, Any]) -> Credentials:
    url = control_plane.rstrip("/") + "/v1/hosts/register"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(url, json={"token": token, "address": address, **facts})
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the control plane at {control_plane}: {exc}") from None
    if r.status_code != 201:
        raise RegistrationError(f"registration refused: {_error_of(r)}")
    return Credentials.from_response(r.json(), control_plane.rstrip("/"), address)


#: Heartbeats failed in a row after which the agent calls itself disconnected from the control plane.
DISCONNECTED_AFTER = 3


class LinkState:
    """Whether the control plane answers this agent's heartbeats: disconnected after `DISCONNECTED_AFTER`
    failures in a row, connected again on the next one answered. Each change is logged once; the VMs run on
    either way (the agent never stops a sandbox for want of its control plane)."""

    def __init__(self) -> None:
        self.connected = True
        self.failures = 0

    def record(self, answered: bool, control_plane: str) -> None:
        if answered:
            if not self.connected:
                log.info(
                    "control plane reachable again: reconnected",
                    extra={"control_plane": control_plane, "failed_heartbeats": self.failures},
                )
            self.connected, self.failures = True, 0
            return
        self.failures += 1
        if self.connected and self.failures >= DISCONNECTED_AFTER:
            self.connected = False
            log.warning(
                "disconnected from the control plane: heartbeats keep failing; sandboxes keep running here "
                "and heartbeats go on until it answers",
                extra={"control_plane": control_plane, "failed_heartbeats": self.failures},
            )


class HostLink:
    """Heartbeats and credential refreshes of a registered agent."""

    def __init__(
        self,
        store: CredentialStore,
        creds: Credentials,
        interval_s: float,
        *,
        ssl_contexts: Callable[[], list[ssl.SSLContext | None]],
        on_deleted: Callable[[], Any],
        proxy_port: int = 0,
        state: LinkState | None = None,
    ) -> None:
        self.store = store
        self.creds = creds
        self.interval_s = interval_s
        self._ssl_contexts = ssl_contexts
        self._proxy_port = proxy_port
        self._on_deleted = on_deleted
        self._client = httpx.AsyncClient(timeout=30)
        self._task: asyncio.Task[None] | None = None
        self.state = state or LinkState()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wrenn-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            if await self.heartbeat() == "deleted":
                return
            await asyncio.sleep(self.interval_s)

    async def heartbeat(self) -> str:
        """One heartbeat, counted in `state`: what `beat` says, or "failed" when it raised."""
        try:
            result = await self.beat()
        except asyncio.CancelledError:
            raise
        except Exception:  # the heartbeat must survive anything and retry
            log.exception("heartbeat failed")
            result = "failed"
        self.state.record(result != "failed", self.creds.control_plane)
        return result

    async def beat(self) -> str:
        """One heartbeat: "ok", "refreshed", "deleted" or "failed"."""
        if self.creds.cert_not_after() - datetime.now(UTC) < REFRESH_MARGIN:
            await self.refresh()
        url = f"{self.creds.control_plane}/v1/hosts/{self.creds.host_id}/heartbeat"
        try:
            r = await self._client.post(
                url,
                headers={"X-Host-Token": self.creds.token},
                json={
                    "proxy_port": self._proxy_port,
                    "images": host_images(self.store.data_dir),
                    **host_usage(self.store.data_dir),
                },
            )
        except httpx.HTTPError as exc:
            log.warning(
                "heartbeat: control plane unreachable",
                extra={"error": str(exc), "failures": self.state.failures + 1},
            )
            return "failed"
        if r.status_code == 204:
            return "ok"
        if r.status_code == 404:
            log.warning("this host was deleted from the control plane: dropping credentials and exiting")
            self.store.delete()
            result = self._on_deleted()
            if asyncio.iscoroutine(result):
                await result
            return "deleted"
        if r.status_code in (401, 403):
            if await self.refresh():
                return "refreshed"
            return "failed"
        log.warning("heartbeat refused", extra={"error": _error_of(r)})
        return "failed"

    async def refresh(self) -> bool:
        url = f"{self.creds.control_plane}/v1/hosts/auth/refresh"
        try:
            r = await self._client.post(url, json={"refresh_token": self.creds.refresh_token})
        except httpx.HTTPError as exc:
            log.warning("credential refresh: control plane unreachable", extra={"error": str(exc)})
            return False
        if r.status_code != 200:
            log.error("credential refresh refused: register this host again", extra={"error": _error_of(r)})
            return False
        self.creds = Credentials.from_response(r.json(), self.creds.control_plane, self.creds.address)
        self.store.save(self.creds)
        for context in self._ssl_contexts():
            if context is not None:  # new handshakes present the new certificate
                context.load_cert_chain(self.store.cert_file, self.store.key_file)
        log.info("credentials refreshed", extra={"host": self.creds.host_id})
        return True
