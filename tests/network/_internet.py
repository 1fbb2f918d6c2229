"""The test's own "internet": a network namespace with public-looking addresses (one /24 of
198.18.0.0/15, the benchmarking range, picked per test run), reached from the host through a veth and a
route the test sets up, with HTTP, HTTPS, SMTP and DNS servers in it (`_servers.py`) and a CA of the
test's own for the HTTPS names. Nothing of it is routed anywhere but this machine."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent

#: Test names and the host (last octet) each resolves to.
NAMES = {
    "a.netpol.test": 10,
    "b.netpol.test": 11,
    "x.sub.netpol.test": 12,
    "secret.netpol.test": 13,
    "other.netpol.test": 14,
}


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for `names` signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wrenn netpol test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@dataclass
class Internet:
    tag: str
    subnet: ipaddress.IPv4Network
    directory: Path
    ca: Path
    proc: subprocess.Popen[bytes] | None = None
    names: dict[str, str] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"{self.tag}-inet"

    @property
    def link(self) -> str:
        return f"{self.tag}i"

    def address(self, host: int) -> str:
        return str(self.subnet.network_address + host)

    @property
    def gateway(self) -> str:
        """The host's own address on the test link (a host address: always blocked for guests)."""
        return self.address(1)

    @property
    def dns(self) -> str:
        return self.address(53)

    def requests(self) -> list[dict[str, Any]]:
        log = self.directory / "requests.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_internet(tag: str) -> Internet:
    """Make the namespace, its link and route, and start its servers; `Internet.stop` removes it all."""
    octet = int(hashlib.sha256(f"{tag}{os.getpid()}".encode()).hexdigest(), 16) % 256
    subnet = ipaddress.IPv4Network(f"198.{18 + octet % 2}.{octet}.0/24")
    directory = Path(tempfile.gettempdir()) / f"wrenn-{tag}-internet"
    net = Internet(tag, subnet, directory, directory / "ca.pem")
    net.names = {name: net.address(host) for name, host in NAMES.items()}
    net.stop()  # a previous run's leftovers of the same tag
    directory.mkdir(parents=True)
    _, cert, key = make_ca(directory, list(NAMES))
    try:
        _sh("ip", "netns", "add", net.netns)
        _sh("ip", "link", "add", net.link, "type", "veth", "peer", "name", "eth0", "netns", net.netns)
        _sh("ip", "addr", "add", f"{net.gateway}/24", "dev", net.link)
        _sh("ip", "link", "set", net.link, "up")
        inside = ["ip", "netns", "exec", net.netns]
        _sh(*inside, "ip", "link", "set", "lo", "up")
        _sh(*inside, "ip", "link", "set", "eth0", "up")
        hosts = [*sorted(set(NAMES.values())), 53]
        for host in hosts:
            _sh(*inside, "ip", "addr", "add", f"{net.address(host)}/24", "dev", "eth0")
        _sh(*inside, "ip", "route", "add", "default", "via", net.gateway)
        config = directory / "config.json"
        config.write_text(json.dumps({
            "addresses": [net.address(h) for h in sorted(set(NAMES.values()))], "dns": net.dns,
            "names": net.names, "cert": str(cert), "key": str(key),
        }))  # fmt: skip
        log = (directory / "servers.log").open("wb")
        net.proc = subprocess.Popen(
            [*inside, sys.executable, str(HERE / "_servers.py"), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (directory / "ready").exists():
            if net.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the test servers did not start:\n{(directory / 'servers.log').read_text()}"
                )
            time.sleep(0.1)
    except BaseException:
        net.stop()
        raise
    return net
