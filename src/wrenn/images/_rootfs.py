"""The root filesystem: a cached debootstrap base, envd and its Python packages, then an ext4 image."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import wrenn

from . import _npm
from ._steps import BuildLog
from ._templates import SUITE, VARIANT, Template

#: Bump when the base customisation below changes, so cached bases are rebuilt.
BASE_REVISION = 1
MIRROR = os.environ.get("WRENN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: The guest's Python (bookworm's python3): envd's packages are resolved for it.
GUEST_PYTHON = "3.11"
#: Where envd and its packages live in the guest (on envd's PYTHONPATH only, not the system Python's).
SITE = "opt/wrenn/site"
DEFAULT_USER = "user"
DEFAULT_USER_UID = 1000
#: Where a recipe's wheels and setup script are put inside the image's root while it is built.
GUEST_WHEELS = "/tmp/wrenn-wheels"  # noqa: S108 (the image's /tmp, not the host's)
GUEST_SETUP = "/tmp/wrenn-setup.sh"  # noqa: S108
#: Wheel platforms the guest (glibc 2.36) can load.
PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)),
)

#: Paths trimmed from the base (relative to the root). Copyright files stay.
TRIM_GLOBS: tuple[str, ...] = (
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "var/log/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
)
TAR = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*")
DPKG_NODOC = """\
# Wrenn images are trimmed: later package installs skip docs and translations too.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""


# --- the debootstrap base (cached as a tarball per package list) ---------------------------------


def base_key(template: Template) -> str:
    recipe = {"revision": BASE_REVISION, "suite": SUITE, "variant": VARIANT, "packages": template.packages}
    recipe["pip_system_install"] = template.pip_system_install
    recipe["user"] = [DEFAULT_USER, DEFAULT_USER_UID]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def prepare_base(template: Template, root: Path, cache_dir: Path, build_log: BuildLog, refresh: bool) -> bool:
    """Fill `root` with the template's Debian base. Returns True when it came from the cache."""
    tarball = cache_dir / f"base-{template.name}-{base_key(template)}.tar"
    root.mkdir(parents=True, exist_ok=True)
    if tarball.is_file() and not refresh:
        build_log.write(f"base from cache: {tarball}")
        build_log.run([*TAR, "-xpf", tarball, "-C", root])
        return True
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    build_log.run(
        [
            "debootstrap",
            f"--variant={VARIANT}",
            f"--include={','.join(template.packages)}",
            f"--cache-dir={debs.resolve()}",
            SUITE,
            root,
            MIRROR,
        ]
    )
    customise_base(template, root, build_log)
    partial = tarball.with_suffix(".tar.partial")
    build_log.run([*TAR, "-cf", partial, "-C", root, "."])
    partial.rename(tarball)
    for stale in cache_dir.glob(f"base-{template.name}-*.tar"):
        if stale != tarball:
            stale.unlink()
    return False


def customise_base(template: Template, root: Path, build_log: BuildLog) -> None:
    if not (root / "usr/lib" / f"python{GUEST_PYTHON}").is_dir():
        raise RuntimeError(f"the base has no Python {GUEST_PYTHON}; envd's packages would not load")
    build_log.run(
        [
            "chroot",
            root,
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--uid",
            str(DEFAULT_USER_UID),
            "--user-group",
            "--groups",
            "sudo",
            DEFAULT_USER,
        ]
    )
    sudoers = root / "etc/sudoers.d" / DEFAULT_USER
    sudoers.write_text(f"{DEFAULT_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/hostname").write_text("sandbox\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/dpkg/dpkg.cfg.d/01-wrenn-nodoc").write_text(DPKG_NODOC)
    if template.pip_system_install:
        for marker in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
    trim(root)


