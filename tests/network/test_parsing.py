"""The egress policy's parser and decisions, and the names a connection's first bytes carry (a real
ClientHello from Python's ssl, HTTP heads including tricks). No VM, no network."""

from __future__ import annotations

import ipaddress
import ssl

import pytest

from wrenn._shared.egress import PolicyError, parse
from wrenn.agent.network._names import NEED_MORE, http_host, tls_sni


def _client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_of_a_real_client_hello() -> None:
    hello = _client_hello("API.Example.com")
    assert tls_sni(hello) == "api.example.com"
    assert tls_sni(hello[:3]) == NEED_MORE
    assert tls_sni(hello[: len(hello) // 2]) == NEED_MORE
    assert tls_sni(b"GET / HTTP/1.1\r\n\r\n") is None
    assert tls_sni(_client_hello(None)) is None  # no server_name extension: the address decides


def test_host_of_an_http_head() -> None:
    assert http_host(b"GET / HTTP/1.1\r\nHost: A.example:8080\r\n\r\n") == "a.example"
    assert http_host(b"GET / HTTP/1.1\r\nHost: a.example") == NEED_MORE
    assert http_host(b"GET / HTTP/1.1\r\nhost: a.example\r\nHost: b.example\r\n\r\n") is None  # two
    assert http_host(b"GET / HTTP/1.1\r\n\r\n") is None
    assert http_host(b"GET / HTTP/1.1\r\nHost: 203.0.113.5\r\n\r\n") is None  # an address names no domain
    assert http_host(b"\x16\x03\x01garbage\r\n\r\n") is None


def test_allow_beats_deny_and_default_allow() -> None:
    policy = parse(["203.0.113.0/28"], ["203.0.113.0/24"])
    assert policy.allows_address(ipaddress.IPv4Address("203.0.113.5"))
    assert not policy.allows_address(ipaddress.IPv4Address("203.0.113.200"))
    assert parse().allows_address(ipaddress.IPv4Address("198.51.100.1"))


def test_wildcards_match_subdomains_and_exact_rules_win() -> None:
    policy = parse(
        ["*.example.com", "api.test"],
        rules={"*.example.com": {"X-A": "1"}, "api.example.com": {"X-B": "2"}},
    )
    assert policy.allows_name("a.b.example.com") and policy.allows_name("API.TEST.")
    assert not policy.allows_name("example.com") and not policy.allows_name("badexample.com")
    assert policy.rule_for("api.example.com").domain == "api.example.com"  # type: ignore[union-attr]
    assert policy.rule_for("x.example.com").domain == "*.example.com"  # type: ignore[union-attr]
    assert policy.rule_for("api.test") is None
    assert policy.needs_proxy and not policy.intercepts  # no CA given: nothing to intercept with
    assert "2" not in str(policy.describe())  # header values never described


@pytest.mark.parametrize(
    ("allow", "deny", "rules"),
    [
        (["::1"], [], {}),
        ([], ["example.com"], {}),
        (["a..b"], [], {}),
        (["-a.example"], [], {}),
        ([], [], {"a.example": {"Content-Length": "1"}}),
        ([], [], {"a.example": {"X-A": "v\nInjected: 1"}}),
        ([], [], {"a b": {"X-A": "v"}}),
        (["1.2.3.4"] * 300, [], {}),
    ],
)
def test_bad_policies_are_refused(
    allow: list[str], deny: list[str], rules: dict[str, dict[str, str]]
) -> None:
    with pytest.raises(PolicyError):
        parse(allow, deny, rules=rules)
