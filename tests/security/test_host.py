"""The host side, as an attacker meets it: code inside a guest, a compromised VMM, a local unprivileged
user of the host.

1. Each VMM in its jail, checked from outside: a uid of its own (no user of the host's, none another VMM
   has), no capability in any set, no_new_privs, seccomp, a mount namespace whose root holds only its
   program, kernel and RAM file (read-only but the RAM), disks it holds only as descriptors (backing
   files read-only), and a cgroup with memory, pids, CPU and I/O limits.
2. Tenant files on the host: 0600/0700 from the start, root's (the RAM file its VMM's); a local user reads
   none of them.
3. What a guest can make the host hold: a foreground exec printing forever comes back truncated and the
   agent stays small; a flooded console stays under its cap; a guest filling its disk stops at its limit
   and the host keeps its free space; a create that does not fit the host's disk is refused.
4. envd before it has a token answers only the host: not the guest's own code, not a local user.

Cheap where it can be: the platform's capsule for what is read, one small sandbox (a 256 MiB disk, no envd
token) for what is done to a guest.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from connectrpc.errors import ConnectError
from protobuf import Oneof

from tests.agent._agent import AgentProcess, private_data_dir
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .conftest import Platform

pytestmark = pytest.mark.vm

MIB = 1 << 20
SMALL = "sb-small"
#: The agent's defaults these tests hold it to.
EXEC_OUTPUT_LIMIT = 4 * MIB
CONSOLE_LIMIT = 1 * MIB


@dataclass
class Vmm:
    sandbox_id: str
    pid: int
    status: dict[str, str]

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    @property
    def uid(self) -> int:
        return int(self.status["Uid"].split()[0])


def vmm(agent: AgentProcess, sandbox_id: str) -> Vmm:
    """The VMM of a running sandbox, found as the agent recorded it (and checked to be that VM's QEMU)."""
    state = json.loads((agent.data_dir / "sandboxes" / sandbox_id / "state.json").read_text())
    pid = int(state["vmm_pid"])
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"qemu" in args[0] and args[args.index(b"-name") + 1] == sandbox_id.encode()
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return Vmm(sandbox_id, pid, {k: v.strip() for k, _, v in (line.partition(":") for line in lines)})


def exec_request(sandbox_id: str, script: str, **kw: object) -> pb.ExecRequest:
    return pb.ExecRequest(sandbox_id=sandbox_id, cmd="/bin/sh", args=["-c", script], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small(platform: Platform) -> Iterator[str]:
    """A sandbox of its own for what a guest does to the host: a 256 MiB disk limit, and no envd token, so
    its envd stays in the window before /init for the whole test."""
    with platform.agent.sync_client() as client:
        request = pb.CreateSandboxRequest(
            sandbox_id=SMALL, template="minimal", vcpus=1, memory_mb=256, disk_size_mb=256
        )
        created = client.create_sandbox(request, timeout_ms=300_000)
        assert created.sandbox is not None and created.sandbox.status == pb.SandboxStatus.RUNNING
        try:
            yield SMALL
        finally:
            client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=SMALL))


# --- 1. the jail ---------------------------------------------------------------------------------


