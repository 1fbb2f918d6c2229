"""The runtime end to end: a real host agent process boots real VMs from our image (TCG here), and its
Connect API runs commands and moves files through envd over the TAP. Also isolation between guests and
the host, and that nothing is left behind: after destroy, after `kill -9` of QEMU, after an agent restart.

Few VMs are booted (TCG boots take seconds each), and they are shared by the tests of this module in
order: the module reads as one story.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError
from protobuf import Oneof

from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from ._agent import AgentProcess, running_agent, start_agent

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

PREFIX = f"wa{os.getpid() % 1000:03d}r"  # starts and ends with a letter, as the network layer requires


@pytest.fixture(scope="module")
def agent(image: object) -> Iterator[AgentProcess]:
    with running_agent(PREFIX, share_ready=False) as process:  # it tests making ready snapshots
        yield process


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[HostAgentServiceClient]:
    async with agent.client() as c:
        yield c


def create_request(sandbox_id: str, **kw: object) -> pb.CreateSandboxRequest:
    defaults: dict[str, object] = {"template": "minimal", "vcpus": 1, "memory_mb": 256, "disk_size_mb": 2048}
    return pb.CreateSandboxRequest(sandbox_id=sandbox_id, **{**defaults, **kw})  # type: ignore[arg-type]


async def run(client: HostAgentServiceClient, sandbox_id: str, script: str, **kw: object) -> pb.ExecResponse:
    request = pb.ExecRequest(sandbox_id=sandbox_id, cmd="/bin/sh", args=["-c", script], **kw)  # type: ignore[arg-type]
    return await client.exec(request, timeout_ms=120_000)


# --- what is left on the host ----------------------------------------------------------------------


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {
        line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(PREFIX)
    }


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", out, re.M) if m.group(1).startswith(PREFIX)}


def vmm_pids(sandbox_id: str) -> list[int]:
    """This agent's VMM of `sandbox_id` (another test run on the machine may have one of the same name)."""
    pattern = f"-name {sandbox_id} .*mem-path=/dev/shm/{PREFIX}-{sandbox_id}.mem"
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def vmm_status(sandbox_id: str) -> dict[str, list[int | str]]:
    """The fields of `/proc/<pid>/status` of the sandbox's VMM (numbers where they are)."""
    (pid,) = vmm_pids(sandbox_id)
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = [int(v) if v.isdigit() else v for v in value.split()]
    return fields


def cgroups(sandbox_id: str) -> list[Path]:
    name = f"{PREFIX}-{sandbox_id}"
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/wrenn/{name}")] + list(
        Path("/sys/fs/cgroup").glob(f"wrenn/{name}")
    )


def leftovers(agent: AgentProcess, sandbox_id: str) -> list[str]:
    found = [f"vmm pid {p}" for p in vmm_pids(sandbox_id)]
    found += [f"cgroup {p}" for p in cgroups(sandbox_id)]
    workdir = agent.data_dir / "sandboxes" / sandbox_id
    if workdir.exists():
        found.append(f"workdir {workdir}: {sorted(x.name for x in workdir.iterdir())}")
    return found


