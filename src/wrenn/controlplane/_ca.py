"""The internal certificate authority of control plane <-> host agent mutual TLS.

One ECDSA P-256 CA signs two kinds of leaf certificates:

- **host** certificates (CN = host id, SAN = `<host id>.hosts.wrenn.internal`, 7 days, EKU serverAuth): an
  agent serves its API with one, and the control plane dials every host verifying that name, so a host
  registered with another host's address reaches nothing (an address never grants an identity);
- the **control plane's client** certificate (CN = `wrenn-control-plane`, EKU clientAuth): the control
  plane presents it to agents, which accept only client certificates the CA signed for client use. A
  host's certificate is not one (serverAuth only), so a host cannot call another host's agent.

The CA is generated on first start into the data directory (key mode 0600) unless one is given
(`WRENN_CA_CERT` / `WRENN_CA_KEY`); several control planes on one database must be given the same CA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wrenn._shared.private import private_dir, write_private

log = logging.getLogger("wrenn.controlplane.ca")

HOST_CERT_TTL = timedelta(days=7)
CLIENT_CERT_TTL = timedelta(days=7)
CA_TTL = timedelta(days=3650)
CLIENT_CN = "wrenn-control-plane"
#: Host certificates name `<host id>.hosts.wrenn.internal` (never resolved through DNS: the control plane
#: dials the host's registered address and checks the certificate against this name).
HOSTS_DOMAIN = "hosts.wrenn.internal"


@dataclass(frozen=True, slots=True)
class Issued:
    cert_pem: str
    key_pem: str
    not_after: datetime


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def host_name(host_id: str) -> str:
    """The name a host's certificate carries and the control plane verifies when it dials the host,
    whatever address it dials: an address never vouches for an identity."""
    return f"{host_id}.{HOSTS_DOMAIN}"


def split_address(address: str) -> tuple[str, int | None]:
    """`host:port` -> (host, port); brackets of IPv6 literals are removed; no port -> None."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port) if port.isdigit() else None
    return address, None


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self._key = key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def generate(cls, name: str = "Wrenn internal CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + CA_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key must be an ECDSA key")
        return cls(x509.load_pem_x509_certificate(cert_pem), key)

    @classmethod
    def load_or_create(
        cls, data_dir: Path, cert_file: Path | None = None, key_file: Path | None = None
    ) -> CertificateAuthority:
        """The given CA, else the one stored under data_dir, else a new one stored there."""
        if cert_file or key_file:
            if not (cert_file and key_file):
                raise ValueError("give both the CA certificate and its key (WRENN_CA_CERT, WRENN_CA_KEY)")
            return cls.from_pem(cert_file.read_bytes(), key_file.read_bytes())
        cert_path, key_path = data_dir / "ca.pem", data_dir / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            return cls.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        private_dir(data_dir)
        ca = cls.generate()
        write_private(key_path, _key_pem(ca._key))
        write_private(cert_path, ca.cert_pem)
        log.info("generated the internal CA", extra={"path": str(cert_path)})
        return ca

    def _leaf(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        ttl: timedelta,
        sans: list[x509.GeneralName],
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), not_after)

    def issue_host(self, host_id: str) -> Issued:
        """A host's server certificate: CN = host id, SAN = `host_name(host_id)` and nothing else (not its
        address: the control plane verifies who answers, not where)."""
        sans: list[x509.GeneralName] = [x509.DNSName(host_name(host_id))]
        return self._leaf(host_id, ExtendedKeyUsageOID.SERVER_AUTH, HOST_CERT_TTL, sans)

    def issue_client(self) -> Issued:
        """The control plane's client certificate for calling agents."""
        return self._leaf(CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH, CLIENT_CERT_TTL, [])

    def verify(self, cert_pem: str | bytes) -> x509.Certificate:
        """The certificate, if this CA signed it and it is valid now; ValueError otherwise."""
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ours"
            raise ValueError(f"not signed by this CA: {exc}") from None
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ValueError("certificate is not valid now")
        return cert
