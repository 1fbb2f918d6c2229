"""The guest image builder: one real build (shared, reused between runs), one real boot under QEMU."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import wrenn.images
from tests.conftest import Envd, free_port
from tests.envd._rpc import run, sh
from wrenn.images import BuildError, Image, _build, _initramfs, _kernel
from wrenn.images.__main__ import parse_size
from wrenn.images._initramfs import Newc
from wrenn.images._kernel import KernelRelease

HEALTH_DEADLINE_S = 60


def tsc_khz() -> int:
    """The host TSC frequency for tsc_early_khz= (microvm under TCG hangs at random without it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_300_000


def boot(image: Image, tmp: Path) -> tuple[Envd, float]:
    """Boot `image` with a bare qemu-system-x86_64 (microvm, TCG, user-mode net) on a qcow2 overlay."""
    overlay = tmp / "vm.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs), "-F", "raw", str(overlay)],
        check=True,
    )
    port = free_port()
    serial = tmp / "serial.log"
    cmdline = " ".join(
        [
            "console=ttyS0 quiet root=/dev/vda rw pci=off",
            f"tsc_early_khz={tsc_khz()}",
            "wrenn.hostname=wrenn-test wrenn.ip=10.0.2.15/24 wrenn.gw=10.0.2.2 wrenn.dns=10.0.2.3",
            f"wrenn.time={int(time.time())}",
        ]
    )
    cmd = [
        "qemu-system-x86_64",
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,ioapic2=off",
        "-nodefaults", "-no-user-config", "-nographic",
        "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{tmp / 'vm.qmp'},server=on,wait=off",
        "-kernel", str(image.vmlinuz), "-initrd", str(image.initrd),
        "-drive", f"id=root,file={overlay},if=none,format=qcow2",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:49983",
        "-device", "virtio-net-device,netdev=n0",
        "-append", cmdline,
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vm = Envd(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log_path=serial)
    while time.monotonic() - started < HEALTH_DEADLINE_S:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"qemu exited with {proc.returncode}: {err}\n{vm.log()}")
        try:
            if httpx.get(f"{vm.url}/health", timeout=2).status_code == 204:
                return vm, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    vm.stop()
    raise RuntimeError(f"envd did not answer /health within {HEALTH_DEADLINE_S} s; console:\n{vm.log()}")