async def until(check: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check() if asyncio.iscoroutinefunction(check) else check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


# --- the story -----------------------------------------------------------------------------------


async def test_host_info_names_the_accelerator_and_why(client: HostAgentServiceClient) -> None:
    info = await client.get_host_info(pb.GetHostInfoRequest())
    assert info.accelerator in (pb.Accelerator.KVM, pb.Accelerator.TCG)
    assert info.accelerator_reason
    assert info.vmm == pb.Vmm.QEMU and info.vmm_version
    assert info.slot_capacity == 8 and info.cpu_count >= 1
    if Path("/sys/module/kvm_pvm").exists():  # this workplace: PVM cannot boot a stock kernel
        assert info.accelerator == pb.Accelerator.TCG and "PVM" in info.accelerator_reason


async def test_two_sandboxes_boot_and_run_code(client: HostAgentServiceClient, agent: AgentProcess) -> None:
    created = await asyncio.gather(
        client.create_sandbox(create_request("sb-a", envd_access_token="tok-a", default_env={"GREETING": "hi"}),
                              timeout_ms=300_000),
        client.create_sandbox(create_request("sb-b", allow_internet=True, vcpus=2, memory_mb=384), timeout_ms=300_000),
    )  # fmt: skip
    for response in created:
        assert response.sandbox.status == pb.SandboxStatus.RUNNING, response.sandbox.error
        assert response.sandbox.host_ip
    for sid, cpus, mem_mb in (("sb-a", 1, 256), ("sb-b", 2, 384)):  # the VM has what was asked for
        shape = await run(client, sid, "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo")
        nproc, mem_kb = map(int, shape.stdout.split())
        assert nproc == cpus and mem_mb * 0.8 < mem_kb / 1024 <= mem_mb, (sid, nproc, mem_kb)
    out = await run(client, "sb-a", 'python3 -c "print(6*7)"; whoami; echo $GREETING; pwd')
    assert out.exit_code == 0, out.stderr
    assert out.stdout.decode().split() == ["42", "user", "hi", "/home/user"]
    root = await run(client, "sb-a", "id -u; cd /tmp && pwd", user="root", envs={"X": "1"})
    assert root.stdout.decode().split() == ["0", "/tmp"]
    cwd = await run(client, "sb-a", 'pwd; echo "$X"', cwd="/etc", envs={"X": "y"})
    assert cwd.stdout.decode().split() == ["/etc", "y"]
    failing = await run(client, "sb-a", "echo oops >&2; exit 3")
    assert (failing.exit_code, failing.stderr) == (3, b"oops\n")
    timed = await run(client, "sb-a", "sleep 30", timeout_sec=2)
    assert timed.timed_out
    listed = await client.list_sandboxes(pb.ListSandboxesRequest())
    assert {s.sandbox_id for s in listed.sandboxes} >= {"sb-a", "sb-b"}
    assert not any(r.sandbox.from_snapshot for r in created)  # the first of their shapes: booted


async def test_sandboxes_restored_from_one_snapshot_are_each_their_own(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    """sb-a's first boot left a ready snapshot of its shape; these three start from it, sharing its memory
    copy-on-write, and must still be independent, random and named each after itself."""
    assert list((agent.data_dir / "ready").glob("*/*/1cpu-256m-2048d/vmstate"))
    created = await asyncio.gather(
        *(client.create_sandbox(create_request(sid, envd_access_token=f"tok-{sid}"), timeout_ms=300_000)
          for sid in ("sb-x", "sb-y", "sb-z"))
    )  # fmt: skip
    assert all(r.sandbox.from_snapshot and r.sandbox.status == pb.SandboxStatus.RUNNING for r in created)
    ram = memory_file("sb-x").stat()  # its RAM is its own copy of the snapshot's, which no VMM ever opens
    assert ram.st_mode & 0o777 == 0o600 and ram.st_uid == vmm_status("sb-x")["Uid"][0] != 0
    await run(client, "sb-x", "echo mine > ~/only-in-x")
    script = 'cat ~/only-in-x 2>/dev/null || echo absent; hostname; python3 -c "import os; print(os.urandom(16).hex())"'
    outs = {sid: (await run(client, sid, script)).stdout.decode().split() for sid in ("sb-x", "sb-y", "sb-z")}
    assert outs["sb-x"][:2] == ["mine", "sb-x"]
    assert outs["sb-y"][:2] == ["absent", "sb-y"] and outs["sb-z"][:2] == ["absent", "sb-z"]
    assert len({out[2] for out in outs.values()}) == 3  # the kernel's random pool was reseeded in each
    for sid in ("sb-x", "sb-y", "sb-z"):
        guest_now = float((await run(client, sid, "date +%s.%N")).stdout)
        assert abs(guest_now - time.time()) < 5  # the clock was set, not left at the snapshot's time
    await asyncio.gather(
        *(client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=s)) for s in ("sb-x", "sb-y", "sb-z"))
    )
    assert all(leftovers(agent, s) == [] for s in ("sb-x", "sb-y", "sb-z"))


