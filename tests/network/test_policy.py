"""Egress policies on real VMs, driven by the unmodified `e2b` SDK (and `/v1` where E2B has no word), against
the test's own internet: allow by domain, by wildcard and by CIDR, deny by CIDR, allow beating deny,
`allow_internet_access: false`, private ranges closed to an allow-all list, SMTP closed, live updates
that tighten and loosen a running capsule, a policy that holds across pause and resume, and headers
injected on the host side whose secret never reaches the guest.

One capsule carries every policy in turn (each test sets the one it checks, live)."""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import CONTROL_PLANE_DIRS
from wrenn.controlplane._secretbox import SecretBox

from ._internet import Internet
from .conftest import NetPlatform

pytestmark = pytest.mark.vm

SECRET = "wrenn-secret-" + base64.b32encode(b"never in the guest!").decode().rstrip("=")
PLACEHOLDER = "PLACEHOLDER-KEY"


@pytest.fixture(scope="module")
def sbx(platform: NetPlatform) -> Iterator[Sandbox]:
    """Created with a policy: only a.netpol.test (E2B's create body)."""
    sandbox = Sandbox.create(
        network={"allow_out": ["a.netpol.test"], "deny_out": ["0.0.0.0/0"]}, timeout=3600, **platform.e2b
    )
    yield sandbox
    sandbox.kill()


def fetch(sbx: Sandbox, url: str, *curl: str, timeout: int = 8) -> tuple[int, str, float]:
    """curl in the guest: (HTTP status, 0 when the connection failed; body; seconds it took)."""
    args = " ".join(curl)
    cmd = f"curl -s -m {timeout} {args} -w '\\n%{{http_code}} %{{time_total}}' '{url}' || true"
    out = sbx.commands.run(cmd, timeout=timeout + 30).stdout
    body, _, status = out.rpartition("\n")
    code, seconds = status.split()
    return int(code), body, float(seconds)


def refused_at_once(sbx: Sandbox, url: str, *curl: str) -> bool:
    """The connection fails (or gets the proxy's 403), and fast: refused, not left to time out."""
    code, _, seconds = fetch(sbx, url, *curl)
    return code in (0, 403) and seconds < 3


def update(sbx: Sandbox, **network: object) -> None:
    sbx.update_network(network)  # type: ignore[arg-type]


def test_allow_by_domain_at_create(sbx: Sandbox, platform: NetPlatform) -> None:
    net = platform.internet
    code, body, _ = fetch(sbx, "http://a.netpol.test/")
    assert code == 200 and "a.netpol.test" in body
    assert fetch(sbx, "https://a.netpol.test/", "-k")[0] == 200
    assert refused_at_once(sbx, "http://b.netpol.test/")
    assert refused_at_once(sbx, "https://b.netpol.test/", "-k")
    assert refused_at_once(sbx, f"http://{net.address(10)}:8080/")  # another port: the address decides
    # The capsule's network view says what was refused, and why.
    view = httpx.get(
        f"{platform.base_url}/v1/capsules/{sbx.sandbox_id}/network", headers={"X-API-Key": platform.api_key}
    ).json()
    assert view["allow_out"] == ["a.netpol.test"] and view["deny_out"] == ["0.0.0.0/0"]
    refused = [e for e in view["events"] if e["action"] == "refused" and e["name"] == "b.netpol.test"]
    assert {e["port"] for e in refused} == {80, 443}
    assert "not allowed" in refused[0]["reason"]
    info = Sandbox.get_info(sbx.sandbox_id, **platform.e2b)
    assert info.network and info.network.get("allow_out") == ["a.netpol.test"]


def test_allow_by_wildcard(sbx: Sandbox) -> None:
    update(sbx, allow_out=["*.sub.netpol.test"], deny_out=["0.0.0.0/0"])
    assert fetch(sbx, "http://x.sub.netpol.test/")[0] == 200
    assert fetch(sbx, "https://x.sub.netpol.test/", "-k")[0] == 200
    assert refused_at_once(sbx, "http://a.netpol.test/")


def test_allow_and_deny_by_cidr_and_allow_beats_deny(sbx: Sandbox, internet: Internet) -> None:
    a, b = internet.address(10), internet.address(11)
    update(sbx, allow_out=[f"{b}/32"], deny_out=["0.0.0.0/0"])
    assert fetch(sbx, f"http://{b}:8080/")[0] == 200
    assert fetch(sbx, f"http://{b}/")[0] == 200  # no names in the policy: port 80 by address too
    assert refused_at_once(sbx, f"http://{a}:8080/")
    update(sbx, deny_out=[f"{a}/32"])
    assert refused_at_once(sbx, f"http://{a}:8080/")
    assert refused_at_once(sbx, f"http://{a}/")
    assert fetch(sbx, f"http://{b}:8080/")[0] == 200
    update(sbx, allow_out=[a], deny_out=[str(internet.subnet)])
    assert fetch(sbx, f"http://{a}:8080/")[0] == 200
    assert refused_at_once(sbx, f"http://{b}:8080/")


