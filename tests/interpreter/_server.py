"""The execution server as it runs in the guest, on the host: a real Jupyter Server (with the image's
Jupyter and IPython config, and a Bash kernel) on loopback, a real envd (--dev) for the sandbox's env vars,
and `python -m wrenn.interpreter` in front of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Envd, free_port, start_envd

RECIPE = Path(__file__).parents[2] / "src/wrenn/images/recipes/code-interpreter/rootfs/etc"
KERNELS = RECIPE.parent / "usr/local/share/jupyter/kernels"
SANDBOX_ENV = {"WRENN_SANDBOX_VAR": "from envd", "SHARED": "global"}


@dataclass
class Interpreter:
    url: str
    envd: Envd
    identity: Path
    root: Path
    logs: dict[str, Path]

    def execute(self, code: str, **body: Any) -> list[dict[str, Any]]:
        """POST /execute, every line of the answer (raises on a non-200)."""
        with httpx.stream(
            "POST", f"{self.url}/execute", json={"code": code, **body}, headers=self.headers, timeout=120
        ) as r:
            if r.status_code != 200:
                r.read()
                raise AssertionError(f"{r.status_code}: {r.text}")
            return [json.loads(line) for line in r.iter_lines() if line]

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Access-Token": self.envd.access_token or ""}

    def log(self) -> str:
        return "\n".join(
            f"--- {name}\n{path.read_text(errors='replace')[-4000:]}" for name, path in self.logs.items()
        )


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} in {timeout} s:\n{log.read_text()[-4000:]}")


@contextmanager
def running_interpreter(keepalive_s: float = 5.0, deno: Path | None = None) -> Iterator[Interpreter]:
    """`deno`: the Deno binary of the image's npm.lock, for the image's Deno kernel spec (JavaScript and
    TypeScript contexts); without it those languages have no kernel here."""
    root = Path(tempfile.mkdtemp(prefix="wrenn-interp-"))
    home, ipython, jconf, jdata = (
        root / "home",
        root / "ipython/profile_default",
        root / "jconf",
        root / "jdata",
    )
    for d in (home, ipython, jconf, jdata / "kernels/bash"):
        d.mkdir(parents=True)
    shutil.copy(RECIPE / "ipython/ipython_kernel_config.py", ipython)
    shutil.copy(RECIPE / "jupyter/jupyter_server_config.py", jconf)
    bash_spec = {"argv": [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"], "language": "bash"}
    (jdata / "kernels/bash/kernel.json").write_text(json.dumps({**bash_spec, "display_name": "Bash"}))
    if deno is not None:  # the image's spec, with the binary where it is here
        spec = json.loads((KERNELS / "deno/kernel.json").read_text())
        spec["argv"][0] = str(deno)
        (jdata / "kernels/deno").mkdir()
        (jdata / "kernels/deno/kernel.json").write_text(json.dumps(spec))
    env = {**os.environ, "IPYTHONDIR": str(root / "ipython"), "JUPYTER_CONFIG_DIR": str(jconf),
           "JUPYTER_PATH": str(jdata), "HOME": str(home)}  # fmt: skip
    env.pop("MPLBACKEND", None)  # the kernel picks matplotlib's inline backend itself
    envd = start_envd(root)
    token = "interp-token"
    assert envd.init(accessToken=token, envVars=SANDBOX_ENV).status_code == 204
    jport, iport = free_port(), free_port()
    logs = {"jupyter": root / "jupyter.log", "interpreter": root / "interpreter.log"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        jupyter = [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={jport}", f"--ServerApp.root_dir={home}", "--allow-root"]  # fmt: skip
        identity = root / "identity"
        server = [sys.executable, "-m", "wrenn.interpreter", "--host", "127.0.0.1", "--port", str(iport),
                  "--jupyter-url", f"http://127.0.0.1:{jport}", "--envd-url", envd.url, "--cwd", str(home),
                  "--identity-file", str(identity), "--keepalive-s", str(keepalive_s)]  # fmt: skip
        for argv, log_path in ((jupyter, logs["jupyter"]), (server, logs["interpreter"])):
            with log_path.open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True
                    )
                )
        url = f"http://127.0.0.1:{iport}"
        _wait(f"{url}/health", procs[1], "the execution server", logs["interpreter"])
        yield Interpreter(url=url, envd=envd, identity=identity, root=root, logs=logs)
    finally:
        for proc in reversed(procs):  # the interpreter, then Jupyter (which shuts its kernels down)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        envd.stop()
        shutil.rmtree(root, ignore_errors=True)