def test_the_vmm_is_confined(agent: AgentProcess) -> None:
    """Each VMM in its jail, as seen from outside: a uid of its own, no capabilities, seccomp, a root of
    its own and a cgroup with its limits (tests/security checks every part of it in detail)."""
    a, b = vmm_status("sb-a"), vmm_status("sb-b")
    assert a["Uid"][0] != 0 and b["Uid"][0] != 0 and a["Uid"][0] != b["Uid"][0]
    for status in (a, b):
        assert status["Seccomp"] == [2] and status["NoNewPrivs"] == [1]
        assert all(int(str(status[key][0]), 16) == 0 for key in ("CapEff", "CapPrm", "CapBnd"))
    (pid,) = vmm_pids("sb-a")
    assert not (Path(f"/proc/{pid}/root") / str(agent.data_dir).lstrip("/") / "sandboxes").exists()
    groups = cgroups("sb-a")
    assert groups, "the VMM should sit in a cgroup of its own"
    cgroup_procs = {int(p) for g in groups for p in (g / "cgroup.procs").read_text().split()}
    assert pid in cgroup_procs
    for group in groups:
        for limit_file, expected in (("memory.limit_in_bytes", (256 + 384) << 20), ("memory.max", (256 + 384) << 20),
                                     ("cpu.cfs_quota_us", 100_000)):  # fmt: skip
            if (group / limit_file).exists():
                assert int((group / limit_file).read_text()) == expected, limit_file


async def test_files_through_the_agent(client: HostAgentServiceClient) -> None:
    sid = "sb-a"
    written = await client.write_file(
        pb.WriteFileRequest(sandbox_id=sid, path="/home/user/x/hello.txt", content=b"hello")
    )
    assert written.entry.size == 5 and written.entry.owner == "user"
    read = await client.read_file(pb.ReadFileRequest(sandbox_id=sid, path="/home/user/x/hello.txt"))
    assert read.content == b"hello"
    big = os.urandom(3 << 20)

    async def chunks() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(
            content=Oneof("meta", pb.WriteFileMeta(sandbox_id=sid, path="/tmp/big.bin"))
        )
        for i in range(0, len(big), 1 << 18):
            yield pb.WriteFileStreamRequest(content=Oneof("chunk", big[i : i + (1 << 18)]))

    streamed = await client.write_file_stream(chunks())
    assert streamed.entry.size == len(big)
    back = b"".join(
        [
            r.chunk
            async for r in client.read_file_stream(
                pb.ReadFileStreamRequest(sandbox_id=sid, path="/tmp/big.bin")
            )
        ]
    )
    assert back == big
    made = await client.make_dir(pb.MakeDirRequest(sandbox_id=sid, path="/home/user/d/e"))
    assert made.entry.type == pb.FileType.DIRECTORY
    entries = await client.list_dir(pb.ListDirRequest(sandbox_id=sid, path="/home/user", depth=2))
    assert {"x", "x/hello.txt", "d", "d/e"} <= {
        os.path.relpath(e.path, "/home/user") for e in entries.entries
    }
    await client.remove_path(pb.RemovePathRequest(sandbox_id=sid, path="/home/user/d"))
    with pytest.raises(ConnectError) as err:
        await client.stat(pb.StatRequest(sandbox_id=sid, path="/home/user/d"))
    assert err.value.code.name == "NOT_FOUND"


async def test_processes_and_terminals(client: HostAgentServiceClient) -> None:
    sid = "sb-a"
    started = await client.start_background(
        pb.StartBackgroundRequest(sandbox_id=sid, cmd="sleep", args=["600"], tag="napper")
    )
    listed = await client.list_processes(pb.ListProcessesRequest(sandbox_id=sid))
    assert any(p.pid == started.pid and p.tag == "napper" and p.cmd == "sleep" for p in listed.processes)
    await client.kill_process(pb.KillProcessRequest(sandbox_id=sid, selector=Oneof("tag", "napper")))

    async def gone() -> bool:
        procs = await client.list_processes(pb.ListProcessesRequest(sandbox_id=sid))
        return all(p.tag != "napper" for p in procs.processes)

    assert await until(gone, 10)

    kinds: list[str] = []
    stdout = b""
    async for response in client.exec_stream(
        pb.ExecStreamRequest(sandbox_id=sid, cmd="/bin/sh", args=["-c", "echo a; echo b"])
    ):
        which = response.event.event  # type: ignore[union-attr]
        kinds.append(which.field)
        if which.field == "data":
            stdout += which.value.output.value
    assert kinds[0] == "start" and kinds[-1] == "end" and stdout == b"a\nb\n"

    attach = aiter(
        client.pty_attach(pb.PtyAttachRequest(sandbox_id=sid, cmd="/bin/bash", args=["-i"], cols=80, rows=24))
    )
    first = await anext(attach)
    assert first.event.field == "started"  # type: ignore[union-attr]
    tag = first.event.value.tag  # type: ignore[union-attr]
    await client.pty_resize(pb.PtyResizeRequest(sandbox_id=sid, tag=tag, cols=100, rows=30))
    await client.pty_send_input(pb.PtySendInputRequest(sandbox_id=sid, tag=tag, data=b"stty size; exit\n"))
    seen, exited = b"", None
    async for response in attach:
        which = response.event
        if which.field == "output":  # type: ignore[union-attr]
            seen += which.value.data  # type: ignore[union-attr]
        elif which.field == "exited":  # type: ignore[union-attr]
            exited = which.value  # type: ignore[union-attr]
            break
    assert b"30 100" in seen and exited is not None and exited.exit_code == 0