def test_no_internet_access(sbx: Sandbox, internet: Internet) -> None:
    update(sbx, allow_internet_access=False)
    assert refused_at_once(sbx, f"http://{internet.address(11)}:8080/")
    assert refused_at_once(sbx, f"https://{internet.address(11)}/", "-k")
    assert fetch(sbx, "http://a.netpol.test/")[0] == 0  # not even DNS


def test_private_ranges_and_smtp_stay_closed_to_an_allow_all_list(sbx: Sandbox, internet: Internet) -> None:
    update(sbx, allow_out=["0.0.0.0/0"])
    assert fetch(sbx, f"http://{internet.address(11)}:8080/")[0] == 200
    # The host's own address on the test link, the guest's gateway, the host's loopback and private
    # ranges: never, whatever the list says.
    for url in (f"http://{internet.gateway}:8080/", "http://169.254.0.22:15080/", "http://10.0.0.1/",
                "http://192.168.1.1/", "http://100.64.0.1/"):  # fmt: skip
        assert refused_at_once(sbx, url), url
    smtp = sbx.commands.run(
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/{internet.address(11)}/25 && head -c 3 <&3' || echo closed",
        timeout=30,
    )
    assert "closed" in smtp.stdout and "220" not in smtp.stdout


def test_live_update_tightens_then_loosens(sbx: Sandbox, internet: Internet) -> None:
    b = internet.address(11)
    update(sbx)  # an empty update: everything (but the always-blocked) allowed
    assert fetch(sbx, f"http://{b}:8080/")[0] == 200
    update(sbx, deny_out=["0.0.0.0/0"])
    assert refused_at_once(sbx, f"http://{b}:8080/")
    update(sbx, allow_out=[b], deny_out=["0.0.0.0/0"])
    assert fetch(sbx, f"http://{b}:8080/")[0] == 200


def test_a_tightening_cuts_a_download_under_way(sbx: Sandbox, internet: Internet) -> None:
    b = internet.address(11)
    update(sbx)
    sbx.commands.run(
        f"curl -s -o /dev/null http://{b}:8080/slow/2000000; echo rc=$? > /tmp/long",
        background=True,
    )
    started = time.monotonic() + 20  # under way once the server has the request
    while not _captured(internet, "/slow/2000000") and time.monotonic() < started:
        time.sleep(0.2)
    time.sleep(0.5)
    update(sbx, deny_out=["0.0.0.0/0"])
    deadline, ended = time.monotonic() + 15, ""
    while not ended and time.monotonic() < deadline:
        ended = sbx.commands.run("cat /tmp/long 2>/dev/null || true").stdout.strip()
    update(sbx)
    assert ended.startswith("rc=") and ended != "rc=0", ended


def test_policy_holds_across_pause_and_resume(sbx: Sandbox, platform: NetPlatform) -> None:
    update(sbx, allow_out=["a.netpol.test"], deny_out=["0.0.0.0/0"])
    sbx.pause()
    resumed = Sandbox.connect(sbx.sandbox_id, **platform.e2b)
    assert fetch(resumed, "http://a.netpol.test/")[0] == 200
    assert refused_at_once(resumed, "http://b.netpol.test/")


def _captured(internet: Internet, path: str) -> list[dict[str, str]]:
    return [r["headers"] for r in internet.requests() if r["target"] == path]


