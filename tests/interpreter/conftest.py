from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interpreter._server import Interpreter, running_interpreter
from wrenn.images import Image

log = logging.getLogger("tests.interpreter")


@pytest.fixture(scope="session")
def deno(image_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Deno binary the code-interpreter image gets: the same npm tarball (pinned in its npm.lock, from
    the image cache), unpacked on the host."""
    from wrenn.images import recipe_tarball

    tarball = recipe_tarball("code-interpreter", "@deno/linux-x64-glibc", image_data_dir)
    target = tmp_path_factory.mktemp("deno")
    with tarfile.open(tarball) as tar:
        tar.extract("package/deno", target, filter="data")
    return target / "package/deno"


@pytest.fixture(scope="module")
def interpreter(deno: Path) -> Iterator[Interpreter]:
    """One execution server (with its Jupyter Server, a Deno kernel spec and envd) per module; keepalives
    every second."""
    with running_interpreter(keepalive_s=1.0, deno=deno) as server:
        yield server


@pytest.fixture(scope="session")
def interpreter_image(image_data_dir: Path) -> Image:
    """The `code-interpreter` guest image, built (or found up to date) once per session: about 5 minutes
    from nothing here (debootstrap and 121 wheels), seconds when its inputs did not change."""
    if os.geteuid() != 0:
        pytest.skip("building a guest image needs root (debootstrap, chroot)")
    from wrenn.images import build

    started = time.monotonic()
    image = build("code-interpreter", image_data_dir)
    log.info("code-interpreter image ready in %.1f s", time.monotonic() - started)
    return image


@pytest.fixture(scope="session")
def seed_sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's SDK as its users install it (`pip install wrenn==0.3.0`, which declares Python 3.13 but
    runs on 3.11), in a virtualenv of its own: our package is called wrenn too."""
    venv = tmp_path_factory.mktemp("seed-sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "--ignore-requires-python", "wrenn==0.3.0"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot install the seed SDK: {done.stderr[-2000:]}")
    return venv / "bin/python"