async def test_metrics_are_sampled(client: HostAgentServiceClient) -> None:
    async def sampled() -> bool:
        points = await client.get_sandbox_metrics(pb.GetSandboxMetricsRequest(sandbox_id="sb-a"))
        return len(points.points) >= 2 and points.points[-1].mem_bytes > 0

    assert await until(sampled, 20)


def _guest_connects(script_target: str) -> str:
    host, port = script_target.rsplit(":", 1)
    return (
        'python3 -c "import socket,sys\n'
        f"try:\n socket.create_connection(('{host}', {port}), timeout=3); print('open')\n"
        "except OSError as e: print('blocked', type(e).__name__)\""
    )


async def test_isolation(client: HostAgentServiceClient, agent: AgentProcess) -> None:
    b = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-b"))).sandbox
    # the host side of sb-a's veth is a host address: the agent listens on 0.0.0.0, so it is the target
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    host_veth_ips = re.findall(rf"\d+: {PREFIX}\S*\s+inet (\d+\.\d+\.\d+\.\d+)", out)
    assert host_veth_ips, out
    # the host reaches envd in sb-b directly...
    with socket.create_connection((b.host_ip, 49983), timeout=5):
        pass
    targets = [f"{ip}:{agent.port}" for ip in host_veth_ips] + [
        f"{b.host_ip}:49983",
        f"127.0.0.1:{agent.port}",
    ]
    for target in targets:
        result = await run(client, "sb-a", _guest_connects(target))
        assert result.stdout.decode().startswith("blocked"), (target, result.stdout, result.stderr)
    # ...and the guest can still reach itself
    self_check = await run(client, "sb-a", _guest_connects("127.0.0.1:49983"))
    assert self_check.stdout.decode().startswith("open")


async def test_destroy_leaves_nothing(client: HostAgentServiceClient, agent: AgentProcess) -> None:
    before = netns_names()
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-b"))
    assert leftovers(agent, "sb-b") == []
    assert len(netns_names()) == len(before) - 1
    with pytest.raises(ConnectError) as err:
        await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-b"))
    assert err.value.code.name == "NOT_FOUND"  # destroying twice is harmless


