"""What makes one guest restored from a shared snapshot unlike its siblings: its hostname and the state
of its kernel's random number generator. Set through `/init` by the host right after a restore."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
import struct
from pathlib import Path

log = logging.getLogger("wrenn.envd")

#: <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
MAX_ENTROPY_BYTES = 512
#: Rewritten (with new random contents) every time /init reseeds the guest: programs that keep random
#: state of their own (the code interpreter's kernels) watch it and reseed when it changes.
IDENTITY_FILE = Path("/run/wrenn/identity")


def set_hostname(name: str) -> None:
    """The kernel's hostname, /etc/hostname and the 127.0.1.1 line of /etc/hosts."""
    try:
        socket.sethostname(name)
        Path("/etc/hostname").write_text(name + "\n")
        hosts = Path("/etc/hosts")
        lines = [ln for ln in hosts.read_text().splitlines() if not ln.startswith("127.0.1.1")]
        hosts.write_text("\n".join([*lines, f"127.0.1.1\t{name}"]) + "\n")
        log.info("hostname set", extra={"hostname": name})
    except OSError as exc:
        log.warning("cannot set the hostname", extra={"error": str(exc)})


def reseed(entropy: bytes) -> None:
    """Mix host-supplied randomness into the kernel's pool, credit it, and force the CRNG to reseed at
    once: every guest restored from one snapshot starts with the same CRNG state, and would otherwise hand
    out the same "random" bytes until its next scheduled reseed."""
    try:
        with open("/dev/urandom", "wb") as urandom:
            request = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
            fcntl.ioctl(urandom, RNDADDENTROPY, request)
            fcntl.ioctl(urandom, RNDRESEEDCRNG)
        log.info("random pool reseeded", extra={"bytes": len(entropy)})
    except OSError as exc:
        log.warning("cannot reseed the random pool", extra={"error": str(exc)})


def publish(path: Path) -> None:
    """Give the guest a new identity token (drawn after the reseed), atomically and world-readable."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(secrets.token_hex(16) + "\n")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot publish the guest's identity", extra={"error": str(exc), "path": str(path)})
