"""Starting a VMM in its jail: the agent's side of `_jailer.py`.

Each VMM runs as a uid of its own (none of the host's users, no groups), in the VM's cgroup from its first
instruction, in the sandbox's network namespace, in a mount namespace whose root holds only its program,
its libraries and data files (read-only), the VM's kernel and initrd (read-only), the VM's RAM file and the
device nodes it needs, with no capability in any set, `no_new_privs`, and a file size limit (its disk's).
Disks, the TAP device, QMP and the console reach it as open descriptors; it opens no host path by name but
those bound in. What the jail holds is checkable from outside: `/proc/<pid>/status` (Uid, CapEff, CapPrm,
CapBnd, NoNewPrivs, and Seccomp from the VMM's own filter), `/proc/<pid>/root`, the VM's cgroup.

A jail that cannot be built on a host is found at start (`Jail.check`); the agent then refuses to start
unless told `--insecure`, in which case the VMM runs as today's root process (`confine=False`: the same
jailer, which still does the cgroup, network namespace, RAM file and TAP, but builds no root and drops
nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ._driver import Accelerator, VMSpec

log = logging.getLogger("wrenn.agent.jail")

JAILER = Path(__file__).with_name("_jailer.py")


@dataclass(frozen=True, slots=True)
class Bind:
    """A host path the VMM sees at `dst` in its root (the same path, as a rule)."""

    src: Path
    dst: Path
    write: bool = False
    exec: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"src": str(self.src), "dst": str(self.dst), "write": self.write, "exec": self.exec}


@dataclass(frozen=True, slots=True)
class Device:
    """A device node made in the jail; `owned` ones belong to the VM's uid (mode 0600)."""

    path: str
    major: int
    minor: int
    mode: int = 0o600
    owned: bool = True


DEVICES = (Device("/dev/null", 1, 3, 0o666, owned=False), Device("/dev/urandom", 1, 9, 0o444, owned=False))
KVM = Device("/dev/kvm", 10, 232)
NET_TUN = Device("/dev/net/tun", 10, 200)


def ldd(path: Path) -> list[Path]:
    """The shared libraries `path` loads (with the dynamic loader), as the loader names them."""
    try:
        out = subprocess.run(
            ["ldd", str(path)], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        Path(m.group(1)) for line in out.splitlines() if (m := re.search(r"(/\S+)", line.split("=>")[-1]))
    ]


@functools.cache
def program_binds(binary: str) -> tuple[Bind, ...]:
    """What a VMM program needs to run inside an otherwise empty root: itself and its libraries (read-only,
    executable), and for QEMU its accelerator modules and firmware directories (read-only)."""
    program = Path(shutil.which(binary) or binary)
    files = [program, *ldd(program)]
    dirs: list[Path] = []
    prefix = program.resolve().parent.parent
    for moddir in (prefix / "lib" / f"{os.uname().machine}-linux-gnu" / "qemu", prefix / "lib64" / "qemu"):
        if moddir.is_dir():
            dirs.append(moddir)
            for module in moddir.glob("accel-*.so"):
                files += ldd(module)
    if "qemu" in program.name:
        for datadir in ("share/qemu", "share/seabios", "lib/ipxe/qemu"):
            if (prefix / datadir).is_dir():
                dirs.append(prefix / datadir)
    binds = {f: Bind(f.resolve(), f, exec=True) for f in files if f.exists()}
    binds.update({d: Bind(d.resolve(), d, exec=d.name == "qemu" and "lib" in d.parts) for d in dirs})
    return tuple(binds.values())


@dataclass(frozen=True, slots=True)
class MemoryFile:
    """The guest RAM file the jailer creates (0600, the VM's uid): `size` bytes, filled from `copy_from`."""

    path: Path
    size: int
    copy_from: Path | None = None


