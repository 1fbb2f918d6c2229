"""Firecracker's HTTP API over its unix socket: one method per endpoint, each building its own body.

The bodies follow Firecracker's swagger spec (`tests/agent/firecracker-api.yaml`); the test suite records
every request the driver sends and validates it against that spec.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import httpx

from ._driver import DriverError, console_tail

log = logging.getLogger(__name__)

#: Called with every request before it is sent (httpx `event_hooks["request"]`); tests record them.
RequestHook = Callable[[httpx.Request], Awaitable[None]]
JSONObject = dict[str, Any]

ActionType = Literal["InstanceStart", "SendCtrlAltDel", "FlushMetrics"]
VmState = Literal["Paused", "Resumed"]
SnapshotType = Literal["Full", "Diff"]

#: Pre-boot configuration calls answer in milliseconds; a missing answer means the VMM is stuck.
DEFAULT_TIMEOUT_S = 10.0
#: Writing or mapping guest memory scales with its size (about 350 ms per 256 MiB measured here).
SNAPSHOT_TIMEOUT_S = 600.0


class FirecrackerAPIError(DriverError):
    """Firecracker answered an API call with an error, or did not answer at all (`status` None)."""

    def __init__(
        self, method: str, path: str, status: int | None, fault_message: str, console_tail: str = ""
    ) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"firecracker {method} {path} failed ({where}): {fault_message}", console_tail)
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


def _fault_message(response: httpx.Response) -> str:
    """Firecracker's `Error.fault_message`, or the raw body when the answer is not the documented shape."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        return str(body["fault_message"])
    return response.text.strip()


class FirecrackerAPI:
    """A client for one Firecracker process's API socket. Errors carry the console tail of `console_log`."""

    def __init__(
        self,
        socket_path: Path,
        console_log: Path,
        *,
        request_hook: RequestHook | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.socket_path = socket_path
        self._console_log = console_log
        hooks: dict[str, list[Callable[..., Any]]] = {"request": [request_hook]} if request_hook else {}
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=timeout_s,
            event_hooks=hooks,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self, method: str, path: str, body: JSONObject | None = None, *, timeout_s: float | None = None
    ) -> httpx.Response:
        started = time.monotonic()
        timeout = self._client.timeout if timeout_s is None else httpx.Timeout(timeout_s)
        try:
            response = await self._client.request(method, path, json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise FirecrackerAPIError(
                method, path, None, f"{type(exc).__name__}: {exc}", console_tail(self._console_log)
            ) from exc
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        if response.is_error:
            fault = _fault_message(response)
            log.warning(
                "firecracker api call failed",
                extra={
                    "method": method,
                    "path": path,
                    "status": response.status_code,
                    "fault_message": fault,
                    "elapsed_ms": elapsed_ms,
                },
            )
            raise FirecrackerAPIError(
                method, path, response.status_code, fault, console_tail(self._console_log)
            )
        log.debug(
            "firecracker api call",
            extra={"method": method, "path": path, "status": response.status_code, "elapsed_ms": elapsed_ms},
        )
        return response

    # --- one method per endpoint; each builds its body here and nowhere else ---

    async def describe_instance(self) -> JSONObject:
        """GET / -> InstanceInfo (`app_name`, `id`, `state`, `vmm_version`)."""
        response = await self._call("GET", "/")
        info = response.json()
        if not isinstance(info, dict):
            raise FirecrackerAPIError("GET", "/", response.status_code, f"unexpected answer: {response.text}")
        return info

    async def put_machine_config(
        self, *, vcpu_count: int, mem_size_mib: int, smt: bool = False, track_dirty_pages: bool = False
    ) -> None:
        body: JSONObject = {
            "vcpu_count": vcpu_count,
            "mem_size_mib": mem_size_mib,
            "smt": smt,
            "track_dirty_pages": track_dirty_pages,
        }
        await self._call("PUT", "/machine-config", body)

    async def put_boot_source(
        self, *, kernel_image_path: Path, boot_args: str, initrd_path: Path | None
    ) -> None:
        body: JSONObject = {"kernel_image_path": str(kernel_image_path), "boot_args": boot_args}
        if initrd_path is not None:
            body["initrd_path"] = str(initrd_path)
        await self._call("PUT", "/boot-source", body)

    async def put_drive(
        self, drive_id: str, *, path_on_host: Path, is_root_device: bool, is_read_only: bool
    ) -> None:
        body: JSONObject = {
            "drive_id": drive_id,
            "path_on_host": str(path_on_host),
            "is_root_device": is_root_device,
            "is_read_only": is_read_only,
        }
        await self._call("PUT", f"/drives/{drive_id}", body)

    async def put_network_interface(self, iface_id: str, *, host_dev_name: str, guest_mac: str) -> None:
        body: JSONObject = {"iface_id": iface_id, "host_dev_name": host_dev_name, "guest_mac": guest_mac}
        await self._call("PUT", f"/network-interfaces/{iface_id}", body)

    async def action(self, action_type: ActionType) -> None:
        await self._call("PUT", "/actions", {"action_type": action_type})

    async def patch_vm(self, state: VmState) -> None:
        await self._call("PATCH", "/vm", {"state": state})

    async def create_snapshot(
        self, *, snapshot_path: Path, mem_file_path: Path, snapshot_type: SnapshotType
    ) -> None:
        body: JSONObject = {
            "snapshot_type": snapshot_type,
            "snapshot_path": str(snapshot_path),
            "mem_file_path": str(mem_file_path),
        }
        await self._call("PUT", "/snapshot/create", body, timeout_s=SNAPSHOT_TIMEOUT_S)

    async def load_snapshot(self, *, snapshot_path: Path, mem_file_path: Path, resume_vm: bool) -> None:
        body: JSONObject = {
            "snapshot_path": str(snapshot_path),
            "mem_backend": {"backend_type": "File", "backend_path": str(mem_file_path)},
            "resume_vm": resume_vm,
        }
        await self._call("PUT", "/snapshot/load", body, timeout_s=SNAPSHOT_TIMEOUT_S)