async def test_a_killed_vm_is_reported_and_cleaned(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    (pid,) = vmm_pids("sb-a")
    os.kill(pid, signal.SIGKILL)

    async def errored() -> bool:
        sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-a"))).sandbox
        return sandbox.status == pb.SandboxStatus.ERROR

    assert await until(errored, 20)
    sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-a"))).sandbox
    assert "exited unexpectedly" in sandbox.error
    with pytest.raises(ConnectError) as err:
        await run(client, "sb-a", "true")
    assert err.value.code.name == "FAILED_PRECONDITION"
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-a"))
    assert leftovers(agent, "sb-a") == []


async def test_a_vm_that_does_not_boot_is_reported_with_its_console(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    broken = agent.data_dir / "images" / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    source = (agent.data_dir / "images" / "minimal" / "current").resolve()
    target = broken / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("rootfs.ext4"))
    (target / "rootfs.ext4").symlink_to(source / "rootfs.ext4")
    garbage = b"this is not a kernel"
    (target / "vmlinuz").write_bytes(garbage)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["template"], manifest["files"]["vmlinuz"]["size"] = "broken", len(garbage)
    (target / "manifest.json").write_text(json.dumps(manifest))
    (broken / "current").symlink_to(target.name)
    try:
        with pytest.raises(ConnectError) as err:
            await client.create_sandbox(create_request("sb-broken", template="broken"), timeout_ms=120_000)
        assert err.value.code.name == "INTERNAL"
        assert "qemu" in err.value.message.lower()
        sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-broken"))).sandbox
        assert sandbox.status == pb.SandboxStatus.ERROR and sandbox.error
        await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-broken"))
        assert leftovers(agent, "sb-broken") == []
    finally:
        shutil.rmtree(broken, ignore_errors=True)


async def test_an_idle_sandbox_is_stopped_after_its_timeout(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    created = await client.create_sandbox(
        create_request("sb-idle", timeout_sec=3, discard_on_timeout=True), timeout_ms=300_000
    )
    # It takes the slot (and so the address) of a sandbox destroyed earlier by this same agent: no stale
    # pooled connection to the old VM may answer for it.
    assert created.sandbox is not None and created.sandbox.host_ip.endswith(".0.1")  # slot 1, sb-a's
    assert (await run(client, "sb-idle", "echo fresh")).stdout == b"fresh\n"

    async def stopped() -> bool:
        sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-idle"))).sandbox
        return sandbox.status == pb.SandboxStatus.STOPPED

    assert await until(stopped, 30)
    sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-idle"))).sandbox
    assert sandbox.error == "idle timeout"
    assert vmm_pids("sb-idle") == [] and cgroups("sb-idle") == []
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-idle"))
    assert leftovers(agent, "sb-idle") == []


COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done"
)


def memory_files() -> list[Path]:
    return list(Path("/dev/shm").glob(f"{PREFIX}-*.mem"))


def memory_file(sandbox_id: str) -> Path:
    """Where a running QEMU guest's RAM lives (the agent's default memory_dir)."""
    return Path("/dev/shm") / f"{PREFIX}-{sandbox_id}.mem"


async def status_of(client: HostAgentServiceClient, sandbox_id: str) -> pb.SandboxInfo:
    sandbox = (await client.get_sandbox(pb.GetSandboxRequest(sandbox_id=sandbox_id))).sandbox
    assert sandbox is not None
    return sandbox


async def test_pause_and_resume_keep_memory_files_and_processes(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    """Ten cycles with writes in between: the files, a counting process and its memory survive all."""
    await client.create_sandbox(create_request("sb-p", envd_access_token="tok-p"), timeout_ms=300_000)
    started = await client.start_background(
        pb.StartBackgroundRequest(sandbox_id="sb-p", cmd="/bin/sh", args=["-c", COUNTER], tag="counter")
    )
    # a clone of the ready snapshot: its RAM is a file of its own from the start, copied from the snapshot's
    assert memory_file("sb-p").exists()
    slots_before = netns_names()
    for _ in range(300):  # the counter's first write (a busy host starts it late)
        if (await run(client, "sb-p", "cat /tmp/count")).stdout:
            break
        await asyncio.sleep(0.1)
    last = 0
    for cycle in range(10):
        wrote = await run(client, "sb-p", f"echo {cycle} > ~/cycle-{cycle} && sync")
        assert wrote.exit_code == 0, wrote.stderr
        count = int((await run(client, "sb-p", "cat /tmp/count")).stdout)
        assert count > last, f"cycle {cycle}: the counter stood still ({last} -> {count})"
        paused = (await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id="sb-p"))).sandbox
        assert paused is not None and paused.status == pb.SandboxStatus.PAUSED and paused.host_ip == ""
        # nothing runs for a paused sandbox: no VMM, no RAM file, no cgroup, no network slot
        assert vmm_pids("sb-p") == [] and cgroups("sb-p") == [] and not memory_file("sb-p").exists()
        assert len(netns_names()) == len(slots_before) - 1
        with pytest.raises(ConnectError) as err:
            await run(client, "sb-p", "true")
        assert err.value.code.name == "FAILED_PRECONDITION" and "paused" in err.value.message
        resumed = (await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="sb-p"))).sandbox
        assert resumed is not None and resumed.status == pb.SandboxStatus.RUNNING
        assert memory_file("sb-p").exists()
        out = await run(client, "sb-p", "cat ~/cycle-*; cat /tmp/count")
        lines = out.stdout.decode().split()
        assert lines[:-1] == [str(c) for c in range(cycle + 1)]
        assert int(lines[-1]) >= count  # the counter goes on from where it stood
        last = int(lines[-1])
    listed = await client.list_processes(pb.ListProcessesRequest(sandbox_id="sb-p"))
    assert started.pid in [p.pid for p in listed.processes]
    await asyncio.sleep(0.5)
    assert int((await run(client, "sb-p", "cat /tmp/count")).stdout) > last  # and it still counts
    # the guest's clock was set again on every resume: it agrees with the host's
    guest_now = float((await run(client, "sb-p", "date +%s.%N")).stdout)
    assert abs(guest_now - time.time()) < 5
    await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id="sb-p"))  # left paused for the restart
    # the snapshot records what took it; one a QEMU of another series took is refused, and stays paused
    meta_file = agent.data_dir / "sandboxes" / "sb-p" / "snapshot" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["vmm"] == "qemu" and meta["vmm_version"] and meta["machine"].startswith("microvm,")
    assert meta["envd_version"] and meta["kind"] == "pause"
    meta_file.write_text(json.dumps({**meta, "vmm_version": "1.0.0"}))
    try:
        with pytest.raises(ConnectError) as refused:
            await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="sb-p"))
        assert refused.value.code.name == "FAILED_PRECONDITION", refused.value.message
        assert "taken with qemu 1.0.0" in refused.value.message and "1.0.x" in refused.value.message
        got = await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="sb-p"))
        assert got.sandbox.status == pb.SandboxStatus.PAUSED
    finally:
        meta_file.write_text(json.dumps(meta))


