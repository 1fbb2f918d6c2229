"""The VMM's jailer: the small program that runs between the agent and a VMM and execs the VMM in its jail.

Run by the agent as `python -I -S _jailer.py SPEC` (SPEC is JSON; nothing but the standard library is
imported, so it starts in milliseconds). As root, in this order, it:

1. joins the VM's cgroups (so everything below, the VMM included, is charged to the VM, never to the agent);
2. creates the guest's RAM file (0600, owned by the VM's uid, sized; filled from a snapshot when asked);
3. enters the sandbox's network namespace and opens its TAP device onto a given descriptor number (the
   VMM gets the descriptor, never /dev/net/tun);
4. with `jail`: unshares a mount and an IPC namespace, builds a root of its own on a small tmpfs with only
   what the VMM needs bind-mounted in (its program and libraries read-only and executable, the VM's files,
   device nodes made for it), `pivot_root`s into it and remounts it read-only;
5. sets resource limits (file size: the disk limit; no core dumps; open files);
6. with `jail`: drops every capability (bounding, ambient, inheritable), switches to the VM's own uid and
   gid with no supplementary groups and sets `no_new_privs`;
7. execs the VMM with an empty environment.

Modelled on Firecracker's jailer. Any failure ends it with status 111 and one line on stderr (which the
agent keeps in the VM's `qemu.log`); nothing is exec'd then.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import struct
import subprocess
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT, SYS_CAPSET = 155, 126  # x86_64
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522
TUNSETIFF, TUNSETOWNER, TUNSETGROUP = 0x400454CA, 0x400454CC, 0x400454CE
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
FAILED = 111
OLD_ROOT = ".old-root"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class JailError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source or ''} on {target}",
    )


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl {option}")


def join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def make_memory_file(memory: dict[str, Any], uid: int, gid: int) -> None:
    """The guest's RAM file, created 0600 for the VM's uid; a copy of `copy_from` (sparse) when given."""
    path = memory["path"]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, uid, gid)
        if memory.get("copy_from"):
            done = subprocess.run(
                ["cp", "--sparse=always", "--", memory["copy_from"], path], capture_output=True, check=False
            )
            if done.returncode != 0:
                raise JailError(f"cannot copy guest memory: {done.stderr.decode(errors='replace').strip()}")
        if os.fstat(fd).st_size != memory["size"]:
            os.ftruncate(fd, memory["size"])
    finally:
        os.close(fd)


def enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def open_tap(name: str, target_fd: int | None, owner: tuple[int, int] | None) -> None:
    """Attach to the TAP device `name` (in the current netns) and leave it open as `target_fd`, or give it
    to `owner` (uid, gid) for a VMM that attaches to it itself."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    if owner is not None:
        fcntl.ioctl(fd, TUNSETOWNER, owner[0])
        fcntl.ioctl(fd, TUNSETGROUP, owner[1])
    if target_fd is None:
        os.close(fd)
    elif fd != target_fd:
        os.dup2(fd, target_fd, inheritable=True)
        os.close(fd)
    else:
        os.set_inheritable(fd, True)


def _makedirs(path: str) -> None:
    """Directories in the jail's tmpfs: root's, traversable, not listable by the VMM."""
    if not os.path.isdir(path):
        _makedirs(os.path.dirname(path))
        os.mkdir(path, 0o711)


def build_root(
    root: str, binds: list[dict[str, Any]], devices: list[dict[str, Any]], uid: int, gid: int
) -> None:
    """A fresh tmpfs at `root` holding only `binds` and `devices`, then `pivot_root` into it."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("wrenn-jail", root, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0711,size=256k,nr_inodes=1024")
    for bind in binds:
        source, target = bind["src"], root + bind["dst"]
        _makedirs(os.path.dirname(target))
        if os.path.isdir(source):
            _makedirs(target)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        _mount(source, target, None, MS_BIND)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
        flags |= 0 if bind.get("write") else MS_RDONLY
        flags |= 0 if bind.get("exec") else MS_NOEXEC
        _mount(None, target, None, flags)
    for device in devices:
        target = root + device["path"]
        _makedirs(os.path.dirname(target))
        os.mknod(target, 0o020000 | device.get("mode", 0o600), os.makedev(device["major"], device["minor"]))
        if device.get("owned", True):
            os.chown(target, uid, gid)
    os.mkdir(os.path.join(root, OLD_ROOT), 0o700)
    _check(_libc.syscall(SYS_PIVOT_ROOT, root.encode(), os.path.join(root, OLD_ROOT).encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/" + OLD_ROOT.encode(), MNT_DETACH), "umount the old root")
    os.rmdir("/" + OLD_ROOT)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
    # Past its file size limit a write fails (EFBIG) instead of killing the VMM: the guest sees an I/O
    # error on the disk it filled, the VM lives on.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a log pipe whose agent restarted is no reason to die


def run(spec: dict[str, Any]) -> None:
    uid, gid = int(spec["uid"]), int(spec["gid"])
    os.umask(0)  # every mode below is meant as written; the VMM itself gets 077
    join_cgroups(spec.get("cgroups", []))
    if spec.get("memory"):
        make_memory_file(spec["memory"], uid, gid)
    if spec.get("netns"):
        enter_netns(spec["netns"])
    if tap := spec.get("tap"):
        open_tap(tap["name"], tap.get("fd"), (uid, gid) if tap.get("owned") else None)
    with open("/proc/sys/kernel/cap_last_cap") as f:  # read before /proc is out of reach
        last_cap = int(f.read())
    if spec.get("jail"):
        build_root(spec["root"], spec.get("binds", []), spec.get("devices", []), uid, gid)
    set_limits(spec.get("limits", {}))
    os.umask(0o077)
    if spec.get("jail"):
        drop_privileges(uid, gid, last_cap)
    argv = spec["argv"]
    os.execve(argv[0], argv, {})  # noqa: S606 - the VMM, by absolute path


def drop_privileges(uid: int, gid: int, last_cap: int) -> None:
    """Become `uid`:`gid` with no groups, no capabilities in any set and no way to gain any back."""
    if uid == 0 or gid == 0:
        raise JailError("the VMM may not run as root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(PR_SET_KEEPCAPS, 0)
    os.setresuid(uid, uid, uid)
    header = struct.pack("Ii", CAPABILITY_VERSION_3, 0)
    _check(_libc.syscall(SYS_CAPSET, header, bytes(24)), "capset")  # effective, permitted, inheritable
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def main() -> None:
    try:
        run(json.loads(sys.argv[1]))
    except (JailError, OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"wrenn-jailer: {exc}\n")
        sys.exit(FAILED)


if __name__ == "__main__":
    main()
