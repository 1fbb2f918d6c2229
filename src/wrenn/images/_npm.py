"""A recipe's npm packages (`npm.lock`): tarballs from the npm registry, pinned by version and integrity
hash, fetched by the host into the image cache and unpacked into the guest's `/usr/local/lib/node_modules`
(npm's global layout) with no network in the guest. The lock is a recipe file, so the image's version hash
covers it: the image is rebuilt exactly when a pin changes."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx

from . import _templates
from ._image import images_dir
from ._steps import BuildLog

log = logging.getLogger("wrenn.images")

#: Where the packages land in the guest (npm's global prefix /usr/local).
GUEST_MODULES = "/usr/local/lib/node_modules"
GUEST_TARBALLS = "/tmp/wrenn-npm"  # noqa: S108 (the image's /tmp, not the host's)
#: Only the official registry's tarballs: a lock cannot point the build elsewhere.
REGISTRY = "https://registry.npmjs.org/"
_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")
_INTEGRITY = re.compile(r"^sha512-[A-Za-z0-9+/=]+$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.-]+)?$")


class NpmLockError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NpmPackage:
    name: str
    version: str
    #: The registry's `dist.integrity`: "sha512-<base64>".
    integrity: str

    @property
    def url(self) -> str:
        """The registry's tarball URL (`npm view NAME@VERSION dist.tarball`)."""
        return f"{REGISTRY}{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def filename(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    def verify(self, data: bytes) -> bool:
        algorithm, _, expected = self.integrity.partition("-")
        return base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == expected


def read_lock(path: Path) -> list[NpmPackage]:
    """`NAME@VERSION sha512-...` per line (# comments); NpmLockError names a malformed line."""
    packages = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, integrity = line.partition(" ")
        name, _, version = spec.rpartition("@")
        integrity = integrity.strip()
        if not (_NAME.match(name) and _VERSION.match(version) and _INTEGRITY.match(integrity)):
            raise NpmLockError(f"{path.name}:{number}: expected 'NAME@VERSION sha512-HASH', got {raw!r}")
        packages.append(NpmPackage(name, version, integrity))
    return packages


def fetch(package: NpmPackage, cache_dir: Path, build_log: BuildLog | None = None) -> Path:
    """The package's tarball in `cache_dir/npm`, downloaded once and checked against its pinned hash."""
    note = build_log.write if build_log is not None else log.debug
    directory = cache_dir / "npm"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / package.filename
    if target.is_file() and package.verify(target.read_bytes()):
        note(f"npm package from cache: {target}")
        return target
    note(f"downloading {package.url}")
    with httpx.Client(timeout=httpx.Timeout(60, read=300), follow_redirects=False) as client:
        response = client.get(package.url)
    if response.status_code != 200:
        raise NpmLockError(f"{package.url} answered {response.status_code}")
    if not package.verify(response.content):
        raise NpmLockError(f"{package.name}@{package.version}: the tarball does not match its pinned hash")
    partial = target.with_suffix(f".part-{os.getpid()}")
    partial.write_bytes(response.content)
    partial.replace(target)
    return target


def install(lock: Path, root: Path, cache_dir: Path, build_log: BuildLog) -> int:
    """Unpack every package of `lock` into the image's node_modules (the guest's own tar, in a chroot).
    Returns how many."""
    packages = read_lock(lock)
    inside = root / GUEST_TARBALLS.lstrip("/")
    inside.mkdir(parents=True, exist_ok=True)
    try:
        for package in packages:
            shutil.copyfile(fetch(package, cache_dir, build_log), inside / package.filename)
            destination = f"{GUEST_MODULES}/{package.name}"
            build_log.run(["chroot", root, "mkdir", "-p", destination])
            build_log.run(
                ["chroot", root, "tar", "-xzf", f"{GUEST_TARBALLS}/{package.filename}", "-C", destination,
                 "--strip-components=1", "--no-same-owner"]
            )  # fmt: skip
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    return len(packages)


def recipe_tarball(template: str, name: str, data_dir: Path) -> Path:
    """The tarball of package `name` as the template's npm.lock pins it, in the image cache of `data_dir`
    (downloaded if it is not there yet): what the image build unpacks, for use on the host."""
    recipe = _templates.get(template).recipe_dir
    lock = Path(str(resources.files("wrenn.images").joinpath("recipes", recipe or "", "npm.lock")))
    if recipe is not None and lock.is_file():
        for package in read_lock(lock):
            if package.name == name:
                return fetch(package, images_dir(data_dir) / "cache")
    raise NpmLockError(f"template {template!r} pins no npm package {name!r}")