async def test_a_template_from_a_paused_sandbox_starts_sandboxes_in_its_state(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    made = await client.create_template(pb.CreateTemplateRequest(sandbox_id="sb-p", name="tpl-counter"))
    assert made.template is not None and made.template.memory_mb == 256 and made.template.size_bytes > 0
    assert (await status_of(client, "sb-p")).status == pb.SandboxStatus.PAUSED  # the source stays paused
    with pytest.raises(ConnectError) as err:
        await client.create_template(pb.CreateTemplateRequest(sandbox_id="sb-p", name="tpl-counter"))
    assert err.value.code.name == "ALREADY_EXISTS"
    # a snapshot restores the machine it was taken of: a request for another shape is refused, not rewritten
    for other in ({"memory_mb": 512}, {"vcpus": 2}, {"disk_size_mb": 4096}):
        with pytest.raises(ConnectError) as err:
            await client.create_sandbox(create_request("sb-t1", snapshot_template="tpl-counter", **other))
        assert err.value.code.name == "INVALID_ARGUMENT", other
        assert "1 vCPU, 256 MiB of memory and a 2048 MiB disk" in err.value.message, err.value.message
        assert leftovers(agent, "sb-t1") == []
    # a template is started only by its id in `snapshot_template`, never by a name meant for a base image
    with pytest.raises(ConnectError) as err:
        await client.create_sandbox(create_request("sb-t1", template="tpl-counter"))
    assert err.value.code.name == "NOT_FOUND"
    listed = await client.list_sandboxes(pb.ListSandboxesRequest())
    assert "sb-t1" not in {s.sandbox_id for s in listed.sandboxes}
    created = await asyncio.gather(
        *(client.create_sandbox(create_request(sid, snapshot_template="tpl-counter"), timeout_ms=300_000)
          for sid in ("sb-t1", "sb-t2", "sb-t3"))
    )  # fmt: skip
    assert all(r.sandbox.from_snapshot and r.sandbox.memory_mb == 256 for r in created)
    clones = ("sb-t1", "sb-t2", "sb-t3")
    draws = {(await run(client, sid, "head -c 16 /dev/urandom | od -An -tx1")).stdout for sid in clones}
    assert len(draws) == 3  # one template, three different random streams
    for sid in ("sb-t1", "sb-t2", "sb-t3"):
        # the template's files and its still-counting process came along
        out = await run(client, sid, "cat ~/cycle-9; a=$(cat /tmp/count); sleep 0.5; echo $a; cat /tmp/count")
        nine, earlier, later = out.stdout.decode().split()
        assert nine == "9" and int(later) > int(earlier) > 0
    await run(client, "sb-t1", "echo t1 > ~/cycle-9")
    assert (await run(client, "sb-t2", "cat ~/cycle-9")).stdout == b"9\n"  # each has its own disk
    with pytest.raises(ConnectError) as err:
        await client.delete_template(pb.DeleteTemplateRequest(name="tpl-counter"))
    assert err.value.code.name == "FAILED_PRECONDITION" and "sb-t1" in err.value.message
    await asyncio.gather(
        *(client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=s)) for s in ("sb-t1", "sb-t2", "sb-t3"))
    )
    await client.delete_template(pb.DeleteTemplateRequest(name="tpl-counter"))
    assert not (agent.data_dir / "templates" / "tpl-counter").exists()
    with pytest.raises(ConnectError) as err:
        await client.create_sandbox(create_request("sb-t3", snapshot_template="tpl-counter"))
    assert err.value.code.name == "NOT_FOUND"


