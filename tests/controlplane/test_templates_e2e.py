"""Templates end to end with the unmodified `e2b` SDK and real VMs: `Template.build` from steps (an apt
install from a Debian repository the test serves on a test host of its own, COPY of local files with a
mode, ENV, WORKDIR, USER, a start command with `wait_for_port`), a sandbox of it whose server already
answers, a rebuild that reuses the cache, a failing step, tags and aliases; and the seed's recipe build
through `/v1/admin/builds`, followed live and cancelled.

The package index lives in a network namespace this test makes (`tpl<pid>-idx`, 10.249.N.2), reached by the
build VM only because the control plane's `WRENN_BUILD_EGRESS` allows that address and port.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._netns import sh, veth_netns, wait_http
from tests.agent._agent import running_agent
from tests.conftest import _control_plane

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, VMs)")]

TAG = f"tpl{os.getpid() % 10000}"
NET = 10 + os.getpid() % 200
INDEX_IP, PORT = f"10.249.{NET}.2", 8080


def _deb(root: Path) -> None:
    """A flat Debian repository with one package, `wrenn-hello`, made from files written here."""
    pkg = root / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: wrenn-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Wrenn tests <t@example.com>\n"
        "Description: a package the template tests install\n"
    )
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin/wrenn-hello").write_text("#!/bin/sh\necho hello from a package\n")
    (pkg / "usr/bin/wrenn-hello").chmod(0o755)
    repo = root / "repo"
    repo.mkdir()
    sh("dpkg-deb", "--root-owner-group", "--build", str(pkg), str(repo / "wrenn-hello_1.0_all.deb"))
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True, capture_output=True, text=True
    ).stdout
    (repo / "Packages").write_text(packages)
    digest = hashlib.sha256(packages.encode()).hexdigest()
    (repo / "Release").write_text(
        f"Origin: wrenn-tests\nSHA256:\n {digest} {len(packages.encode())} Packages\n"
    )


@pytest.fixture(scope="module")
def package_index() -> Iterator[str]:
    """A test host (its own netns and veth) serving the repository over HTTP."""
    root = Path(tempfile.mkdtemp(prefix=f"wrenn-{TAG}-"))
    netns, outside, inside = f"{TAG}-idx", f"v{TAG}o", f"v{TAG}i"
    server = None
    try:
        _deb(root)
        veth_netns(netns, outside, f"10.249.{NET}.1/30", inside, f"{INDEX_IP}/30")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "--bind", INDEX_IP, str(PORT),
             "--directory", str(root / "repo")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"http://{INDEX_IP}:{PORT}/Packages")
        yield f"http://{INDEX_IP}:{PORT}/"
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(image: object, package_index: str) -> Iterator[tuple[str, str]]:
    os.environ["WRENN_BUILD_EGRESS"] = f"{INDEX_IP}:{PORT}"
    try:
        with running_agent(f"tq{os.getpid() % 1000:03d}e") as agent:
            yield from _control_plane(agent.url, agent.token_file)
    finally:
        os.environ.pop("WRENN_BUILD_EGRESS", None)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "server.py").write_text(
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = ('served ' + os.environ.get('GREETING', '?')).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
    )
    return tmp_path


def _template(context: Path, index: str, marker: str) -> Any:
    from e2b import Template, wait_for_port

    return (
        Template(file_context_path=str(context))
        .from_base_image()
        .set_envs({"GREETING": "from the template"})
        .run_cmd(f"echo 'deb [trusted=yes] {index} ./' > /etc/apt/sources.list", user="root")
        .apt_install("wrenn-hello")
        .copy("app/", "/home/user/app/", mode=0o755)
        .set_workdir("/home/user/app")
        .run_cmd(f"echo {marker} > marker.txt")
        .set_user("user")
        .set_start_cmd("python3 server.py", wait_for_port(8000))
    )


def test_e2b_sdk_builds_a_template_and_starts_from_it(
    platform: tuple[str, str], package_index: str, context: Path
) -> None:
    from e2b import Sandbox, Template

    base, key = platform
    opts: dict[str, Any] = {"api_key": key, "api_url": base}
    logs: list[Any] = []
    info = Template.build(
        _template(context, package_index, "one"), "web-env", on_build_logs=logs.append, **opts
    )
    text = "\n".join(str(entry.message) for entry in logs)
    assert "Setting up wrenn-hello" in text, text
    assert Template.exists("web-env", **opts)

    sandbox = Sandbox.create("web-env", sandbox_url=base, **opts)
    try:
        # The start command's server was running in the snapshot: it answers at once.
        served = sandbox.commands.run("curl -s localhost:8000/", timeout=30)
        assert served.stdout == "served from the template"
        out = sandbox.commands.run(
            "wrenn-hello; stat -c %a server.py; cat marker.txt; pwd; whoami", timeout=30
        )
        assert out.stdout.split() == ["hello", "from", "a", "package", "755", "one", "/home/user/app", "user"]
    finally:
        sandbox.kill()

    # One changed step: everything before it comes from the cache.
    logs.clear()
    Template.build(_template(context, package_index, "two"), "web-env:v2", on_build_logs=logs.append, **opts)
    cached = [str(e.message) for e in logs if "CACHED" in str(e.message)]
    assert len(cached) == 5, "\n".join(str(e.message) for e in logs)
    tags = {t.tag for t in Template.get_tags("web-env", **opts)}
    assert {"default", "v2"} <= tags
    assert info.template_id


def test_a_failing_step_says_which_with_its_logs(platform: tuple[str, str], context: Path) -> None:
    from e2b import Template
    from e2b.exceptions import BuildException

    base, key = platform
    failing = (
        Template(file_context_path=str(context)).from_base_image().run_cmd("echo the last words; exit 7")
    )
    with pytest.raises(BuildException) as raised:
        Template.build(failing, "broken-env", api_key=key, api_url=base)
    message = str(raised.value)
    assert "exit code 7" in message and "the last words" in message, message


def test_recipe_build_with_live_logs_and_cancel(platform: tuple[str, str]) -> None:
    base, key = platform
    root = next(
        p for u, p in __import__("tests.conftest", fromlist=["x"]).CONTROL_PLANE_DIRS.items() if u == base
    )
    token = httpx.post(
        f"{base}/v1/auth/login", json={"email": "sdk@example.com", "password": "correct horse"}
    ).json()["token"]
    admin = {"Authorization": f"Bearer {token}"}
    assert root.is_dir()
    config = {
        "name": "slow-recipe",
        "recipe": [
            "ENV STAGE=one",
            "RUN echo started $STAGE; for i in $(seq 1 600); do echo tick $i; sleep 1; done",
        ],
    }
    r = httpx.post(f"{base}/v1/admin/builds", json=config, headers=admin)
    assert r.status_code == 201, r.text
    build_id = r.json()["id"]
    # Live: the log grows while the step runs.
    deadline, seen = time.monotonic() + 300, ""
    while time.monotonic() < deadline:
        got = httpx.get(f"{base}/v1/admin/builds/{build_id}", headers=admin).json()
        seen = "\n".join(e["message"] for e in got.get("logs", []))
        if "tick 3" in seen:
            break
        time.sleep(1)
    assert "started one" in seen and "tick 3" in seen, seen
    assert httpx.post(f"{base}/v1/admin/builds/{build_id}/cancel", headers=admin).status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = httpx.get(f"{base}/v1/admin/builds/{build_id}", headers=admin).json()
        if got["status"] == "cancelled":
            break
        time.sleep(1)
    assert got["status"] == "cancelled", got
    # A key of the team sees the build in its own list; the build VM is gone from the host.
    listed = httpx.get(f"{base}/v1/templates/builds", headers={"X-API-Key": key}).json()
    assert build_id in {b["id"] for b in listed}
