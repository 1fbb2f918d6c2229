"""E2B behaviours that need the whole platform (control plane, traffic proxy, host agent, real VMs), each
driven by the unmodified `e2b` SDK as a program written for E2B would use it: redirects from a server in
the sandbox, a private sandbox's envd, signed file URLs through the proxy, a command whose sandbox is
killed under it, and the main flow with an older SDK release (2.45) in a virtualenv of its own.

(envd's own E2B behaviours, which need no VM, are in tests/envd/test_e2b_sdk.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox, SandboxNotRunningException

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

DOMAIN = "wrenn.local"
#: The older release whose users have not upgraded: the newest of the 2.45 series.
OLD_SDK = "2.45.1"
OLD_SDK_VENV = Path(os.environ.get("WRENN_OLD_E2B_VENV", f"/var/tmp/wrenn-e2b-sdk-{OLD_SDK}"))

#: A server that answers every path with a redirect, each naming the guest in another way.
REDIRECTING_SERVER = r"""
import http.server

TARGETS = {
    "/localhost": "http://localhost:8000/x?a=1",
    "/zeros": "http://0.0.0.0:8000/",
    "/loopback": "http://127.0.0.1:8000/z#frag",
    "/guest-ip": "http://169.254.0.21:8000/y",
    "/other-port": "http://localhost:3000/o",
    "/relative": "/r",
    "/elsewhere": "http://example.com/e",
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", TARGETS[self.path])
        self.send_header("Content-Length", "0")
        self.end_headers()


http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def opts(wrenn_server: tuple[str, str]) -> dict[str, Any]:
    base_url, api_key = wrenn_server
    return {"api_key": api_key, "api_url": base_url, "sandbox_url": base_url, "domain": DOMAIN}


@pytest.fixture(scope="module")
def client(wrenn_server: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=wrenn_server[0], timeout=60, follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def sbx(opts: dict[str, Any]) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(**opts)
    yield sandbox
    sandbox.kill()


@pytest.fixture(scope="module")
def private(opts: dict[str, Any]) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(network={"allow_public_traffic": False}, **opts)
    yield sandbox
    sandbox.kill()


def _host(sandbox: Sandbox, port: int, client: httpx.Client) -> str:
    """The Host a browser sends for `get_host(port)` on a wildcard domain pointing at the control plane."""
    return f"{sandbox.get_host(port)}:{client.base_url.port}"


def _wait_for_port(client: httpx.Client, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while client.get("/relative", headers=headers).status_code == 502 and time.monotonic() < deadline:
        time.sleep(0.3)


def test_redirects_naming_the_sandbox_itself_become_its_public_url(
    sbx: Sandbox, client: httpx.Client
) -> None:
    sbx.files.write("/home/user/redirecting.py", REDIRECTING_SERVER)
    sbx.commands.run("python3 /home/user/redirecting.py", background=True)
    host = _host(sbx, 8000, client)
    _wait_for_port(client, {"Host": host})
    public = f"http://{host}"
    other_port = f"http://{sbx.get_host(3000)}:{client.base_url.port}"
    expected = {
        "/localhost": f"{public}/x?a=1",
        "/zeros": f"{public}/",
        "/loopback": f"{public}/z#frag",
        "/guest-ip": f"{public}/y",
        "/other-port": f"{other_port}/o",  # another port of the sandbox: its own public host
        "/relative": "/r",  # relative: the client resolves it against the public URL already
        "/elsewhere": "http://example.com/e",  # not the sandbox: not ours to touch
    }
    got = {path: client.get(path, headers={"Host": host}).headers["location"] for path in expected}
    assert got == expected
    behind_tls = client.get("/localhost", headers={"Host": host, "X-Forwarded-Proto": "https"})
    assert behind_tls.headers["location"] == f"https://{host}/x?a=1"
    # routed by E2B's headers (E2B_SANDBOX_URL): the same origin, which a client following the redirect
    # with the same headers reaches the same port through; another port has no URL there
    e2b = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
    origin = str(client.base_url).rstrip("/")
    assert client.get("/localhost", headers=e2b).headers["location"] == f"{origin}/x?a=1"
    assert client.get("/other-port", headers=e2b).headers["location"] == "http://localhost:3000/o"


def test_a_private_sandbox_guards_its_ports_but_not_envd(private: Sandbox, client: httpx.Client) -> None:
    token = private.traffic_access_token
    assert token
    assert private.commands.run("echo through envd").stdout == "through envd\n"  # its access token suffices
    private.files.write("/home/user/www/index.html", "private page")
    private.commands.run("cd /home/user/www && python3 -m http.server 8000", background=True)
    host = {"Host": _host(private, 8000, client)}
    deadline = time.monotonic() + 30
    while client.get("/", headers={**host, "e2b-traffic-access-token": token}).status_code == 502:
        assert time.monotonic() < deadline, "the server in the sandbox did not start"
        time.sleep(0.3)
    assert client.get("/", headers=host).status_code == 403
    assert client.get("/", headers={**host, "e2b-traffic-access-token": "wrong"}).status_code == 403
    page = client.get("/", headers={**host, "e2b-traffic-access-token": token})
    assert (page.status_code, page.text) == (200, "private page")


def test_signed_file_urls_work_through_the_proxy(private: Sandbox, client: httpx.Client) -> None:
    """As a browser on a wildcard domain uses them: host-routed, no token but the URL's signature (the
    sandbox is private: its traffic token is not needed for envd either)."""
    private.files.write("/home/user/signed.txt", "via a signed url")
    envd = {"Host": _host(private, 49983, client)}
    for expiry in (None, 120):
        url = private.download_url("/home/user/signed.txt", use_signature_expiration=expiry)
        r = client.get(url, headers=envd)
        assert (r.status_code, r.text) == (200, "via a signed url"), (expiry, r.text)
    expired = client.get(
        private.download_url("/home/user/signed.txt", use_signature_expiration=-120), headers=envd
    )
    assert (expired.status_code, expired.json()) == (
        401,
        {"code": 401, "message": "signature is already expired"},
    )
    for expiry in (None, 120):
        up = private.upload_url("/home/user/uploaded.txt", use_signature_expiration=expiry)
        r = client.post(up, files={"file": ("uploaded.txt", f"uploaded {expiry}".encode())}, headers=envd)
        assert r.status_code == 200, r.text
        assert private.files.read("/home/user/uploaded.txt") == f"uploaded {expiry}"
    stale = private.upload_url("/home/user/uploaded.txt", use_signature_expiration=-120)
    assert client.post(stale, files={"file": ("u", b"late")}, headers=envd).status_code == 401
    unsigned = client.get("/files", params={"path": "/home/user/signed.txt"}, headers=envd)
    assert unsigned.status_code == 401
    assert private.files.read("/home/user/uploaded.txt") == "uploaded 120"


def test_a_command_running_when_its_sandbox_is_killed_ends_with_e2bs_killed_error(
    opts: dict[str, Any],
) -> None:
    doomed = Sandbox.create(**opts)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            doomed.commands.run("sleep 600", timeout=300)
        except BaseException as exc:  # what it raised is the result
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while not any(p.args[-1:] == ["sleep 600"] for p in doomed.commands.list()):
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.2)
    assert Sandbox.kill(doomed.sandbox_id, **opts)
    runner.join(60)  # far less than the command's own timeout: whatever ended it, it was not that
    assert not runner.is_alive(), "the command still waits on its killed sandbox"
    error = outcome["error"]
    assert type(error) is SandboxNotRunningException and "The sandbox was killed" in str(error), repr(error)
    with pytest.raises(SandboxNotRunningException):  # and the next call knows at once
        doomed.commands.run("true")
    assert not doomed.is_running()


# --- an older SDK ---------------------------------------------------------------------------------

OLD_FLOW = r"""
import json, sys
from importlib.metadata import version
from e2b import NotFoundException, Sandbox

out = {"version": version("e2b")}
sbx = Sandbox.create(metadata={"sdk": "old"})
out["run"] = sbx.commands.run("echo $((6*7))").stdout
sbx.files.write("/home/user/old.txt", "from an old sdk")
out["read"] = sbx.files.read("/home/user/old.txt")
out["listed"] = "old.txt" in [e.name for e in sbx.files.list("/home/user")]
out["paused"] = sbx.pause()
out["state"] = Sandbox.get_info(sbx.sandbox_id).state.value
again = Sandbox.connect(sbx.sandbox_id)
out["resumed_state"] = again.get_info().state.value
out["after_resume"] = again.commands.run("cat /home/user/old.txt").stdout
out["killed"] = again.kill()
try:
    Sandbox.get_info(sbx.sandbox_id)
    out["gone"] = False
except NotFoundException:
    out["gone"] = True
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def old_sdk_python() -> Path:
    """A virtualenv with e2b 2.45 alone, built once and kept under /var/tmp (CI builds it once per run).
    It is built aside and moved into place whole, so a build cut short is never taken for a finished one."""
    if not (OLD_SDK_VENV / ".complete").is_file():
        building = OLD_SDK_VENV.with_name(f"{OLD_SDK_VENV.name}.building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        pip = [
            str(building / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        subprocess.run([*pip, f"e2b=={OLD_SDK}"], check=True, timeout=240)
        (building / ".complete").touch()
        if not (OLD_SDK_VENV / ".complete").is_file():  # else another run finished first
            shutil.rmtree(OLD_SDK_VENV, ignore_errors=True)
            building.rename(OLD_SDK_VENV)
        shutil.rmtree(building, ignore_errors=True)
    return OLD_SDK_VENV / "bin" / "python"


def _e2b_shaped_key(base_url: str) -> str:
    """A key of E2B's shape (`e2b_` and 40 hex digits), which SDKs up to 2.45 insist on client-side, minted
    through the API as a user would (`format: "e2b"`) for the platform's first account."""
    login = httpx.post(
        f"{base_url}/v1/auth/login", json={"email": "sdk@example.com", "password": "correct horse"}
    )
    token = login.json()["token"]
    made = httpx.post(
        f"{base_url}/v1/api-keys", json={"name": "for e2b 2.45", "format": "e2b"},
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def test_the_main_flow_with_an_older_sdk(wrenn_server: tuple[str, str], old_sdk_python: Path) -> None:
    base_url, _ = wrenn_server
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "E2B_API_KEY": _e2b_shaped_key(base_url), "E2B_API_URL": base_url, "E2B_SANDBOX_URL": base_url,
    }  # fmt: skip
    done = subprocess.run(
        [str(old_sdk_python), "-c", OLD_FLOW], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == {
        "version": OLD_SDK, "run": "42\n", "read": "from an old sdk", "listed": True, "paused": True,
        "state": "paused", "resumed_state": "running", "after_resume": "from an old sdk", "killed": True,
        "gone": True,
    }  # fmt: skip
