"""Images from OCI registries as a build's base (docs/templates.md).

1. **Pull** with `skopeo copy docker://REF oci:DIR` (credentials in a 0600 auth file, never on a command
   line). skopeo only downloads and checks blobs; nothing of the image is unpacked on the host. The host
   reads the layout's JSON (index, manifest, config) and nothing else of it.
2. **Unpack in a VM.** A converter VM boots from the `minimal` image; the layers are uploaded into it and
   unpacked there, as root inside the guest, in order, whiteouts and opaque directories applied, into a
   directory that becomes an ext4 image (`mkfs.ext4 -d`). Setuid files, device nodes and symlinks in a
   layer touch only that disposable guest.
3. **Inject the runtime** into the image's root, under `/opt/wrenn` and apart from the image's own files:
   envd and its packages, a Python with its standard library and the shared libraries it needs (started
   through its own dynamic loader, so the image's libc does not matter), busybox (static, the host's:
   what the guest's init uses), tini and resize2fs; and `/sbin/wrenn-init`, the guest init pointed at them.
4. The ext4 image comes back to the host as a file (never mounted here) and becomes the bottom blob of the
   build's disk chain; the build's user, workdir and environment start as the image's config says.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import _disk

#: Bump when the conversion changes (converted images are cached by it).
CONVERT_REVISION = 1
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REFERENCE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:/@+-]{0,254}$")
#: The host's static busybox (Debian's busybox-static), the converted guest's shell utilities.
BUSYBOX = Path("/bin/busybox")


class OciError(RuntimeError):
    pass


@dataclass
class Pulled:
    layers: list[Path]
    manifest_digest: str
    user: str = "root"
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)


def registry_of(reference: str) -> str:
    """The registry a reference names (Docker's rule: a first part with a dot, a colon or `localhost`)."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


async def pull(reference: str, username: str, password: str, insecure: bool, work: Path) -> Pulled:
    if not REFERENCE.match(reference) or ".." in reference:
        raise OciError(f"{reference[:120]!r} is not an image reference")
    if shutil.which("skopeo") is None:
        raise OciError("skopeo is not installed on this host (apt-get install skopeo)")
    layout = work / "layout"
    args = ["skopeo", "copy", "--quiet", "--retry-times", "2"]
    if username or password:
        auth = work / "auth.json"
        auth.touch(mode=0o600)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        auth.write_text(json.dumps({"auths": {registry_of(reference): {"auth": token}}}))
        args += ["--src-authfile", str(auth)]
    if insecure:
        args += ["--src-tls-verify=false"]
    try:
        await _disk.run(*args, f"docker://{reference}", f"oci:{layout}:image")
    except _disk.DiskError as exc:
        raise OciError(
            f"cannot pull {reference}: {str(exc).removeprefix('skopeo failed: ')[:2000]}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            (work / "auth.json").unlink()
    return read_layout(layout)


def _blob(layout: Path, digest: object) -> Path:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise OciError(f"the image names a blob {str(digest)[:80]!r} that is not a sha256 digest")
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if not path.is_file():
        raise OciError(f"the image's blob {digest[:19]} is missing")
    return path


def read_layout(layout: Path) -> Pulled:
    try:
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"]
        manifest = json.loads(_blob(layout, manifest_digest).read_text())
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text()).get("config") or {}
        layers = [_blob(layout, layer["digest"]) for layer in manifest["layers"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise OciError(f"the image's layout is unreadable: {exc}") from None
    env = {}
    for item in config.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            env[key] = value
    user = str(config.get("User") or "root").split(":", 1)[0] or "root"
    return Pulled(layers, manifest_digest, user, str(config.get("WorkingDir") or "/"), env)


#: The conversion, run as root in the converter VM (oci-convert.sh beside this module).
CONVERT_SCRIPT = Path(__file__).with_name("oci-convert.sh").read_text()
