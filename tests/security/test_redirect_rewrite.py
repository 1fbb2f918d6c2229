"""The traffic proxy rewrites a `Location` that names the sandbox itself (agent/_redirects.py). Its inputs
are a guest's server's header and the client's own Host and X-Forwarded-Proto: a hostile guest must not
get a redirect rewritten to somewhere else (another host, another sandbox, another scheme), and odd
input must leave the header as it was rather than fail. (The platform path is checked end to end in
tests/controlplane/test_e2b_compat.py.)"""

from __future__ import annotations

import pytest

from wrenn.agent._redirects import public_location

SANDBOX = "cl-aaaaaaaaaaaaaaaaaaaaaaaaa"
HOST = f"8000-{SANDBOX}.wrenn.example:8443"


def _rewrite(location: str, *, host: str = HOST, scheme: str = "https") -> str | None:
    return public_location(
        location, own_addresses=("169.254.0.21", "10.11.0.7"), port=8000, sandbox_id=SANDBOX,
        public_host=host, public_scheme=scheme,
    )  # fmt: skip


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:8000@evil.example/",  # userinfo: the host is evil.example
        "http://evil.example/?next=http://localhost:8000/",
        "http://localhost.evil.example:8000/",
        "http://127.0.0.1.evil.example:8000/",
        "http://10.11.0.70:8000/",  # a neighbour's address, not this sandbox's
        "javascript:alert(1)//localhost:8000",
        "//localhost:8000/x",  # scheme-relative: left to the client, as every relative reference
        "/x",
        "x",
        "http://localhost:99999/x",  # no such port
        "http://[::1/x",  # unparseable
        "file:///etc/passwd",
        "",
    ],
)
def test_only_the_sandboxs_own_absolute_urls_are_touched(location: str) -> None:
    assert _rewrite(location) is None


def test_own_addresses_in_every_spelling() -> None:
    for location in (
        "http://localhost:8000/p?q=1#f", "http://LOCALHOST.:8000/p?q=1#f", "http://127.9.9.9:8000/p?q=1#f",
        "http://[::1]:8000/p?q=1#f", "http://0.0.0.0:8000/p?q=1#f", "http://169.254.0.21:8000/p?q=1#f",
        "http://10.11.0.7:8000/p?q=1#f", "https://user:pw@localhost:8000/p?q=1#f",
    ):  # fmt: skip
        assert _rewrite(location) == f"https://{HOST}/p?q=1#f", location


def test_another_port_stays_inside_the_same_sandbox() -> None:
    assert _rewrite("http://localhost:3000/") == f"https://3000-{SANDBOX}.wrenn.example:8443/"
    # a Host naming another sandbox (the client's own doing) cannot lend it a URL of this sandbox
    other = "8000-cl-bbbbbbbbbbbbbbbbbbbbbbbbb.wrenn.example"
    assert _rewrite("http://localhost:3000/", host=other) is None
    assert _rewrite("http://localhost:3000/", host="127.0.0.1:8080") is None  # routed by E2B's headers


def test_a_scheme_or_host_the_client_forged_is_not_used() -> None:
    assert _rewrite("http://localhost:8000/", scheme="javascript") is None
    assert _rewrite("http://localhost:8000/", host="") is None
