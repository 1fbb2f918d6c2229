"""A template from an OCI image pulled from a registry, with real VMs and no outside network: the test makes a
tiny image of its own (busybox and a few files, two layers, the second whiting out a file of the first and
holding a setuid file), pushes it to Debian's `docker-registry` on loopback with `skopeo`, and builds on it
with the unmodified `e2b` SDK (`from_image` with credentials). The image is unpacked in a converter VM, never
on the host; its capsules run envd through the runtime injected under /opt/wrenn."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._netns import wait_http
from tests.agent._agent import running_agent
from tests.conftest import _control_plane, free_port

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (VMs)")]
APPLETS = ["sh", "ls", "cat", "echo", "id", "sleep", "mkdir", "rm", "test", "[", "env", "chown", "chmod", "cp",
           "find", "basename", "dirname", "mktemp", "tar", "adduser", "stat", "true", "sync", "pwd"]  # fmt: skip


def _layer(entries: list[tuple[str, bytes | None, int, str]]) -> tuple[bytes, str]:
    """A gzipped tar layer of (name, data or None for a directory, mode, symlink target); its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, link in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def _image(layout: Path) -> None:
    """An OCI image layout: busybox as /bin, an /etc with root, and a second layer."""
    busybox = Path("/bin/busybox").read_bytes()
    first = [("bin", None, 0o755, ""), ("bin/busybox", busybox, 0o755, ""), ("etc", None, 0o755, ""),
             ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644, ""), ("etc/group", b"root:x:0:\n", 0o644, ""),
             ("etc/old.txt", b"whited out\n", 0o644, ""), ("root", None, 0o700, ""), ("tmp", None, 0o1777, "")]  # fmt: skip
    first += [(f"bin/{a}", None, 0o777, "busybox") for a in APPLETS]
    second = [("hello.txt", b"from the image\n", 0o644, ""), ("etc/.wh.old.txt", b"", 0o644, ""),
              ("bin/suid", b"#!/bin/sh\nid\n", 0o4755, "")]  # fmt: skip
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids = [], []
    for entries in (first, second):
        data, diff_id = _layer(entries)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(data)})
        diff_ids.append(diff_id)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/root"}}  # fmt: skip
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())}, "layers": layers}  # fmt: skip
    described = {"mediaType": manifest["mediaType"], **put(json.dumps(manifest).encode()),
                 "annotations": {"org.opencontainers.image.ref.name": "1"}}  # fmt: skip
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [described]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """Debian's docker-registry on loopback, seeded with the test's image as `tiny:1`."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.fail("apt-get install docker-registry skopeo (scripts/bootstrap does)")
    root = Path(tempfile.mkdtemp(prefix="wrenn-registry-"))
    port = free_port()
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    server = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        _image(root / "layout")
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{root / 'layout'}:1",
             f"docker://127.0.0.1:{port}/tiny:1"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(image: object, registry: str) -> Iterator[tuple[str, str]]:
    os.environ["WRENN_REGISTRY_INSECURE"] = registry
    try:
        with running_agent(f"to{os.getpid() % 1000:03d}i") as agent:
            yield from _control_plane(agent.url, agent.token_file)
    finally:
        os.environ.pop("WRENN_REGISTRY_INSECURE", None)


def test_a_template_from_an_image_of_a_registry(platform: tuple[str, str], registry: str) -> None:
    from e2b import Template

    from wrenn import Capsule

    base, key = platform
    template = (
        Template()
        .from_image(f"{registry}/tiny:1", username="wrenn", password="not-checked-by-this-registry")
        .run_cmd("echo built on $FROM_IMAGE > built.txt")
        .set_start_cmd("sleep 100000", "test -f /root/built.txt")
    )
    logs: list[Any] = []
    Template.build(template, "tiny", api_key=key, api_url=base, on_build_logs=logs.append)
    text = "\n".join(str(e.message) for e in logs)
    assert "unpacking the image in a converter VM" in text and "converted:" in text, text
    with Capsule(template="tiny", api_key=key, base_url=base) as capsule:
        out = capsule.commands.run(
            "cat /hello.txt built.txt; pwd; id -u; ls /etc/old.txt 2>&1; stat -c %a /bin/suid; echo $FROM_IMAGE"
        )
        lines = out.stdout.splitlines()
        assert lines[:4] == ["from the image", "built on yes", "/root", "0"], out.stdout
        assert "No such file" in lines[4] and lines[5] == "4755" and lines[6] == "yes", out.stdout
        assert "sleep 100000" in capsule.commands.run(
            "ps -o args 2>/dev/null || cat /proc/*/cmdline"
        ).stdout.replace("\0", " ")

    # Again: the pull finds the same image, whose conversion is cached.
    logs.clear()
    Template.build(template, "tiny", api_key=key, api_url=base, on_build_logs=logs.append)
    assert "CACHED the image's conversion" in "\n".join(str(e.message) for e in logs)
