"""Template builds: from a base (an image of this host, or a template built before) through the steps to
a template, its files in the template store (docs/templates.md).

1. The base is a chain of disk blobs (a base image's file system, then layers) with the kernel and initrd
   to boot it, and the state a step starts in (user, workdir, environment).
2. Each step's key is a hash of the key before it and the step's own inputs (its type, arguments and the
   hash of the files it copies); the first key hashes the team (the cache is never shared between teams),
   the base and the disk size. The steps whose results are in the build cache are skipped (logged as
   `CACHED`) up to the first one that is not, or that is forced; a build VM boots over the disk of the last
   cached one and runs the rest, each step's disk frozen into a layer and recorded under its key.
3. Finalize: the template's start command runs in the background, its ready command until it exits 0,
   then the VM is snapshotted. That snapshot is what every sandbox of the template restores.

Every log line goes to `emit(level, step, message)`; a failure raises `BuildFailed` naming the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import posixpath
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wrenn import images
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from . import _disk, _oci
from ._blobs import BlobError, BlobStore, check_digest
from ._buildvm import BuildVM, StepFailed, parse_egress
from ._errors import SandboxError
from ._launch import Launcher
from ._table import SandboxTable

log = logging.getLogger("wrenn.agent.build")

Emit = Callable[[str, str, str], None]
STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")
BUILD_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}(:[a-z_][a-z0-9_-]{0,31})?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODE = re.compile(r"^0?[0-7]{3,4}$")
#: Bump when what a step does changes (its cached results are then not reused).
CACHE_REVISION = 1

#: COPY inside the guest: unpack the archive, then put what `src` names at `dest` as Docker's COPY does
#: (a directory's contents into dest, a file into dest/ or as dest), owned by `owner`, files set to `mode`.
COPY_SCRIPT = r"""
set -eu
archive=$1 src=$2 dest=$3 owner=$4 mode=$5 gz=$6
tmp=$(mktemp -d /tmp/wrenn-copy.XXXXXX)
trap 'rm -rf "$tmp" "$archive"' EXIT
if [ "$gz" = 1 ]; then tar -xzf "$archive" -C "$tmp"; else tar -xf "$archive" -C "$tmp"; fi
cd "$tmp"
src=${src#./}
set +f
set -- $src
set -f
[ -e "$1" ] || [ -L "$1" ] || { echo "COPY: nothing matches $src in the uploaded files" >&2; exit 1; }
case "$dest" in */) dir=1 ;; *) dir=0 ;; esac
[ $# -gt 1 ] && dir=1
[ -d "$dest" ] && [ ! -L "$dest" ] && dir=1
copied=""
for item in "$@"; do
  if [ -d "$item" ] && [ ! -L "$item" ]; then
    mkdir -p "$dest"
    (cd "$item" && find . -mindepth 1 -maxdepth 1) | while read -r entry; do
      rm -rf "$dest/$entry"; cp -a "$item/$entry" "$dest/$entry"; done
    copied="$copied $dest"
  elif [ "$dir" = 1 ]; then
    mkdir -p "$dest"
    rm -rf "$dest/$(basename "$item")"; cp -a "$item" "$dest/"
    copied="$copied $dest/$(basename "$item")"
  else
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest"; cp -a "$item" "$dest"
    copied="$copied $dest"
  fi
done
for path in $copied; do
  chown -R "$owner" "$path"
  [ -n "$mode" ] && find "$path" -type f -exec chmod "$mode" {} +
  echo "copied $path"
done
"""
WORKDIR_SCRIPT = 'set -eu\n[ -d "$1" ] || { mkdir -p "$1" && chown "$2" "$1"; }\n'
USER_SCRIPT = (
    'set -eu\nid -u "$1" >/dev/null 2>&1 && exit 0\n'
    'if command -v useradd >/dev/null; then useradd -m -s /bin/sh "$1"; else adduser -D "$1"; fi\n'
    'echo "created user $1"\n'
)


class BuildFailed(RuntimeError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


Chain = list[tuple[str, int]]


@dataclass
class State:
    """Where a build is after a step: its disk and what the next step runs with."""

    chain: Chain
    user: str
    workdir: str
    env: dict[str, str] = field(default_factory=dict)

    def entry(self) -> dict[str, object]:
        return {
            "chain": [list(c) for c in self.chain],
            "user": self.user,
            "workdir": self.workdir,
            "env": self.env,
        }

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> State:
        chain = [(check_digest(str(d)), int(s)) for d, s in entry["chain"]]
        env = {str(k): str(v) for k, v in dict(entry.get("env") or {}).items()}  # type: ignore[call-overload]
        return cls(chain, str(entry["user"]), str(entry["workdir"]), env)


@dataclass(frozen=True)
class Base:
    """What a build starts from: its first state, the kernel and initrd to boot it, and its identity."""

    state: State
    kernel: tuple[str, int]
    initrd: tuple[str, int]
    image: images.Image
    kernel_version: str
    envd_version: str


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def describe(step: pb.BuildStep) -> str:
    return f"{step.type} {' '.join(a for a in step.args if a)}".strip()


class Builder:
    def __init__(self, table: SandboxTable, launcher: Launcher, blobs: BlobStore, files: Path) -> None:
        self.table = table
        self.launcher = launcher
        self.blobs = blobs
        #: Where COPY steps' archives are kept (PutBuildFile), by SHA-256.
        self.files = files
        self.semaphore = asyncio.Semaphore(2)

    # --- checks ---------------------------------------------------------------------------------------

    def _check(self, request: pb.BuildTemplateRequest) -> None:
        def bad(message: str) -> SandboxError:
            return SandboxError("invalid_argument", message)

        if not BUILD_ID.match(request.build_id):
            raise bad("build_id must be 1-64 characters of [a-z0-9-]")
        if not 1 <= (request.vcpus or 1) <= 8 or not 256 <= (request.memory_mb or 512) <= 16384:
            raise bad("a build VM has 1-8 vCPUs and 256-16384 MiB of memory")
        if not 1024 <= (request.disk_size_mb or 5120) <= 65536:
            raise bad("a build's disk is 1024-65536 MiB")
        if len(request.steps) > 500:
            raise bad("at most 500 steps")
        for index, step in enumerate(request.steps, 1):
            args = list(step.args)
            where = f"step {index} ({step.type})"
            if step.type not in STEP_TYPES:
                raise bad(f"{where}: the step types are {', '.join(STEP_TYPES)}")
            if any("\0" in a or len(a) > 65536 for a in args):
                raise bad(f"{where}: arguments hold no NUL and are at most 64 KiB")
            if step.type == "RUN" and (
                not args or not args[0] or (len(args) > 1 and args[1] and not USER.match(args[1]))
            ):
                raise bad(f"{where}: RUN [command, user?]")
            if step.type == "COPY":
                if len(args) < 2 or not args[0] or (not args[1].startswith("/") and not args[1]):
                    raise bad(f"{where}: COPY [src, dest, user?, mode?]")
                if len(args) > 2 and args[2] and not USER.match(args[2]):
                    raise bad(f"{where}: {args[2]!r} is not a user name")
                if len(args) > 3 and args[3] and not MODE.match(args[3]):
                    raise bad(f"{where}: {args[3]!r} is not an octal mode")
                check_digest(step.file_sha256)
            if step.type == "ENV" and (len(args) % 2 or not all(ENV_NAME.match(k) for k in args[::2])):
                raise bad(f"{where}: ENV [name, value, ...] with names of [A-Za-z0-9_]")
            if step.type == "WORKDIR" and (len(args) != 1 or not args[0]):
                raise bad(f"{where}: WORKDIR [path]")
            if step.type == "USER" and (len(args) != 1 or not USER.match(args[0])):
                raise bad(f"{where}: USER [name]")
        try:
            parse_egress(list(request.egress))
        except ValueError as exc:
            raise bad(str(exc)) from None

    # --- the base ---------------------------------------------------------------------------------------

    async def _base(self, request: pb.BuildTemplateRequest, emit: Emit) -> Base:
        which = request.base
        if which is None:
            raise SandboxError("invalid_argument", "a build needs a base: an image or a template")
        if which.field == "image":
            image = images.find(str(which.value), self.table.config.data_dir)
            if image is None:
                raise SandboxError("not_found", f"image {str(which.value)[:64]!r} is not built on this host")
            return await self._image_base(image)
        if which.field == "template":
            return await self.template_base(which.value)  # type: ignore[arg-type]
        return await self._oci_base(which.value, request, emit)  # type: ignore[arg-type]

    async def _image_base(self, image: images.Image) -> Base:
        files = image.manifest()["files"]
        added = {}
        for key in ("rootfs", "vmlinuz", "initrd"):
            path = {"rootfs": image.rootfs, "vmlinuz": image.vmlinuz, "initrd": image.initrd}[key]
            added[key] = await self.blobs.add(path, digest=files[key]["sha256"])
        state = State([added["rootfs"]], "user", "/home/user")  # the base images' user
        return Base(state, added["vmlinuz"], added["initrd"], image, image.kernel_version, image.envd_version)

    async def _oci_base(self, source: pb.OciSource, request: pb.BuildTemplateRequest, emit: Emit) -> Base:
        """An image of an OCI registry: pulled here, unpacked and given the runtime in a converter VM, its
        file system cached under the image's manifest digest."""
        image = images.find("minimal", self.table.config.data_dir)
        if image is None:
            raise SandboxError("failed_precondition", "converting an OCI image needs the minimal image here")
        work = self.table.config.data_dir / "builds" / f"oci-{request.build_id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            emit("info", "base", f"pulling {source.reference}")
            try:
                pulled = await _oci.pull(
                    source.reference, source.username, source.password, source.insecure, work
                )
            except _oci.OciError as exc:
                raise BuildFailed("base", str(exc)) from None
            emit("info", "base", f"pulled {pulled.manifest_digest} ({len(pulled.layers)} layers)")
            key = _key("oci", _oci.CONVERT_REVISION, pulled.manifest_digest, image.version)
            entry = self.blobs.cache_entry(key)
            if entry is not None and self._cached(entry):
                emit("info", "base", "CACHED the image's conversion")
                chain = State.from_entry(entry).chain
            else:
                chain = [await self._convert(image, pulled, work, request, emit)]
                self.blobs.put_cache_entry(key, State(chain, pulled.user, pulled.workdir, pulled.env).entry())
        finally:
            shutil.rmtree(work, ignore_errors=True)
        base = await self._image_base(image)
        state = State(chain, pulled.user, pulled.workdir, pulled.env)
        return replace(base, state=state)

    async def _convert(
        self,
        image: images.Image,
        pulled: _oci.Pulled,
        work: Path,
        request: pb.BuildTemplateRequest,
        emit: Emit,
    ) -> tuple[str, int]:
        layers_mb = sum(layer.stat().st_size for layer in pulled.layers) >> 20
        vm = BuildVM(
            self.table,
            self.launcher,
            f"oci-{request.build_id}"[:64].rstrip("-"),
            image,
            vcpus=request.vcpus or 1,
            # Its own size, not the template's: QEMU under TCG grows a translation cache while the guest runs
            # many programs, and the VM's cgroup allows guest RAM plus a fixed overhead.
            memory_mb=max(request.memory_mb or 512, 1536),
            disk_size_mb=max(4096, 2048 + 6 * layers_mb),
            egress=[],
        )
        inside = "/var/tmp/oci"  # noqa: S108 (the converter guest's)
        try:
            emit("info", "base", "unpacking the image in a converter VM")
            await vm.boot([(image.rootfs, "raw")])
            for index, layer in enumerate(pulled.layers):
                await vm.upload(f"{inside}/layer-{index:03d}", layer)
            await vm.upload(f"{inside}/busybox", _oci.BUSYBOX)
            code, tail = await vm.run(
                _oci.CONVERT_SCRIPT,
                user="root",
                args=(inside, "0"),
                timeout_s=1800,
                on_line=lambda stream, text: emit("info" if stream == "stdout" else "warn", "base", text),
            )
            if code != 0:
                raise BuildFailed("base", "converting the image failed:\n" + "\n".join(tail[-20:]))
            target = work / "root.ext4"
            assert vm.sandbox.envd is not None
            with target.open("wb") as f:
                async for chunk in vm.sandbox.envd.download(f"{inside}/root.ext4", user="root"):
                    await asyncio.to_thread(f.write, chunk)
        except StepFailed as exc:
            raise BuildFailed("base", f"converting the image failed: {exc}") from None
        finally:
            await vm.close()
        return await self.blobs.add(target)

    async def template_base(self, built: pb.BuiltTemplate) -> Base:
        """A template built before, as the base of a build (or of a sandbox): its blobs here and checked."""
        if built.kernel is None or built.initrd is None or not built.disk:
            raise SandboxError("invalid_argument", "a built template names its kernel, initrd and disk")
        chain = [(check_digest(b.sha256), b.size) for b in built.disk]
        try:
            await self.blobs.ensure_chain(chain)
            kernel = await self.blobs.ensure(check_digest(built.kernel.sha256), built.kernel.size)
            initrd = await self.blobs.ensure(check_digest(built.initrd.sha256), built.initrd.size)
        except (BlobError, _disk.DiskError) as exc:
            raise SandboxError("failed_precondition", f"template {built.build_id}: {exc}") from None
        image = images.Image(
            template=built.image if images.NAME.match(built.image) else "minimal",
            version=built.build_id.replace("-", "")[:12] or "0",
            kernel_version=built.kernel_version,
            envd_version=built.envd_version,
            directory=self.blobs.cache,
            vmlinuz=kernel,
            vmlinux=kernel,
            initrd=initrd,
            rootfs=self.blobs.local(chain[0][0]),
        )
        state = State(chain, built.default_user or "user", built.workdir or "/", dict(built.env))
        return Base(
            state,
            (built.kernel.sha256, built.kernel.size),
            (built.initrd.sha256, built.initrd.size),
            image,
            built.kernel_version,
            built.envd_version,
        )

    # --- the build ----------------------------------------------------------------------------------------

    async def build(self, request: pb.BuildTemplateRequest, emit: Emit) -> pb.BuiltTemplate:
        self._check(request)
        if not self.table.capabilities.shared_snapshots:
            raise SandboxError(
                "failed_precondition", f"{self.table.driver.name} cannot take template snapshots"
            )
        async with self.semaphore:
            return await self._build(request, emit)

    async def _build(self, request: pb.BuildTemplateRequest, emit: Emit) -> pb.BuiltTemplate:
        started = time.monotonic()
        steps = list(request.steps)
        total = len(steps)
        disk_mb = request.disk_size_mb or 5120
        emit("info", "base", "preparing the base")
        base = await self._base(request, emit)
        state = replace(base.state, env=dict(base.state.env))
        key = _key(CACHE_REVISION, request.team_id, [d for d, _ in state.chain], disk_mb)
        keys, cached = [], 0
        forced = request.force
        for index, step in enumerate(steps, 1):
            key = _key(key, step.type, list(step.args), step.file_sha256, step.files_hash)
            keys.append(key)
            forced = forced or step.force
            entry = None if forced or cached < index - 1 else self.blobs.cache_entry(key)
            log.debug("cache lookup", extra={"key": key, "found": entry is not None})
            if entry is not None and self._cached(entry):
                state = State.from_entry(entry)
                cached = index
                emit("info", str(index), f"CACHED [{index}/{total}] {describe(step)}")
        if cached:
            emit("info", "base", f"{cached} of {total} steps from the cache")
        vm = BuildVM(
            self.table,
            self.launcher,
            f"bld-{request.build_id}"[:64].rstrip("-"),
            base.image,
            vcpus=request.vcpus or 1,
            memory_mb=request.memory_mb or 512,
            disk_size_mb=disk_mb,
            egress=parse_egress(list(request.egress)),
        )
        work = self.table.config.data_dir / "builds" / request.build_id
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            boot_chain = state.chain
            for index in range(cached + 1, total + 1):
                step = steps[index - 1]
                if not vm.alive:
                    boot_chain = state.chain
                    await self._boot(vm, boot_chain, emit, str(index))
                state = await self._step(vm, step, index, total, state, boot_chain, work, emit, request)
                self.blobs.put_cache_entry(keys[index - 1], state.entry())
            if not vm.alive:
                boot_chain = state.chain
                await self._boot(vm, boot_chain, emit, "finalize")
            return await self._finalize(vm, request, base, state, boot_chain, work, emit, started)
        except StepFailed as exc:
            raise BuildFailed("finalize", str(exc)) from None
        finally:
            await vm.close()
            shutil.rmtree(work, ignore_errors=True)

    def _cached(self, entry: dict[str, Any]) -> bool:
        """The entry's blobs are all in the store."""
        try:
            chain = State.from_entry(entry).chain
        except (KeyError, TypeError, ValueError, BlobError):
            return False
        return all(self.blobs.local(d).is_file() or self.blobs.published(d).is_file() for d, _ in chain)

    async def _boot(self, vm: BuildVM, chain: Chain, emit: Emit, step: str) -> None:
        emit("info", step, "booting the build VM")
        try:
            await self.blobs.ensure_chain(chain)
        except (BlobError, _disk.DiskError) as exc:
            raise BuildFailed(step, f"the cached disk is unusable: {exc}") from None
        try:
            took = await vm.boot(self.blobs.local_chain(chain))
        except SandboxError as exc:
            raise BuildFailed(step, exc.message) from None
        emit("info", step, f"build VM up in {took:.1f} s")

    async def _step(
        self,
        vm: BuildVM,
        step: pb.BuildStep,
        index: int,
        total: int,
        state: State,
        boot_chain: Chain,
        work: Path,
        emit: Emit,
        request: pb.BuildTemplateRequest,
    ) -> State:
        name = str(index)
        args = list(step.args)
        emit("info", name, f"[{index}/{total}] {describe(step)}")
        began = time.monotonic()
        state = replace(state, env=dict(state.env))

        def line(stream: str, text: str) -> None:
            emit("info" if stream == "stdout" else "warn", name, text)

        async def run(script: str, user: str, *arguments: str, cwd: str = "/", limit_s: float = 600) -> None:
            code, tail = await vm.run(
                script, user=user, cwd=cwd, env=state.env, args=arguments, timeout_s=limit_s, on_line=line
            )
            if code != 0:
                raise BuildFailed(
                    name,
                    f"step {index} ({describe(step)[:200]}) failed with exit code {code}:\n"
                    + "\n".join(tail[-20:]),
                )

        try:
            if step.type == "ENV":
                state.env.update(dict(zip(args[::2], args[1::2], strict=True)))
            elif step.type == "RUN":
                user = args[1] if len(args) > 1 and args[1] else state.user
                timeout = step.timeout_sec or request.step_timeout_sec or 3600
                await run(args[0], user, cwd=state.workdir, limit_s=timeout)
            elif step.type == "WORKDIR":
                path = posixpath.normpath(posixpath.join(state.workdir, args[0]))
                await run(WORKDIR_SCRIPT, "root", path, state.user)
                state.workdir = path
            elif step.type == "USER":
                await run(USER_SCRIPT, "root", args[0])
                state.user = args[0]
            elif step.type == "COPY":
                await self._copy(vm, step, state, run)
        except StepFailed as exc:
            detail = "\n".join(exc.tail[-20:])
            raise BuildFailed(
                name,
                f"step {index} ({describe(step)[:200]}) failed: {exc}" + (f"\n{detail}" if detail else ""),
            ) from None
        if step.type != "ENV":
            layer = await self._layer(vm, boot_chain, work / f"layer-{index}.qcow2")
            state = replace(state, chain=[*boot_chain, layer])
        emit("info", name, f"step {index} done in {time.monotonic() - began:.1f} s")
        return state

    async def _copy(
        self, vm: BuildVM, step: pb.BuildStep, state: State, run: Callable[..., Awaitable[None]]
    ) -> None:
        args = [*step.args, "", "", ""]
        archive = self.files / check_digest(step.file_sha256)
        if not archive.is_file():
            raise StepFailed(f"the files of this COPY ({step.file_sha256[:12]}) were never uploaded")
        with archive.open("rb") as f:
            gz = "1" if f.read(2) == b"\x1f\x8b" else "0"
        inside = f"/tmp/wrenn-copy-{step.file_sha256[:16]}.tar"  # noqa: S108 (the guest's /tmp)
        await vm.upload(inside, archive)
        dest = args[1] if args[1].startswith("/") else posixpath.join(state.workdir, args[1])
        if args[1].endswith("/") and not dest.endswith("/"):
            dest += "/"
        mode = args[3].lstrip("0").rjust(3, "0") if args[3] else ""
        await run(COPY_SCRIPT, "root", inside, args[0], dest, args[2] or state.user, mode, gz)

    async def _layer(self, vm: BuildVM, boot_chain: Chain, path: Path) -> tuple[str, int]:
        """The VM's disk now, as a layer over the top of `boot_chain`, kept in the store."""
        await vm.layer(path)
        parent_format = "raw" if len(boot_chain) == 1 else "qcow2"
        await _disk.run("qemu-img", "rebase", "-u", "-b", boot_chain[-1][0], "-F", parent_format, str(path))
        return await self.blobs.add(path)

    async def _finalize(
        self,
        vm: BuildVM,
        request: pb.BuildTemplateRequest,
        base: Base,
        state: State,
        boot_chain: Chain,
        work: Path,
        emit: Emit,
        started: float,
    ) -> pb.BuiltTemplate:
        step = "finalize"
        follower: asyncio.Task[None] | None = None
        if request.start_cmd:
            emit("info", step, f"starting: {request.start_cmd}")
            follower = await vm.start_background(
                request.start_cmd,
                user=state.user,
                cwd=state.workdir,
                env=state.env,
                on_line=lambda stream, text: emit("info" if stream == "stdout" else "warn", step, text),
            )
        try:
            if request.ready_cmd:
                await self._wait_ready(vm, request, state, emit)
            snapshot = work / "snapshot"
            snapshot.mkdir()
            emit("info", step, "taking the ready snapshot")
            await vm.snapshot(snapshot)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
        top = snapshot / "rootfs.qcow2"
        parent_format = "raw" if len(boot_chain) == 1 else "qcow2"
        await _disk.run("qemu-img", "rebase", "-u", "-b", boot_chain[-1][0], "-F", parent_format, str(top))
        disk = [*boot_chain, await self.blobs.add(top)]
        vmstate = await self.blobs.add(snapshot / "vmstate")
        memory = await self.blobs.add(snapshot / "memory")
        blobs = {*disk, base.kernel, base.initrd, vmstate, memory}
        size = sum(s for _, s in blobs)

        def blob(item: tuple[str, int]) -> pb.Blob:
            return pb.Blob(sha256=item[0], size=item[1])

        built = pb.BuiltTemplate(
            build_id=request.build_id,
            kernel=blob(base.kernel),
            initrd=blob(base.initrd),
            disk=[blob(d) for d in disk],
            vmstate=blob(vmstate),
            memory=blob(memory),
            vcpus=request.vcpus or 1,
            memory_mb=request.memory_mb or 512,
            disk_size_mb=request.disk_size_mb or 5120,
            envd_version=base.envd_version,
            kernel_version=base.kernel_version,
            image=base.image.template,
            default_user=state.user,
            workdir=state.workdir,
            env=state.env,
            start_cmd=request.start_cmd,
            size_bytes=size,
            vmm=self.table.driver.name,
            accelerator=self.table.accelerator.accelerator.value,
            vmm_version=self.table.machine.vmm_version,
            machine=self.table.machine.machine,
        )
        emit(
            "info", step, f"template built in {time.monotonic() - started:.1f} s ({size >> 20} MiB of files)"
        )
        return built

    async def _wait_ready(
        self, vm: BuildVM, request: pb.BuildTemplateRequest, state: State, emit: Emit
    ) -> None:
        timeout = request.ready_timeout_sec or 300
        emit("info", "finalize", f"waiting for: {request.ready_cmd}")
        deadline = time.monotonic() + timeout
        last: list[str] = []
        while time.monotonic() < deadline:
            code, last = await vm.run(
                request.ready_cmd,
                user=state.user,
                cwd=state.workdir,
                env=state.env,
                timeout_s=min(60, timeout),
            )
            if code == 0:
                emit("info", "finalize", "ready")
                return
            await asyncio.sleep(0.5)
        detail = "\n".join(last[-10:])
        raise BuildFailed(
            "finalize",
            f"the ready command did not succeed within {timeout} s" + (f":\n{detail}" if detail else ""),
        )