def test_each_vmm_runs_as_a_uid_of_its_own_with_nothing_to_gain(platform: Platform, small: str) -> None:
    vmms = [vmm(platform.agent, platform.capsule.capsule_id), vmm(platform.agent, small)]
    for v in vmms:
        assert v.status["Uid"].split() == [str(v.uid)] * 4 and v.uid != 0
        assert v.status["Gid"].split() == [str(v.uid)] * 4 and v.status["Groups"] == ""
        with pytest.raises(KeyError):
            pwd.getpwuid(v.uid)  # no user of the host's
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(v.status[caps], 16) == 0, (caps, v.status[caps])
        assert v.status["NoNewPrivs"] == "1" and v.status["Seccomp"] == "2"
        assert os.readlink(f"/proc/{v.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert vmms[0].uid != vmms[1].uid


def _jail_files(v: Vmm) -> list[str]:
    found = []
    for directory, _, files in os.walk(v.root):
        found += ["/" + os.path.relpath(os.path.join(directory, f), v.root) for f in files]
    return found


def test_a_vmm_sees_only_its_own_files(platform: Platform, small: str) -> None:
    agent = platform.agent
    for sandbox_id, other in ((platform.capsule.capsule_id, small), (small, platform.capsule.capsule_id)):
        v = vmm(agent, sandbox_id)
        args = Path(f"/proc/{v.pid}/cmdline").read_bytes().decode().split("\0")
        kernel, initrd = args[args.index("-kernel") + 1], args[args.index("-initrd") + 1]
        ram = re.search(r"mem-path=([^,]+)", " ".join(args)).group(1)  # type: ignore[union-attr]
        own = {kernel, initrd, ram, "/dev/null", "/dev/urandom"}
        for path in _jail_files(v):
            assert path in own or path.startswith(("/usr/", "/lib/", "/lib64/")), path
            assert other not in path and "sandboxes" not in path, path
        assert own <= set(_jail_files(v)) | {"/dev/null", "/dev/urandom"}
        assert sorted(os.listdir(v.root / "dev")) == ["null", "shm", "urandom"]
        tops = {"dev", "usr", "lib", "lib64", Path(kernel).parts[1]}  # the kernel: under the data dir
        assert set(os.listdir(v.root)) <= tops, os.listdir(v.root)
        # its kernel and initrd are read-only in its root, even to root; its RAM file is its own
        for path in (kernel, initrd):
            with pytest.raises(OSError) as err:
                os.open(v.root / path.lstrip("/"), os.O_WRONLY)
            assert err.value.strerror == "Read-only file system"
        ram_stat = Path(ram).stat()
        assert (ram_stat.st_uid, stat.S_IMODE(ram_stat.st_mode)) == (v.uid, 0o600)


def test_a_vmm_holds_its_disks_as_descriptors_the_shared_ones_read_only(platform: Platform) -> None:
    agent = platform.agent
    v = vmm(agent, platform.capsule.capsule_id)
    workdir = agent.data_dir / "sandboxes" / v.sandbox_id
    disks: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{v.pid}/fd"):
        target = os.readlink(f"/proc/{v.pid}/fd/{fd}")
        flags = int(re.search(r"flags:\s+(\d+)", Path(f"/proc/{v.pid}/fdinfo/{fd}").read_text()).group(1), 8)  # type: ignore[union-attr]
        if target.startswith("/") and not target.startswith("/dev/"):
            disks[target] = flags & os.O_ACCMODE
    assert disks.pop(str(workdir / "rootfs.qcow2")) == os.O_RDWR
    assert not any(name in target for target in disks for name in ("console.log", "qemu.log", "state.json"))
    backing = [t for t in disks if t.endswith(("rootfs.ext4", "rootfs.qcow2"))]
    assert backing and all(disks[t] == os.O_RDONLY for t in backing), disks


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    dirs = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            base = Path("/sys/fs/cgroup") if controllers == "" else Path("/sys/fs/cgroup") / controller
            dirs[controller] = base / path.lstrip("/")
    return dirs


def test_a_vmm_is_held_by_its_cgroup(platform: Platform) -> None:
    v = vmm(platform.agent, platform.capsule.capsule_id)
    dirs = _cgroup_dirs(v.pid)
    limit = (256 + 384) * MIB  # guest RAM and QEMU's own
    if (dirs.get("memory", Path("/x")) / "memory.limit_in_bytes").exists():  # cgroup v1
        assert int((dirs["memory"] / "memory.limit_in_bytes").read_text()) == limit
        assert int((dirs["pids"] / "pids.max").read_text()) == 256
        assert int((dirs["cpu"] / "cpu.cfs_quota_us").read_text()) == 100_000
        throttles = [(dirs["blkio"] / f).read_text().split() for f in ("blkio.throttle.write_bps_device",)]
        assert throttles[0] and int(throttles[0][1]) > 0
        group = dirs["memory"]
        # Out of the group of whatever started the agent in the hierarchies an init system tracks its
        # services by (systemd's named one; a hybrid layout's v2 one): systemd kills what is left in a
        # stopped service's group, and the VMs must outlive the agent (docs/operations.md, "cgroup layout").
        lines = [line.split(":", 2) for line in Path(f"/proc/{v.pid}/cgroup").read_text().splitlines()]
        tracked = [path for _, hierarchy, path in lines if hierarchy in ("name=systemd", "")]
        assert tracked and all(p.startswith("/wrenn/") and v.sandbox_id in p for p in tracked), tracked
    else:
        group = dirs["unified"]
        assert int((group / "memory.max").read_text()) == limit
        assert (group / "pids.max").read_text().strip() == "256"
        assert (group / "cpu.max").read_text().split()[0] == "100000"
    assert v.sandbox_id in group.name
    assert str(v.pid) in (group / "cgroup.procs").read_text().split()


def test_the_agent_runs_under_a_memory_limit_of_its_own(platform: Platform) -> None:
    agent_pid = platform.agent.proc.pid
    group = _cgroup_dirs(agent_pid).get("memory") or _cgroup_dirs(agent_pid)["unified"]
    limit = group / ("memory.limit_in_bytes" if (group / "memory.limit_in_bytes").exists() else "memory.max")
    assert group.name.endswith(".agent") and int(limit.read_text()) == 2048 * MIB
    vmm_pid = vmm(platform.agent, platform.capsule.capsule_id).pid
    assert str(vmm_pid) not in (group / "cgroup.procs").read_text().split()  # its VMs are not counted


def test_an_agent_that_cannot_jail_its_vmms_refuses_to_start(image: object) -> None:
    shared = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))
    data_dir = private_data_dir(shared, "nojail", share_ready=False)  # its snapshots are not the jailed ones
    (data_dir / "jail").write_text("not a directory")  # where each jail's root is mounted
    base = [sys.executable, "-m", "wrenn.agent", "--data-dir", str(data_dir), "--accelerator", "tcg"]
    base += ["--name-prefix", "nojail", "--port", "0", "--proxy-port", "1", "--slots", "1"]
    try:
        refused = subprocess.run(base, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "cannot confine the VMMs on this host" in refused.stderr
        assert "--insecure" in refused.stderr
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# --- 2. tenant files -----------------------------------------------------------------------------


def _private_tree(root: Path) -> list[Path]:
    found = [root, *root.rglob("*")]
    for path in found:
        info = path.lstat()
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) & 0o077 == 0, (path, oct(info.st_mode))
    return found


