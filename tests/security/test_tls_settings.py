"""TLS settings that cannot be served refuse the control plane's start with a clear error, before it
listens: never a plain-HTTP fallback. (The working case: tests/controlplane/test_tls.py.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests._certs import TestCA
from tests.controlplane.conftest import _free_port
from wrenn.controlplane.__main__ import main


def _refused(tmp_path: Path, *args: str | Path, env: dict[str, str] | None = None) -> str:
    port = _free_port()
    with pytest.raises(SystemExit) as stopped:
        main(["--data-dir", str(tmp_path / "cp"), "--port", str(port), *map(str, args)])
    with socket.socket() as probe:  # nothing listens: it never served, not even plain HTTP
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    message = str(stopped.value.code)
    assert message.startswith("wrenn server: refusing to start: "), message
    return message


def test_certificates_that_cannot_be_served_refuse_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = TestCA(tmp_path)
    cert, key = ca.issue("server", "wrenn.test")
    _, other_key = ca.issue("other", "other.test")
    wildcard, wildcard_key = ca.issue("sandboxes", "*.sbx.test")
    narrow, narrow_key = ca.issue("narrow", "1-cl-x.sbx.test")

    assert "the key is not the certificate's" in _refused(
        tmp_path, "--tls-cert", cert, "--tls-key", other_key
    )
    missing = tmp_path / "nope.pem"
    assert f"no such file: {missing}" in _refused(tmp_path, "--tls-cert", cert, "--tls-key", missing)
    assert "the server's certificate" in _refused(
        tmp_path, "--tls-cert", cert, "--tls-key", tmp_path
    )  # a dir
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert "the server's certificate" in _refused(tmp_path, "--tls-cert", cert, "--tls-key", garbage)
    assert "go together" in _refused(tmp_path, "--tls-key", key)
    assert "go together" in _refused(
        tmp_path, "--tls-cert", cert, "--tls-key", key, "--tls-sandbox-cert", wildcard
    )
    assert "needs the server's own" in _refused(
        tmp_path, "--tls-sandbox-cert", wildcard, "--tls-sandbox-key", wildcard_key
    )
    both = ("--tls-cert", cert, "--tls-key", key)
    assert "needs the sandbox domain" in _refused(
        tmp_path, *both, "--tls-sandbox-cert", wildcard, "--tls-sandbox-key", wildcard_key
    )
    monkeypatch.setenv("WRENN_SANDBOX_DOMAIN", "sbx.test")
    refused = _refused(tmp_path, *both, "--tls-sandbox-cert", narrow, "--tls-sandbox-key", narrow_key)
    assert "is not valid for *.sbx.test (it names 1-cl-x.sbx.test)" in refused, refused
    refused = _refused(tmp_path, *both, "--tls-sandbox-cert", wildcard, "--tls-sandbox-key", key)
    assert "the sandbox domain's certificate" in refused and "not the certificate's" in refused, refused
    # the same from the environment
    monkeypatch.setenv("WRENN_TLS_CERT", str(cert))
    monkeypatch.setenv("WRENN_TLS_KEY", str(other_key))
    assert "the key is not the certificate's" in _refused(tmp_path)