def trim(root: Path) -> None:
    for pattern in TRIM_GLOBS:
        for path in root.glob(pattern):
            _remove(path)
    for doc in (root / "usr/share/doc").glob("*"):
        if doc.is_dir() and not doc.is_symlink():
            for item in doc.iterdir():
                if item.name != "copyright":
                    _remove(item)
    for locale in (root / "usr/share/locale").glob("*"):
        if locale.name != "locale.alias":
            _remove(locale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- envd and its Python packages ----------------------------------------------------------------


def envd_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """The `envd` extra of the wrenn distribution (and `extras`, the guest programs' own), pinned to the
    versions the host runs (and tests)."""
    try:
        requires = importlib.metadata.requires("wrenn") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the wrenn distribution is not installed (pip install -e .)") from None
    wanted = "|".join(re.escape(e) for e in ("envd", *extras))
    pinned = set()
    for req in requires:
        spec, _, marker = req.partition(";")
        if not re.search(rf"""extra\s*==\s*["']({wanted})["']""", marker):
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if not name or name.group(0) == "wrenn":
            continue
        try:
            pinned.add(f"{name.group(0)}=={importlib.metadata.version(name.group(0))}")
        except importlib.metadata.PackageNotFoundError:
            pinned.add(spec.strip())
    if not pinned:
        raise RuntimeError("the wrenn distribution declares no envd extra")
    return sorted(pinned)


def install_python_deps(root: Path, requirements: list[str], build_log: BuildLog) -> None:
    """Host pip puts wheels for the guest's Python into /opt/wrenn/site: the guest needs no network."""
    site = root / SITE
    site.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    build_log.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            site,
            "--python-version",
            GUEST_PYTHON,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            *platforms,
            *requirements,
        ]
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the host's shebang