async def test_an_idle_sandbox_is_paused_and_resumes(client: HostAgentServiceClient) -> None:
    await client.create_sandbox(create_request("sb-auto", timeout_sec=3), timeout_ms=300_000)
    await run(client, "sb-auto", "echo before > ~/mark")

    async def paused() -> bool:
        return (await status_of(client, "sb-auto")).status == pb.SandboxStatus.PAUSED

    assert await until(paused, 30)
    assert vmm_pids("sb-auto") == []
    await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="sb-auto"))
    assert (await run(client, "sb-auto", "cat ~/mark")).stdout == b"before\n"
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="sb-auto"))


async def test_agent_restart_adopts_running_vms_and_cleans_the_rest(agent: AgentProcess) -> None:
    async with agent.client() as client:
        await client.create_sandbox(create_request("sb-c", envd_access_token="tok-c"), timeout_ms=300_000)
    stale_ns = f"{PREFIX}-ns-7"
    subprocess.run(["ip", "netns", "add", stale_ns], check=True)  # as a crashed run would leave it
    agent.stop(signal.SIGKILL)
    restarted = start_agent(agent.data_dir, PREFIX, port=agent.port, proxy_port=agent.proxy_port)
    agent.proc = restarted.proc
    async with agent.client() as client:
        listed = await client.list_sandboxes(pb.ListSandboxesRequest())
        assert {s.sandbox_id: s.status for s in listed.sandboxes} == {
            "sb-c": pb.SandboxStatus.RUNNING,
            "sb-p": pb.SandboxStatus.PAUSED,
        }
        out = await run(client, "sb-c", "echo still here")
        assert out.stdout == b"still here\n"
        assert stale_ns not in netns_names()
        # the snapshot taken before the restart resumes, its process still counting
        await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="sb-p"), timeout_ms=120_000)
        out = await run(
            client, "sb-p", "cat ~/cycle-9; a=$(cat /tmp/count); sleep 0.5; cat /tmp/count; echo $a"
        )
        nine, later, earlier = out.stdout.decode().split()
        assert nine == "9" and int(later) > int(earlier)
        # a snapshot that is damaged: a clear error, that sandbox in `error`, nothing else touched
        await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id="sb-p"))
        vmstate = agent.data_dir / "sandboxes" / "sb-p" / "snapshot" / "vmstate"
        vmstate.write_bytes(vmstate.read_bytes()[:1000])
        with pytest.raises(ConnectError) as err:
            await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="sb-p"), timeout_ms=120_000)
        assert err.value.code.name == "DATA_LOSS" and "sb-p" in err.value.message
        broken = await status_of(client, "sb-p")
        assert broken.status == pb.SandboxStatus.ERROR and "resume failed" in broken.error
        assert vmm_pids("sb-p") == [] and not memory_file("sb-p").exists()
        assert (await run(client, "sb-c", "echo unharmed")).stdout == b"unharmed\n"
        await client.terminate(pb.TerminateRequest())
    agent.proc.wait(30)
    assert leftovers(agent, "sb-c") == [] and leftovers(agent, "sb-p") == []
    assert netns_names() == set() and links() == set() and memory_files() == []