def test_tenant_files_are_root_s_alone(platform: Platform, test_user: pwd.struct_passwd) -> None:
    data = platform.agent.data_dir
    capsule = data / "sandboxes" / platform.capsule.capsule_id
    files = _private_tree(data / "sandboxes") + _private_tree((data / "ready").resolve())
    names = {p.name for p in files}
    assert {"rootfs.qcow2", "console.log", "state.json", "vmstate", "memory", "meta.json"} <= names
    probe = [str(p) for p in (capsule / "rootfs.qcow2", capsule / "console.log", capsule / "state.json")]
    probe += [str(next((data / "ready").rglob("memory")))]
    probe += [p for p in map(str, Path("/dev/shm").glob(f"*-{platform.capsule.capsule_id}.mem"))]
    assert len(probe) == 5
    script = "import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'rb')\n        print('read', p)\n    except PermissionError:\n        pass\n"
    result = subprocess.run(
        ["runuser", "-u", test_user.pw_name, "--", "/usr/bin/python3", "-c", script, *probe],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


# --- 3. what a guest can make the host hold ------------------------------------------------------


async def test_a_guest_printing_forever_gets_a_truncated_answer(platform: Platform, small: str) -> None:
    """24 MiB of output (6 times the cap: a guest under TCG prints ~2 MiB/s) for a foreground exec: the
    answer holds the first 4 MiB and says it was cut, and the agent never held the rest."""
    agent = psutil.Process(platform.agent.proc.pid)
    before = peak = agent.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, agent.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        async with platform.agent.client() as client:
            script = "head -c 24M /dev/zero; echo done >&2"
            out = await client.exec(exec_request(small, script, timeout_sec=240), timeout_ms=300_000)
    finally:
        done.set()
        sampler.join()
    assert out.exit_code == 0 and not out.timed_out
    assert (
        out.stdout_truncated and len(out.stdout) == EXEC_OUTPUT_LIMIT and out.stdout == bytes(len(out.stdout))
    )
    assert not out.stderr_truncated and out.stderr == b"done\n"
    assert peak - before < 24 * MIB, f"the agent grew by {(peak - before) >> 20} MiB for 24 MiB of output"


async def test_a_flooded_console_stays_under_its_cap(platform: Platform, small: str) -> None:
    console = platform.agent.data_dir / "sandboxes" / small / "console.log"
    marker = f"end-of-flood-{time.time_ns()}"
    script = f"head -c 1600000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo {marker} > /dev/ttyS0"
    async with platform.agent.client() as client:
        out = await client.exec(exec_request(small, script, user="root", timeout_sec=240), timeout_ms=300_000)
    assert out.exit_code == 0, out.stderr
    deadline = time.monotonic() + 10
    while marker.encode() not in console.read_bytes()[-200:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.encode() in console.read_bytes()[-200:]
    assert console.stat().st_size <= CONSOLE_LIMIT
    v = vmm(platform.agent, small)
    assert all(
        "console.log" not in os.readlink(f"/proc/{v.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{v.pid}/fd")
    )


async def test_a_guest_filling_its_disk_stops_at_its_limit(platform: Platform, small: str) -> None:
    overlay = platform.agent.data_dir / "sandboxes" / small / "rootfs.qcow2"
    fill = (
        "dd if=/dev/zero of=/var/tmp/fill bs=1M count=600 oflag=direct 2>&1; echo rc=$?; rm -f /var/tmp/fill"
    )
    async with platform.agent.client() as client:
        out = await client.exec(exec_request(small, fill, user="root", timeout_sec=280), timeout_ms=300_000)
        said = out.stdout.decode()
        assert "rc=0" not in said and ("Input/output error" in said or "No space" in said), said
        info = overlay.stat()  # what it takes on the host: its size, and the blocks it holds
        assert max(info.st_size, info.st_blocks * 512) <= (256 + 1 + 64) * MIB, f"{info.st_size >> 20} MiB"
        alive = await client.exec(exec_request(small, "echo alive"), timeout_ms=60_000)
        assert alive.stdout == b"alive\n"  # the VM lives on; only its writes past the limit failed


async def test_an_answer_too_large_from_a_guest_is_refused(platform: Platform, small: str) -> None:
    """envd is a program of the guest's: the agent reads no answer of its whole without a bound (16 MiB).
    Ten processes whose command lines take 1.8 MiB each make envd's process list answer 18 MiB."""
    chunk = "x" * (120 << 10)  # one argument may be 128 KiB at most
    async with platform.agent.client() as client:
        for i in range(10):
            start = pb.StartBackgroundRequest(
                sandbox_id=small, cmd="/bin/sh", args=["-c", "sleep 600", "sh", *[chunk] * 15], tag=f"big{i}"
            )
            await client.start_background(start, timeout_ms=60_000)
        try:
            with pytest.raises(ConnectError) as err:
                await client.list_processes(pb.ListProcessesRequest(sandbox_id=small), timeout_ms=120_000)
            assert err.value.code.name == "RESOURCE_EXHAUSTED" and "more than" in err.value.message
        finally:
            for i in range(10):
                kill = pb.KillProcessRequest(sandbox_id=small, selector=Oneof("tag", f"big{i}"))  # type: ignore[arg-type]
                await client.kill_process(kill)
        assert len((await client.list_processes(pb.ListProcessesRequest(sandbox_id=small))).processes) < 10


async def test_a_create_that_does_not_fit_the_host_is_refused(platform: Platform) -> None:
    free_mb = shutil.disk_usage(platform.agent.data_dir).free >> 20
    async with platform.agent.client() as client:
        with pytest.raises(ConnectError) as err:
            await client.create_sandbox(
                pb.CreateSandboxRequest(
                    sandbox_id="sb-too-big",
                    template="minimal",
                    vcpus=1,
                    memory_mb=256,
                    disk_size_mb=free_mb + 1,
                ),
                timeout_ms=60_000,
            )
        assert err.value.code.name == "RESOURCE_EXHAUSTED" and "not enough room" in err.value.message
        listed = await client.list_sandboxes(pb.ListSandboxesRequest())
    assert "sb-too-big" not in [s.sandbox_id for s in listed.sandboxes]
    assert not (platform.agent.data_dir / "sandboxes" / "sb-too-big").exists()


async def test_a_disk_header_naming_a_host_file_is_not_followed(platform: Platform, small: str) -> None:
    """A VMM holds its overlay read-write: a compromised one could write any host path into its qcow2
    header as the backing file, for the next VMM to be handed it. Done here to the paused sandbox (as its
    VMM could have before the pause): the resumed VMM gets the chain the agent recorded, not the header's."""
    overlay = platform.agent.data_dir / "sandboxes" / small / "rootfs.qcow2"
    async with platform.agent.client() as client:
        await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id=small), timeout_ms=120_000)
        rebase = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(overlay)]
        subprocess.run(rebase, check=True, capture_output=True)
        await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id=small), timeout_ms=120_000)
        v = vmm(platform.agent, small)
        held = {os.readlink(f"/proc/{v.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{v.pid}/fd")}
        assert "/etc/shadow" not in held and any(t.endswith("rootfs.ext4") for t in held), held
        # the guest reads its own root file system, as it was (over the shadow file, it would be garbage)
        out = await client.exec(exec_request(small, "grep -c . /etc/os-release"), timeout_ms=60_000)
        assert out.exit_code == 0 and int(out.stdout) > 3, out


