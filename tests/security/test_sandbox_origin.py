"""The dashboard's origin apart from capsule traffic (docs/security.md, "The dashboard's origin").

A capsule's pages are served at `{port}-{id}.{domain}`: whoever runs a capsule writes them. They must not
set a cookie the dashboard's host receives (cookie tossing: a planted cookie for a parent domain), and
with `WRENN_SANDBOX_DOMAIN` set, capsule hosts lie under a domain of their own, apart from the dashboard's.
In-process, over the recording agent, whose traffic listener plays a hostile guest (it answers each
`set-cookie` of the query as a `Set-Cookie`)."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.controlplane._db import insert_capsule
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._proxy import target
from wrenn.controlplane._session import COOKIE

from .conftest import ClientAddress, account, admin_account

SANDBOX_DOMAIN = "wrenn-sandbox.net"


def _capsule(cp: TestClient) -> str:
    host_id = cp.get("/v1/hosts", headers=admin_account(cp).jwt).json()[0]["id"]
    return insert_capsule(cp, account(cp, "owner@example.com").team_id, status="running", host=host_id)


def _set_cookies(cp: TestClient, host: str, *cookies: str) -> list[str]:
    query = "&".join(f"set-cookie={quote(c)}" for c in cookies)
    r = cp.get(f"/echo?{query}", headers={"Host": host})
    assert r.status_code == 200, r.text
    return r.headers.get_list("set-cookie")


def test_a_guest_cannot_set_a_cookie_for_a_parent_domain(cp: TestClient) -> None:
    """Host-only cookies (and ones naming the capsule's own host) pass; one naming any other domain (the
    parent the dashboard may sit under, another capsule, another site) is dropped, whatever its case,
    leading dot or position, and so is the dashboard's own cookie name with a Domain."""
    capsule_id = _capsule(cp)
    host = f"8000-{capsule_id}.wrenn.example.com"
    kept = ["app=1; Path=/; HttpOnly", f"own=2; Domain={host}; Secure", f"dot=3; domain=.{host.upper()}"]
    dropped = [
        "toss=1; Domain=wrenn.example.com; Path=/", "toss2=1; Path=/; domain=.Example.COM",
        f"{COOKIE}=forged; Domain=example.com; Path=/", "other=1; Domain=evil.example",
        f"__Host-x=1; Path=/; Domain=8001-{capsule_id}.wrenn.example.com",  # another capsule's host
    ]  # fmt: skip
    got = _set_cookies(cp, f"{host}:8443", *kept, *dropped)
    assert got == kept


def test_the_sandbox_domain_keeps_capsule_hosts_apart(cp_settings: Settings) -> None:
    """With `sandbox_domain` set, only `{port}-{id}.<sandbox domain>` reaches a capsule: the same name under
    the dashboard's domain is the API's (404 JSON), not the guest's."""
    settings = dataclasses.replace(
        cp_settings, sandbox_domain=SANDBOX_DOMAIN, public_url="https://wrenn.example.com"
    )
    with TestClient(ClientAddress(create_app(settings))) as client:
        capsule_id = _capsule(client)
        inside = client.get("/echo", headers={"Host": f"8000-{capsule_id}.{SANDBOX_DOMAIN}"})
        assert inside.status_code == 200 and inside.json()["path"].endswith("/echo")
        outside = client.get("/echo", headers={"Host": f"8000-{capsule_id}.wrenn.example.com"})
        assert outside.status_code == 404 and "path" not in outside.json()
    headers = [(b"host", f"8000-cl-abc.evil{SANDBOX_DOMAIN}".encode())]  # a suffix, not the domain
    assert target(headers, SANDBOX_DOMAIN) is None
    assert target([(b"host", f"8000-cl-abc.{SANDBOX_DOMAIN}:443".encode())], SANDBOX_DOMAIN) is not None


@pytest.mark.parametrize(
    ("public_url", "domain"),
    [
        ("https://wrenn.example.com", "wrenn.example.com"),  # the same host
        ("https://wrenn.example.com", "example.com"),  # the dashboard inside it
        ("https://example.com", "sandbox.example.com"),  # it inside the dashboard's
        ("https://wrenn.example.com", "bad_domain"),
        ("https://wrenn.example.com", "x..example"),
    ],
)
def test_a_sandbox_domain_overlapping_the_dashboards_is_refused(public_url: str, domain: str) -> None:
    with pytest.raises(ValueError, match="WRENN_SANDBOX_DOMAIN"):
        Settings(public_url=public_url, sandbox_domain=domain).check()


def test_a_sandbox_domain_apart_is_accepted() -> None:
    Settings(public_url="https://wrenn.example.com", sandbox_domain=SANDBOX_DOMAIN).check()
    Settings(sandbox_domain=SANDBOX_DOMAIN).check()