class Jail:
    """How this host starts its VMMs: jailed, or (`root` None) as root with only cgroup and netns."""

    def __init__(self, root: Path | None) -> None:
        #: An empty directory: each jail's tmpfs is mounted on it inside the VMM's own mount namespace.
        self.root = root

    @property
    def confine(self) -> bool:
        return self.root is not None

    def spec(
        self,
        argv: Sequence[str],
        vm: VMSpec,
        *,
        binds: Sequence[Bind] = (),
        devices: Sequence[Device] = (),
        memory: MemoryFile | None = None,
        tap_fd: int | None = None,
        tap_owner: bool = False,
    ) -> dict[str, Any]:
        """The jailer's instructions for starting `argv` as the VMM of `vm`: `binds` and `devices` in its
        root beside its program's files, its RAM file, and its TAP device either opened onto `tap_fd`
        or (`tap_owner`) given to its uid, for a VMM that opens it by name."""
        confinement = vm.confinement
        jailed = self.confine and confinement is not None
        devices = [*DEVICES, *devices] + ([KVM] if vm.accelerator is Accelerator.KVM else [])
        spec: dict[str, Any] = {
            "argv": list(argv),
            "uid": confinement.uid if jailed and confinement else 0,
            "gid": confinement.gid if jailed and confinement else 0,
            "cgroups": [str(p) for p in confinement.cgroups] if confinement else [],
            "netns": f"/run/netns/{vm.netns}" if vm.netns else None,
            "tap": {"name": vm.tap, "fd": tap_fd, "owned": tap_owner} if vm.tap else None,
            "memory": {**asdict(memory), "path": str(memory.path), "copy_from": str(memory.copy_from or "")}
            if memory
            else None,
            "limits": {"CORE": 0, "NOFILE": 4096}
            | ({"FSIZE": confinement.max_file_bytes} if confinement else {}),
            "jail": jailed,
        }
        if jailed:
            spec["root"] = str(self.root)
            spec["binds"] = [b.to_json() for b in (*program_binds(argv[0]), *binds)]
            spec["devices"] = [asdict(d) for d in devices]
        return spec

    async def spawn(
        self,
        spec: dict[str, Any],
        *,
        pass_fds: Sequence[int],
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
    ) -> asyncio.subprocess.Process:
        """Run the jailer, which execs the VMM: the process is the VMM's from then on (same pid)."""
        if self.root is not None:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(JAILER), json.dumps(spec),
            stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=tuple(pass_fds),
            start_new_session=True,
        )  # fmt: skip

    async def check(
        self,
        argv: Sequence[str],
        vm: VMSpec,
        *,
        seccomp: bool,
        binds: Sequence[Bind] = (),
        deadline_s: float = 10.0,
    ) -> list[str]:
        """Start `argv` (a VMM that sets itself up and then idles) in a jail for `vm`, and read from outside
        what the VMMs of this host would run with: what falls short, in words (empty: all is well).
        `seccomp`: the VMM installs its seccomp filter before it idles."""
        if not self.confine:
            return ["the jail is turned off (--insecure)"]
        assert vm.confinement is not None
        spec = self.spec(argv, vm, binds=binds)
        expected = {Path(b["dst"]).parts[1] for b in spec["binds"]} | {
            Path(d["path"]).parts[1] for d in spec["devices"]
        }
        proc = await self.spawn(
            spec, pass_fds=(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + deadline_s
            status: dict[str, str] = {}
            while time.monotonic() < deadline and proc.returncode is None:
                status = read_status(proc.pid)
                if status.get("Uid", "").split()[:1] == [str(vm.confinement.uid)] and (
                    not seccomp or status.get("Seccomp") == "2"
                ):
                    break
                await asyncio.sleep(0.02)
            if proc.returncode is not None:
                _, err = await proc.communicate()
                return [
                    f"the jailed VMM exited with {proc.returncode}: {err.decode(errors='replace').strip()}"
                ]
            return problems(proc.pid, status, vm.confinement.uid, expected, seccomp=seccomp)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()


def read_status(pid: int) -> dict[str, str]:
    """`/proc/<pid>/status` as a dict (empty when the process is gone)."""
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return {}


def problems(pid: int, status: dict[str, str], uid: int, top: set[str], *, seccomp: bool = True) -> list[str]:
    """How the process `pid` falls short of a jailed VMM running as `uid` whose root holds only the
    top-level entries `top`, as seen from outside."""
    found: list[str] = []
    uids = status.get("Uid", "").split()
    if uids != [str(uid)] * 4:
        found.append(f"runs as uid {uids}, not {uid}")
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        if int(status.get(key, "1"), 16) != 0:
            found.append(f"{key} is {status.get(key)}, not 0")
    if status.get("NoNewPrivs") != "1":
        found.append("no_new_privs is not set")
    if seccomp and status.get("Seccomp") != "2":
        found.append(f"seccomp mode is {status.get('Seccomp')}, not 2 (filter)")
    try:
        listed = {p.name for p in Path(f"/proc/{pid}/root").iterdir()}
    except OSError as exc:
        found.append(f"cannot list its root: {exc}")
    else:
        if not listed <= top:
            found.append(f"its root holds {sorted(listed - top)} beside what it was given")
    return found
