"""envd's start-up settings (command-line flags)."""

from __future__ import annotations

from dataclasses import dataclass

#: The envd version reported to clients. The official E2B SDK enables every feature from 0.6.4 on.
ENVD_VERSION = "0.6.4"

#: The port E2B clients expect envd on.
DEFAULT_PORT = 49983


@dataclass(frozen=True, slots=True)
class EnvdConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    #: Development mode: runs as a plain process on a Linux host. The clock is never set and the
    #: default user is whoever runs envd (inside a VM, /init names it).
    dev: bool = False
    #: Largest single upload accepted by POST /files, in bytes (None: only the free disk space limits it).
    max_upload_bytes: int | None = None
    #: Seconds an exited process stays reachable by Connect, so a late client still gets its end event.
    exited_retention_s: float = 60.0
    #: Seconds a polled watcher (CreateWatcher) may go unpolled before it is removed.
    watcher_idle_s: float = 600.0
    #: The host's address as the guest sees it (its gateway). While envd has no access token (after a
    #: boot, or a restore of a snapshot taken before /init, until the host's /init sets one), only this
    #: address may call it. None: anyone (development, where envd runs as a plain process).
    host_address: str | None = None