# --- 4. envd before /init --------------------------------------------------------------------------

CURL = "curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 http://{}:49983/envs; echo"


async def test_before_a_token_envd_answers_only_the_host(
    platform: Platform, small: str, test_user: pwd.struct_passwd
) -> None:
    """`small` has no token: its envd is in the window a restore opens until /init, for good."""
    async with platform.agent.client() as client:
        info = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id=small))).sandbox
        assert info is not None and info.host_ip
        # code inside the guest, from its own addresses
        inside = await client.exec(
            exec_request(small, CURL.format("127.0.0.1") + ";" + CURL.format("169.254.0.21"))
        )
        assert inside.stdout.decode().split() == ["403", "403"], inside
        # another guest (the platform's capsule) has no way to it at all
        dropped = CURL.replace("--max-time 20", "--max-time 3").format(info.host_ip)  # nothing ever answers
        other = await client.exec(exec_request(platform.capsule.capsule_id, dropped), timeout_ms=60_000)
        assert other.stdout.decode().strip() == "000", other
    # the host (root, through the sandbox's netns) is answered
    host = subprocess.run(["sh", "-c", CURL.format(info.host_ip)], capture_output=True, text=True, timeout=30)
    assert host.stdout.strip() == "200"
    # a local unprivileged user reaches no guest
    user = subprocess.run(
        ["runuser", "-u", test_user.pw_name, "--", "sh", "-c", CURL.format(info.host_ip)],
        capture_output=True, text=True, timeout=30, cwd="/",
    )  # fmt: skip
    assert user.stdout.strip() == "000", user
