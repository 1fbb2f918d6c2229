"""Leaf certificates for TLS interception, signed by a sandbox's own CA, and the server-side `SSLContext`s
that present them (cached per CA and name).

The CA's key stays in this process's memory (it comes from the control plane with the policy). Python's
`ssl` loads a certificate chain only from files, so a leaf's key is written to a private temporary file
(mode 0600, in a 0700 directory), loaded, and unlinked at once.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CACHE_SIZE = 1024
_LEAF_DAYS = 7


class LeafMinter:
    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch
        self._contexts: OrderedDict[tuple[bytes, str], ssl.SSLContext] = OrderedDict()

    def context(self, ca_cert_pem: bytes, ca_key_pem: bytes, name: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for `name` signed by the CA (cached)."""
        key = (hashlib.sha256(ca_cert_pem).digest(), name)
        ctx = self._contexts.get(key)
        if ctx is not None:
            self._contexts.move_to_end(key)
            return ctx
        ctx = self._make(ca_cert_pem, ca_key_pem, name)
        self._contexts[key] = ctx
        while len(self._contexts) > _CACHE_SIZE:
            self._contexts.popitem(last=False)
        return ctx

    def forget(self, ca_cert_pem: bytes) -> None:
        digest = hashlib.sha256(ca_cert_pem).digest()
        for key in [k for k in self._contexts if k[0] == digest]:
            del self._contexts[key]

    def _make(self, ca_cert_pem: bytes, ca_key_pem: bytes, name: str) -> ssl.SSLContext:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("the sandbox CA's key is not an EC key")
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(min(now + datetime.timedelta(days=_LEAF_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self._scratch, suffix=".pem")
        try:
            os.write(fd, pem)
            os.close(fd)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx
