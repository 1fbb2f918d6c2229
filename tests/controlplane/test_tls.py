"""HTTPS on the control plane's listener, over real TLS on loopback with certificates of a CA made here:
the API answers with the server's certificate, a capsule's host name (the traffic proxy's) gets the
sandbox domain's wildcard certificate, chosen by SNI on the same port."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from cryptography import x509

from tests._certs import TestCA
from tests.controlplane.conftest import _free_port
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane.__main__ import server, tls_context


def _peer_names(port: int, server_name: str, ca: Path) -> tuple[list[str], bytes]:
    """The DNS names of the certificate the server presents for `server_name` (verified against `ca`),
    and the start of its answer to a GET / for that host."""
    client = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sans.value.get_values_for_type(x509.DNSName), answer


def test_https_with_a_wildcard_for_the_sandbox_domain(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key = ca.issue("server", "wrenn.test", "127.0.0.1")
    wildcard, wildcard_key = ca.issue("sandboxes", "*.sbx.test")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}", data_dir=tmp_path / "cp",
        sandbox_domain="sbx.test", tls_cert=cert, tls_key=key, tls_sandbox_cert=wildcard,
        tls_sandbox_key=wildcard_key,
    )  # fmt: skip
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    running = server(config, tls_context(settings))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not running.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        # the API, by address and by name: the server's certificate, verified
        health = httpx.get(
            f"https://127.0.0.1:{port}/health", verify=ssl.create_default_context(cafile=str(ca.cert_file))
        )
        assert health.status_code == 200, health.text
        names, answer = _peer_names(port, "wrenn.test", ca.cert_file)
        assert names == ["wrenn.test"] and answer.startswith(b"HTTP/1.1 "), answer
        # a capsule's port: the wildcard, and the traffic proxy answers (no such capsule: E2B's 502)
        names, answer = _peer_names(port, "49999-cl-nothere.sbx.test", ca.cert_file)
        assert names == ["*.sbx.test"], names
        assert answer.startswith(b"HTTP/1.1 502") and b"capsule cl-nothere not found" in answer, answer
        # plain HTTP on the port gets no answer a browser would take
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: wrenn.test\r\n\r\n")
            try:
                plain = raw.recv(100)
            except ConnectionError:
                plain = b""
            assert not plain.startswith(b"HTTP/"), plain
    finally:
        running.should_exit = True
        thread.join(10)
