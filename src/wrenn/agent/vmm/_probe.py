"""Choosing the accelerator: KVM where a real guest kernel boots under it, else TCG.

`/dev/kvm` existing is not enough: on a host whose KVM is PVM (nested virtualisation without VMX),
KVM_CREATE_VM works but a stock kernel never boots. So the probe boots the guest kernel itself under
KVM, with no root disk, and watches its console: a kernel that gets as far as mounting a root file
system (and panics for lack of one) has booted. Anything else within the deadline means TCG.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._driver import Accelerator
from .qemu import MACHINE, qemu_version

log = logging.getLogger("wrenn.agent.probe")

#: Console lines that only a kernel which booted through early init prints.
BOOTED = re.compile(rb"(VFS: Unable to mount root fs|Run /init as init process|Freeing unused kernel)")
DEFAULT_DEADLINE_S = 20.0


@dataclass(frozen=True, slots=True)
class AcceleratorChoice:
    accelerator: Accelerator
    reason: str
    #: The kvm module the host kernel has loaded (kvm_intel, kvm_amd, kvm_pvm) or "".
    kvm_module: str = ""
    probed: bool = False

    def to_json(self) -> dict[str, str | bool]:
        return {**asdict(self), "accelerator": self.accelerator.value}


def kvm_module() -> str:
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path(f"/sys/module/{name}").exists():
            return name
    return ""


async def probe(
    kernel: Path,
    *,
    qemu_binary: str = "qemu-system-x86_64",
    force: Accelerator | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> AcceleratorChoice:
    module = kvm_module()
    if force is not None:
        return AcceleratorChoice(force, "forced by configuration", module)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AcceleratorChoice(Accelerator.TCG, "/dev/kvm is missing or not accessible", module)
    with tempfile.TemporaryDirectory(prefix="wrenn-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        args = [
            qemu_binary, "-M", MACHINE, "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 reboot=t",
        ]  # fmt: skip
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            while time.monotonic() - started < deadline_s:
                if console.exists() and BOOTED.search(console.read_bytes()):
                    elapsed = time.monotonic() - started
                    return AcceleratorChoice(
                        Accelerator.KVM,
                        f"a test guest booted under KVM in {elapsed:.1f} s",
                        module,
                        probed=True,
                    )
                if proc.returncode is not None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.1)
            if proc.returncode is not None:
                out = (await proc.stdout.read()).decode(errors="replace").strip() if proc.stdout else ""
                detail = out.splitlines()[-1] if out else f"exit status {proc.returncode}"
                reason = f"a test guest failed under KVM ({detail})"
            else:
                reason = f"a test guest did not boot under KVM within {deadline_s:.0f} s"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if module == "kvm_pvm":
        reason += "; this host's KVM is PVM, which runs only PVM-enabled guest kernels"
    return AcceleratorChoice(Accelerator.TCG, reason, module, probed=True)


def _cache_key(kernel: Path, qemu_binary: str) -> str:
    digest = hashlib.sha256()
    with kernel.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    for part in (qemu_version(qemu_binary), platform.release(), kvm_module()):
        digest.update(part.encode())
    return digest.hexdigest()


async def choose(
    kernel: Path,
    cache: Path,
    *,
    qemu_binary: str = "qemu-system-x86_64",
    force: Accelerator | None = None,
    reprobe: bool = False,
) -> AcceleratorChoice:
    """`probe`, remembering the verdict in `cache` for this kernel, QEMU, host kernel and kvm module."""
    if force is not None:
        return await probe(kernel, qemu_binary=qemu_binary, force=force)
    key = _cache_key(kernel, qemu_binary)
    if not reprobe:
        with contextlib.suppress(OSError, ValueError, KeyError):
            saved = json.loads(cache.read_text())
            if saved["key"] == key:
                choice = AcceleratorChoice(
                    Accelerator(saved["accelerator"]),
                    saved["reason"],
                    saved.get("kvm_module", ""),
                    probed=False,
                )
                log.info(
                    "accelerator from cache",
                    extra={"accelerator": choice.accelerator.value, "reason": choice.reason},
                )
                return choice
    choice = await probe(kernel, qemu_binary=qemu_binary)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, **choice.to_json()}))
    log.info("accelerator probed", extra={"accelerator": choice.accelerator.value, "reason": choice.reason})
    return choice
