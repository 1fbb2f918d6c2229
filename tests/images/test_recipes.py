"""Template recipes without building: the code interpreter's lock, aliases, and a recipe's files in the
image's version."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from wrenn import images
from wrenn.images import _rootfs, _templates

RECIPE = _rootfs.recipe_path(images.TEMPLATES["code-interpreter"])


def names(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found.add(re.sub(r"[-_.]+", "-", re.split(r"[=<>! ]", line, maxsplit=1)[0]).lower())
    return found


def test_every_locked_package_is_pinned_with_a_hash_and_covers_the_requirements() -> None:
    assert RECIPE is not None
    lock = (RECIPE / "requirements.lock").read_text()
    pins = [line for line in lock.splitlines() if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[a-z0-9-]+==\S+ --hash=sha256:[0-9a-f]{64}", p) for p in pins)
    assert names((RECIPE / "requirements.in").read_text()) <= names(lock)
    assert {"jupyter-server", "ipykernel", "e2b-charts", "numpy", "pandas", "matplotlib"} <= names(lock)


def test_the_start_command_is_executable_and_starts_both_servers() -> None:
    assert RECIPE is not None
    start = RECIPE / "rootfs/etc/wrenn/start"
    assert start.stat().st_mode & 0o111
    text = start.read_text()
    assert "jupyter_server" in text and "--ServerApp.port=8888" in text
    assert "wrenn.interpreter" in text and "--port 49999" in text


def test_aliases_name_the_code_interpreter(tmp_path: Path) -> None:
    assert (
        _templates.get("code-interpreter-v1").name
        == _templates.get("code-runner-beta").name
        == "code-interpreter"
    )
    version = tmp_path / "images/code-interpreter/abc123"
    version.mkdir(parents=True)
    files = {}
    for key, name in images._image.FILES.items():
        (version / name).write_bytes(b"x")
        files[key] = {"name": name, "size": 1}
    manifest = {"template": "code-interpreter", "version": "abc123", "kernel": {"release": "k"},
                "envd_version": "e", "files": files, "ready": {"port": 49999, "path": "/health"}}  # fmt: skip
    (version / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "images/code-interpreter/current").symlink_to("abc123")
    for name in ("code-interpreter", "code-interpreter-v1", "code-runner-beta"):
        found = images.find(name, tmp_path)
        assert found is not None and found.template == "code-interpreter"
        assert found.readiness() == {"port": 49999, "path": "/health"}
    assert images.find_version("code-runner-beta", "abc123", tmp_path) is not None
    assert images.find("minimal", tmp_path) is None


def test_a_recipe_file_is_an_input_of_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RECIPE is not None
    assert _rootfs.recipe_tree_hash(images.TEMPLATES["minimal"]) is None  # no recipe directory
    copy = tmp_path / "recipe"
    shutil.copytree(RECIPE, copy)
    monkeypatch.setattr(_rootfs, "recipe_path", lambda template: copy)
    template = images.TEMPLATES["code-interpreter"]
    before = _rootfs.recipe_tree_hash(template)
    (copy / "rootfs/etc/jupyter/jupyter_server_config.py").write_text("c = get_config()\n")
    changed = _rootfs.recipe_tree_hash(template)
    (copy / "rootfs/etc/jupyter/jupyter_server_config.py").chmod(0o755)
    assert len({before, changed, _rootfs.recipe_tree_hash(template)}) == 3


def test_the_interpreter_is_installed_beside_envd_with_its_extra() -> None:
    sources = [rel for rel, _ in _rootfs.envd_sources(("interpreter",))]
    assert "wrenn/interpreter/_app.py" in sources and "wrenn/interpreter/_prelude.py" in sources
    assert not any(rel.startswith(("wrenn/sdk", "wrenn/agent", "wrenn/controlplane")) for rel in sources)
    assert not any(rel.startswith("wrenn/interpreter") for rel, _ in _rootfs.envd_sources())
    pinned = names("\n".join(_rootfs.envd_requirements(("interpreter",))))
    assert {"httpx", "httpx-ws", "starlette", "uvicorn"} <= pinned
    assert "httpx-ws" not in names("\n".join(_rootfs.envd_requirements()))


def test_the_npm_lock_pins_deno_and_refuses_malformed_lines_and_other_bytes(tmp_path: Path) -> None:
    from wrenn.images import _npm

    assert RECIPE is not None
    (deno,) = _npm.read_lock(RECIPE / "npm.lock")
    assert deno.name == "@deno/linux-x64-glibc" and deno.integrity.startswith("sha512-")
    assert (
        deno.url == f"https://registry.npmjs.org/@deno/linux-x64-glibc/-/linux-x64-glibc-{deno.version}.tgz"
    )
    spec = json.loads((RECIPE / "rootfs/usr/local/share/jupyter/kernels/deno/kernel.json").read_text())
    assert spec["argv"][:3] == ["/usr/local/bin/deno", "jupyter", "--kernel"]
    assert "/usr/local/lib/node_modules/@deno/linux-x64-glibc/deno" in (
        RECIPE / "setup.sh"
    ).read_text().replace("../lib", "/usr/local/lib")
    for bad in (
        "deno 1.0.0 sha512-abc",  # no @VERSION
        "@deno/x@1.0.0 sha1-abc",  # a weak hash
        "../../etc@1.0.0 sha512-abc",  # not a package name: no way out of node_modules or the registry
        "@deno/x@1.0.0; rm -rf / sha512-abc",
    ):
        (tmp_path / "npm.lock").write_text(bad + "\n")
        with pytest.raises(_npm.NpmLockError):
            _npm.read_lock(tmp_path / "npm.lock")
    assert not deno.verify(b"not the tarball")  # what fetch() checks, downloaded or from the cache


def test_the_code_interpreters_memory_is_its_shape_not_its_content() -> None:
    """Its capsules get 1024 MiB when a create asks for none (a Deno kernel beside the warm Python kernel
    does not fit in 512); a shape is no input to the image's version, so changing it rebuilds nothing."""
    import dataclasses

    from wrenn.images import TEMPLATES

    interpreter = TEMPLATES["code-interpreter"]
    assert interpreter.memory_mb == 1024 and TEMPLATES["minimal"].memory_mb == 512
    assert dataclasses.replace(interpreter, memory_mb=2048).recipe() == interpreter.recipe()
    assert "memory_mb" not in interpreter.recipe()