def envd_sources(programs: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """The files of the wrenn package the guest needs (envd and the template's guest `programs`), as (path
    relative to site-packages, source)."""
    package = Path(wrenn.__file__).parent
    files = [package / "__init__.py", package / "proto" / "__init__.py"]
    files += [package / "_shared" / "__init__.py", package / "_shared" / "logs.py"]
    for sub in ("envd", "proto/envd", *programs):
        files += sorted(p for p in (package / sub).rglob("*.py") if "__pycache__" not in p.parts)
    return [(f"wrenn/{p.relative_to(package).as_posix()}", p) for p in files]


def envd_tree_hash(programs: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    for rel, path in envd_sources(programs):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def envd_version() -> str:
    """The envd protocol version the image's guests speak (recorded in its manifest)."""
    from wrenn.envd import ENVD_VERSION

    return ENVD_VERSION


def wrenn_init_script() -> bytes:
    return resources.files("wrenn.images").joinpath("guest/wrenn-init").read_bytes()


def install_envd(
    root: Path, info: dict[str, Any], build_log: BuildLog, programs: tuple[str, ...] = ()
) -> None:
    site = root / SITE
    for rel, src in envd_sources(programs):
        dest = site / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    init = root / "sbin/wrenn-init"
    init.write_bytes(wrenn_init_script())
    init.chmod(0o755)
    (root / "etc/wrenn").mkdir(exist_ok=True)
    (root / "etc/wrenn/image.json").write_text(json.dumps(info, indent=2) + "\n")
    # Byte-compile with the guest's own interpreter, so that no sandbox pays for it at first start.
    build_log.run(["chroot", root, "python3", "-m", "compileall", "-q", "-f", "/" + SITE], check=False)
    for cache in (root / "root").glob(".cache"):
        shutil.rmtree(cache, ignore_errors=True)


# --- a template's recipe directory: files onto the root, packages into the guest's Python --------------


def recipe_path(template: Template) -> Path | None:
    if template.recipe_dir is None:
        return None
    return Path(str(resources.files("wrenn.images").joinpath("recipes", template.recipe_dir)))


def recipe_tree_hash(template: Template) -> str | None:
    """A hash of every file of the template's recipe directory (names, modes and contents)."""
    directory = recipe_path(template)
    if directory is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(directory).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{mode}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def install_recipe(template: Template, root: Path, cache_dir: Path, build_log: BuildLog) -> str:
    """Copy the recipe's `rootfs/` onto the root, install its `requirements.lock` into the guest's system
    Python (wheels fetched by the host into the cache, installed by the guest's own pip with no network)
    and its `npm.lock` into the guest's node_modules (likewise), then run its `setup.sh` in the root.
    Returns a note for the progress display."""
    directory = recipe_path(template)
    if directory is None:
        return ""
    overlay = directory / "rootfs"
    if overlay.is_dir():
        build_log.run(["cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(root)])
    lock = directory / "requirements.lock"
    count = 0
    if lock.is_file():
        wheels = cache_dir / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        platforms = [arg for p in (*PLATFORMS, "any") for arg in ("--platform", p)]
        build_log.run(
            [
                sys.executable, "-m", "pip", "download", "--no-input", "--disable-pip-version-check",
                "--progress-bar", "off", "--no-deps", "--require-hashes", "--only-binary=:all:",
                "--python-version", GUEST_PYTHON, "--implementation", "cp", *platforms,
                "--dest", wheels, "-r", lock,
            ]
        )  # fmt: skip
        inside = root / GUEST_WHEELS.lstrip("/")
        inside.mkdir(parents=True)
        try:
            for wheel in wheels.glob("*.whl"):
                os.link(wheel, inside / wheel.name) if _same_fs(wheel, inside) else shutil.copy(wheel, inside)
            shutil.copyfile(lock, inside / "requirements.lock")
            build_log.run(
                [
                    "chroot", root, "python3", "-m", "pip", "install", "--no-input", "--no-index",
                    "--disable-pip-version-check", "--progress-bar", "off", "--no-cache-dir", "--no-deps",
                    "--require-hashes", "--find-links", GUEST_WHEELS,
                    "-r", f"{GUEST_WHEELS}/requirements.lock",
                ],
                env={"HOME": "/root", "PIP_ROOT_USER_ACTION": "ignore"},
            )  # fmt: skip
        finally:
            shutil.rmtree(inside, ignore_errors=True)
        count = sum(1 for line in lock.read_text().splitlines() if line and not line.startswith("#"))
    npm_lock = directory / "npm.lock"
    npm_count = _npm.install(npm_lock, root, cache_dir, build_log) if npm_lock.is_file() else 0
    setup = directory / "setup.sh"
    if setup.is_file():
        shutil.copyfile(setup, root / GUEST_SETUP.lstrip("/"))
        try:
            build_log.run(["chroot", root, "/bin/sh", "-eu", GUEST_SETUP], env={"HOME": "/root"})
        finally:
            (root / GUEST_SETUP.lstrip("/")).unlink(missing_ok=True)
    for cache in (root / "root").glob(".cache"):
        shutil.rmtree(cache, ignore_errors=True)
    notes = [f"{count} Python packages" if count else "", f"{npm_count} npm packages" if npm_count else ""]
    return ", ".join(note for note in notes if note)


def lock_requirements(template: Template) -> str:
    """The text of the recipe's `requirements.lock`: `requirements.in` resolved for the guest's Python and
    platform (wheels only), every package pinned with the hash of the wheel pip picked."""
    directory = recipe_path(template)
    if directory is None or not (directory / "requirements.in").is_file():
        raise ValueError(f"template {template.name!r} has no requirements.in")
    platforms = [arg for p in (*PLATFORMS, "any") for arg in ("--platform", p)]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                "--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t"),
                "--python-version", GUEST_PYTHON, "--implementation", "cp", "--only-binary=:all:",
                *platforms, "-r", str(directory / "requirements.in"),
            ],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    lines = [
        f"# Generated by `python -m wrenn.images lock --template {template.name}` from requirements.in: "
        "every\n# package the guest's Python gets, pinned with its wheel's hash (installed with --no-deps "
        "--require-hashes).\n",
    ]
    pins = {}
    for item in installs:
        name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        pins[name] = f"{name}=={item['metadata']['version']} --hash=sha256:{digest}"
    return "\n".join([*lines, *(pins[name] for name in sorted(pins))]) + "\n"


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


# --- the disk image ------------------------------------------------------------------------------


def make_image(root: Path, out: Path, size_bytes: int, build_log: BuildLog) -> None:
    """An ext4 image of `root`: sparse, no journal (the base is read-only), inode tables zeroed now."""
    with out.open("wb") as f:
        f.truncate(size_bytes)
    build_log.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "wrenn-root",
            "-b",
            "4096",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
            root,
            out,
        ]
    )
