"""`build()`: kernel, initramfs and root disk of one template, versioned by a hash of their inputs."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import _initramfs, _kernel, _rootfs, _templates
from ._image import DEFAULT_DATA_DIR, FILES, MANIFEST, Image, images_dir, point_current, template_dir
from ._kernel import KernelRelease
from ._steps import BuildError, BuildLog, NullProgress, Progress, RichProgress, Steps

log = logging.getLogger("wrenn.images")

#: Bump when the build recipe changes in a way the other inputs do not capture.
RECIPE_REVISION = 1
DEFAULT_DISK_SIZE = 2 * 1024**3


def build(
    template: str = "minimal",
    data_dir: Path | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    disk_size: int | None = None,
    console: object | None = None,
) -> Image:
    """Build the image of `template` under `data_dir` (default /var/lib/wrenn) and make it `current`.

    Does nothing when the image of the same inputs (recipe, kernel, envd sources and packages) already
    exists, unless `force` (which also ignores the kernel and debootstrap caches). Raises BuildError
    naming the failed step and the kept log; ValueError for an unknown template.
    """
    recipe = _templates.get(template)
    template = recipe.name
    disk_size = disk_size or recipe.disk_size or DEFAULT_DISK_SIZE
    if disk_size < 256 * 1024**2:
        raise ValueError("disk_size must be at least 256 MiB")
    data = (data_dir or DEFAULT_DATA_DIR).absolute()
    root = images_dir(data)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        build_log = BuildLog(root / "logs" / f"{template}-{stamp}.log")
        try:
            try:
                inputs = _inputs(recipe, disk_size)
            except Exception as exc:
                raise BuildError("inputs", str(exc), build_log.path) from exc
            version = _version(inputs)
            build_log.write(f"template {template}, version {version}\ninputs: {json.dumps(inputs, indent=2)}")
            tdir = template_dir(data, template)
            existing = Image.load(tdir / version)
            if existing is not None and not force:
                point_current(tdir, version)
                build_log.close()
                build_log.path.unlink()
                log.info(
                    "image %s %s is up to date: nothing to build",
                    template,
                    version,
                    extra={"template": template, "version": version},
                )
                return existing
            display: Progress = (
                RichProgress(f"building image {template} {version}", console) if progress else NullProgress()
            )
            with display:
                image = _build(recipe, data, version, inputs, build_log, display, force)
        except BuildError as exc:
            build_log.close()
            log.error(
                "image build of %s failed at step %r; log: %s",
                template,
                exc.step,
                exc.log_path,
                extra={"template": template, "step": exc.step, "error": exc.message, "log": exc.log_path},
            )
            raise
        build_log.close()
        shutil.move(build_log.path, image.directory / "build.log")
        point_current(tdir, version)
        log.info(
            "image %s %s built in %s",
            template,
            version,
            image.directory,
            extra={"template": template, "version": version, "path": image.directory},
        )
        return image


def _inputs(recipe: _templates.Template, disk_size: int) -> dict[str, Any]:
    kernel = _kernel.resolve()
    return {
        "recipe_revision": RECIPE_REVISION,
        "base_revision": _rootfs.BASE_REVISION,
        "template": recipe.recipe(),
        "kernel": asdict(kernel),
        "modules": list(_kernel.WANTED_MODULES),
        "busybox": _sha256(_initramfs.busybox()),
        "init": hashlib.sha256(_initramfs.init_script()).hexdigest(),
        "wrenn_init": hashlib.sha256(_rootfs.wrenn_init_script()).hexdigest(),
        "envd_tree": _rootfs.envd_tree_hash(recipe.guest_programs),
        "envd_version": _rootfs.envd_version(),
        "requirements": _rootfs.envd_requirements(recipe.guest_programs),
        "disk_size": disk_size,
        **({"recipe_files": files} if (files := _rootfs.recipe_tree_hash(recipe)) else {}),
    }


def _version(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def _build(
    recipe: _templates.Template,
    data: Path,
    version: str,
    inputs: dict[str, Any],
    build_log: BuildLog,
    display: Progress,
    force: bool,
) -> Image:
    tdir = template_dir(data, recipe.name)
    tdir.mkdir(parents=True, exist_ok=True)
    cache = images_dir(data) / "cache"
    cache.mkdir(exist_ok=True)
    staging = tdir / f".build-{version}-{os.getpid()}"
    _discard(staging)
    staging.mkdir()
    steps = Steps(build_log, display)
    kernel = KernelRelease(**inputs["kernel"])
    try:
        with steps.step("kernel") as note:
            kdir, cached = _kernel_artifacts(kernel, cache, staging / "work", build_log, force)
            note.text = "cached" if cached else ""
            for name in ("vmlinuz", "vmlinux"):
                _link_or_copy(kdir / name, staging / name)
        with steps.step("initramfs") as note:
            order = (kdir / "modules" / "load-order").read_text().split()
            modules = [(name, (kdir / "modules" / name).read_bytes()) for name in order]
            _initramfs.build(modules, staging / "initrd.img")
            note.text = f"{len(modules)} modules"
        rootdir = staging / "work" / "root"
        with steps.step("debootstrap") as note:
            if _rootfs.prepare_base(recipe, rootdir, cache, build_log, refresh=force):
                note.text = "cached"
        with steps.step("python deps"):
            _rootfs.install_python_deps(rootdir, inputs["requirements"], build_log)
        with steps.step("envd"):
            info = {"template": recipe.name, "version": version, "envd_version": inputs["envd_version"]}
            _rootfs.install_envd(rootdir, info, build_log, recipe.guest_programs)
        with steps.step("recipe") as note:
            note.text = _rootfs.install_recipe(recipe, rootdir, cache, build_log)
        with steps.step("rootfs image") as note:
            _rootfs.make_image(rootdir, staging / FILES["rootfs"], inputs["disk_size"], build_log)
            _discard(staging / "work")
            manifest = _manifest(recipe, version, kernel, inputs, staging, order, steps.timings)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for name in FILES.values():
                (staging / name).chmod(0o444)
            note.text = _mib(manifest["files"]["rootfs"]["allocated"])
        final = tdir / version
        if final.exists():  # --force over a complete image: swap, then drop the old one
            old = tdir / f".old-{version}-{os.getpid()}"
            final.rename(old)
            staging.rename(final)
            _discard(old)
        else:
            staging.rename(final)
    except BaseException:
        _discard(staging)
        raise
    image = Image.load(final)
    if image is None:
        raise BuildError("rootfs image", f"{final} is incomplete after the build", build_log.path)
    return image


def _kernel_artifacts(
    kernel: KernelRelease, cache: Path, work: Path, build_log: BuildLog, force: bool
) -> tuple[Path, bool]:
    """vmlinuz, vmlinux and the initramfs modules of `kernel`, cached per kernel package and module list."""
    key = hashlib.sha256(json.dumps(_kernel.WANTED_MODULES).encode()).hexdigest()[:8]
    kdir = cache / f"kernel-{kernel.release}-{kernel.package_version}-{key}"
    if (kdir / "modules" / "load-order").is_file() and not force:
        build_log.write(f"kernel from cache: {kdir}")
        return kdir, True
    partial = kdir.with_name(kdir.name + ".partial")
    _discard(partial)
    try:
        (partial / "modules").mkdir(parents=True)
        tree = _kernel.fetch(kernel, work / "kernel", build_log)
        bz = _kernel.bzimage(tree, kernel)
        shutil.copyfile(bz, partial / "vmlinuz")
        _kernel.extract_vmlinux(bz, partial / "vmlinux", build_log)
        names = []
        for src in _kernel.module_load_order(tree, kernel, build_log):
            name = src.name.removesuffix(".xz").removesuffix(".gz")
            (partial / "modules" / name).write_bytes(_kernel.module_bytes(src))
            names.append(name)
        build_log.write(f"initramfs modules, in load order: {' '.join(names)}")
        (partial / "modules" / "load-order").write_text("".join(f"{n}\n" for n in names))
        _discard(kdir)
        partial.rename(kdir)
    finally:
        _discard(partial)
        _discard(work / "kernel")
    return kdir, False


def _manifest(
    recipe: _templates.Template,
    version: str,
    kernel: KernelRelease,
    inputs: dict[str, Any],
    directory: Path,
    modules: list[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    files = {}
    for key, name in FILES.items():
        st = (directory / name).stat()
        files[key] = {
            "name": name,
            "size": st.st_size,
            "allocated": st.st_blocks * 512,
            "sha256": _sha256(directory / name),
        }
    return {
        "template": recipe.name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": asdict(kernel),
        "envd_version": inputs["envd_version"],
        "default_user": _rootfs.DEFAULT_USER,
        "disk_size": inputs["disk_size"],
        "files": files,
        "initramfs_modules": modules,
        "python_requirements": inputs["requirements"],
        "inputs": inputs,
        "step_seconds": timings,
        **({"ready": asdict(recipe.ready)} if recipe.ready else {}),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB allocated"


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _discard(path: Path) -> None:
    """Remove a staging tree, unmounting anything a chroot step left mounted inside it first."""
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        mounts = []
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another image build to finish", extra={"lock": str(path)})
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