def test_headers_are_injected_on_the_host_and_the_secret_never_enters_the_guest(
    sbx: Sandbox, platform: NetPlatform, internet: Internet
) -> None:
    update(
        sbx,
        allow_out=["secret.netpol.test", "other.netpol.test"],
        deny_out=["0.0.0.0/0"],
        rules={"secret.netpol.test": [{"transform": {"headers": {"X-Api-Key": SECRET}}}]},
    )
    key = f"-H 'X-Api-Key: {PLACEHOLDER}'"
    # The guest trusts its capsule's CA: no -k, and Python's default context too (SSL_CERT_FILE).
    code, body, _ = fetch(sbx, "https://secret.netpol.test/inject", key)
    assert code == 200 and "secret.netpol.test" in body, body
    assert [h["x-api-key"] for h in _captured(internet, "/inject")] == [SECRET]
    py = sbx.commands.run(
        "python3 -c \"import urllib.request as u; print(u.urlopen(u.Request('https://secret.netpol.test/py',"
        f" headers={{'X-Api-Key': '{PLACEHOLDER}'}})).status)\"",
        timeout=60,
    )
    assert py.stdout.strip() == "200"
    assert [h["x-api-key"] for h in _captured(internet, "/py")] == [SECRET]
    # Another domain, and a redirect to it, get the placeholder as the guest sent it (-k: that domain is
    # not intercepted, so the guest meets the test server's own certificate).
    assert fetch(sbx, "https://other.netpol.test/plain", key, "-k")[0] == 200
    assert [h["x-api-key"] for h in _captured(internet, "/plain")] == [PLACEHOLDER]
    target = "https://other.netpol.test/after-redirect"
    assert fetch(sbx, f"https://secret.netpol.test/redirect?to={target}", key, "-L", "-k")[0] == 200
    assert [h["x-api-key"] for h in _captured(internet, "/after-redirect")] == [PLACEHOLDER]
    # A request whose Host is not its SNI is refused, and never reaches anyone.
    code, body, _ = fetch(sbx, "https://secret.netpol.test/mismatch", key, "-H 'Host: other.netpol.test'")
    assert code == 421 and not _captured(internet, "/mismatch")
    # The secret is nowhere in the guest: not in its memory, not on its disk, not in the agent's files.
    agent = platform.agent
    workdir = agent.data_dir / "sandboxes" / sbx.sandbox_id
    memory = next(Path("/dev/shm").glob(f"*-{sbx.sandbox_id}.mem"))
    for path in (memory, *workdir.rglob("*")):
        if path.is_file():
            assert not _contains(path, SECRET.encode()), path
    # Nor is the capsule CA's key (the guest has its certificate only).
    ca_key = _ca_key(platform.base_url, sbx.sandbox_id)
    body_line = ca_key.splitlines()[1].encode()
    assert _contains(memory, _ca_cert(platform.base_url, sbx.sandbox_id).splitlines()[1].encode())
    assert not _contains(memory, body_line) and not any(
        _contains(p, body_line) for p in workdir.rglob("*") if p.is_file()
    )


def test_an_agent_restart_loses_the_secrets_and_the_control_plane_sends_them_again(
    sbx: Sandbox, platform: NetPlatform, internet: Internet
) -> None:
    """The agent keeps header secrets in memory only: a restarted agent adopts the running capsule with
    its rules suspended, says so, and the control plane's monitor sends the policy again."""
    platform.restart_agent()
    url = f"{platform.base_url}/v1/capsules/{sbx.sandbox_id}/network"
    deadline, view = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        view = httpx.get(url, headers={"X-API-Key": platform.api_key}, timeout=30).json()
        if view.get("secrets_loaded") is True:
            break
        time.sleep(1)
    assert view.get("secrets_loaded") is True, view
    code, _, _ = fetch(sbx, "https://secret.netpol.test/after-restart", f"-H 'X-Api-Key: {PLACEHOLDER}'")
    assert code == 200
    assert [h["x-api-key"] for h in _captured(internet, "/after-restart")] == [SECRET]


def test_a_template_carries_its_policy_and_its_capsules_get_a_ca_of_their_own(
    sbx: Sandbox, platform: NetPlatform, internet: Internet
) -> None:
    sbx.create_snapshot(name="netpol-template")
    child = Sandbox.create(template="netpol-template", timeout=600, **platform.e2b)
    try:
        view = httpx.get(
            f"{platform.base_url}/v1/capsules/{child.sandbox_id}/network",
            headers={"X-API-Key": platform.api_key},
        ).json()
        assert view["allow_out"] == ["secret.netpol.test", "other.netpol.test"]
        assert view["rules"] == {"secret.netpol.test": ["X-Api-Key"]}
        assert _ca_cert(platform.base_url, child.sandbox_id) != _ca_cert(platform.base_url, sbx.sandbox_id)
        # Its guest (the template's disk trusted the parent's CA) now trusts its own, and only that one.
        code, _, _ = fetch(child, "https://secret.netpol.test/child", f"-H 'X-Api-Key: {PLACEHOLDER}'")
        assert code == 200
        assert [h["x-api-key"] for h in _captured(internet, "/child")] == [SECRET]
        bundle = child.files.read("/etc/ssl/certs/ca-certificates.crt")
        assert bundle.count("# wrenn egress CA: begin") == 1
        assert _ca_cert(platform.base_url, child.sandbox_id).splitlines()[1] in bundle
    finally:
        child.kill()
        Sandbox.delete_snapshot("netpol-template", **platform.e2b)


def _contains(path: Path, needle: bytes, chunk: int = 64 << 20) -> bool:
    with path.open("rb") as f:
        tail = b""
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def _row(base_url: str, capsule_id: str, column: str) -> str:
    db = CONTROL_PLANE_DIRS[base_url] / "wrenn.db"
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute(f"select {column} from sandboxes where id = ?", (capsule_id,)).fetchone()
    return str(value)


def _ca_cert(base_url: str, capsule_id: str) -> str:
    return _row(base_url, capsule_id, "egress_ca_cert")


def _ca_key(base_url: str, capsule_id: str) -> str:
    sealed = _row(base_url, capsule_id, "egress_ca_key")
    assert sealed.startswith("enc1:")  # sealed at rest
    box = SecretBox.load_or_create("", CONTROL_PLANE_DIRS[base_url])
    return box.open(sealed, "capsule.egress_ca_key")