@pytest.fixture(scope="module")
def vm(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envd]:
    """The one VM of the suite: the image booted under QEMU, envd initialised with defaultUser=user."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.fail("qemu-system-x86 and qemu-utils are needed (scripts/bootstrap installs them)")
    tmp = tmp_path_factory.mktemp("vm")
    server, took = boot(image, tmp)
    print(f"\nboot to envd /health: {took:.2f} s")
    try:
        r = server.init(defaultUser="user")
        assert r.status_code == 204, r.text
        yield server
    finally:
        server.proc.kill()
        server.proc.wait(10)


# --- the image on disk ---------------------------------------------------------------------------


@pytest.mark.vm
def test_image_is_complete_and_current(image: Image, image_data_dir: Path) -> None:
    assert image.directory == image_data_dir / "images" / "minimal" / image.version
    assert wrenn.images.find("minimal", image_data_dir) == image
    manifest = image.manifest()
    assert manifest["template"] == "minimal" and manifest["version"] == image.version
    assert manifest["kernel"]["release"] == image.kernel_version
    assert manifest["envd_version"] == image.envd_version
    for path in (image.vmlinuz, image.vmlinux, image.initrd, image.rootfs):
        assert path.stat().st_mode & 0o222 == 0, f"{path} is writable"
    for key in ("vmlinuz", "initrd"):  # the small ones; the 2 GiB rootfs is hashed at build time
        data = getattr(image, key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["files"][key]["sha256"]
    assert image.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert image.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    assert image.initrd.read_bytes()[:6] == b"070701"
    assert image.rootfs.stat().st_size == 2 * 1024**3
    assert image.rootfs.stat().st_blocks * 512 < 600 * 1024**2, "the root disk should stay sparse"
    assert {"virtio_blk.ko", "virtio_net.ko", "virtio_mmio.ko"} <= set(manifest["initramfs_modules"])


@pytest.mark.vm
def test_second_build_is_a_no_op(image: Image, image_data_dir: Path) -> None:
    logs = set((image_data_dir / "images" / "logs").glob("*.log"))
    started = time.monotonic()
    again = wrenn.images.build("minimal", image_data_dir)
    assert time.monotonic() - started < 10
    assert again == image
    assert set((image_data_dir / "images" / "logs").glob("*.log")) == logs, "a no-op build keeps no log"


# --- one boot ------------------------------------------------------------------------------------


@pytest.mark.vm
async def test_commands_run_as_the_default_user(vm: Envd) -> None:
    out = await run(vm, "whoami")
    assert out.stdout.decode().strip() == "user", out
    out = await sh(vm, 'echo "$HOME"; pwd; id -Gn')
    home, cwd, groups = out.stdout.decode().splitlines()
    assert (home, cwd) == ("/home/user", "/home/user")
    assert "sudo" in groups.split()


@pytest.mark.vm
async def test_python_runs(vm: Envd) -> None:
    out = await run(vm, "python3", "-c", "print(6*7)")
    assert (out.exit_code, out.stdout) == (0, b"42\n"), out


@pytest.mark.vm
async def test_passwordless_sudo(vm: Envd) -> None:
    out = await run(vm, "sudo", "-n", "true")
    assert out.exit_code == 0, out
    assert (await run(vm, "sudo", "-n", "whoami")).stdout == b"root\n"


@pytest.mark.vm
async def test_tools_are_installed(vm: Envd) -> None:
    out = await sh(vm, "for t in git curl socat tini ip ps sudo; do command -v $t || exit 1; done")
    assert out.exit_code == 0, out
    assert len(out.stdout.decode().split()) == 7
    out = await sh(vm, "git --version && curl --version && socat -V")
    assert out.exit_code == 0, out


@pytest.mark.vm
async def test_init_applied_the_kernel_command_line(vm: Envd) -> None:
    out = await sh(vm, "hostname; cat /etc/resolv.conf; ip -4 -o addr show eth0; ip route show default")
    text = out.stdout.decode()
    assert text.splitlines()[0] == "wrenn-test"
    assert "nameserver 10.0.2.3" in text
    assert "10.0.2.15/24" in text
    assert "default via 10.0.2.2" in text
    out = await sh(vm, "date +%s; cat /proc/1/comm; findmnt -n -o FSTYPE /tmp; test -s /var/log/envd.log")
    clock, pid1, tmpfs = out.stdout.decode().split()
    assert abs(int(clock) - time.time()) < 120, "wrenn.time= should have set the clock"
    assert pid1 == "tini"
    assert tmpfs == "tmpfs"
    assert out.exit_code == 0, "envd logs to /var/log/envd.log"
    assert "envd listening" in vm.log(), "envd logs to the console"


# --- failures ------------------------------------------------------------------------------------


def test_failed_step_leaves_no_partial_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = KernelRelease(
        package="linux-image-0.0-cloud-amd64", package_version="0.0-1", release="0.0-cloud-amd64"
    )
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF static")
    monkeypatch.setattr(_kernel, "resolve", lambda: fake)
    monkeypatch.setattr(_initramfs, "busybox", lambda: busybox)

    def failing_fetch(kernel: KernelRelease, workdir: Path, build_log: _build.BuildLog) -> Path:
        workdir.mkdir(parents=True)
        (workdir / "half-downloaded.deb").write_bytes(b"x")
        build_log.run(["sh", "-c", "echo simulated download failure >&2; exit 3"])
        raise AssertionError("unreachable")

    monkeypatch.setattr(_kernel, "fetch", failing_fetch)
    with pytest.raises(BuildError) as caught:
        wrenn.images.build("minimal", tmp_path)
    err = caught.value
    assert err.step == "kernel"
    assert "exited with 3" in err.message and "simulated download failure" in err.message
    assert err.log_path is not None and err.log_path.parent == tmp_path / "images" / "logs"
    assert "simulated download failure" in err.log_path.read_text()
    assert str(err.log_path) in str(err)
    template_dir = tmp_path / "images" / "minimal"
    assert list(template_dir.iterdir()) == [], "no version, staging or current entry is left"
    assert wrenn.images.find("minimal", tmp_path) is None
    assert not [p for p in (tmp_path / "images" / "cache").iterdir() if p.name.startswith("kernel-")]


def test_unknown_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        wrenn.images.build("nope", tmp_path)
    assert not (tmp_path / "images").exists()


# --- small parts ---------------------------------------------------------------------------------


def test_newc_archive_lists_with_cpio(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    archive = Newc()
    archive.dir("bin")
    archive.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    archive.symlink("bin/sh", "tool")
    archive.chardev("console", 5, 1)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive.to_bytes(), capture_output=True, check=True
    ).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names == ["bin", "bin/tool", "bin/sh", "console"]
    assert listing.splitlines()[3].startswith("crw-------")


def test_parse_size() -> None:
    assert parse_size("2G") == 2 * 1024**3
    assert parse_size("1536M") == 1536 * 1024**2
    assert parse_size("4096") == 4096
    assert parse_size("512MiB") == 512 * 1024**2
