"""HTTPS on the control plane's own listener: the API and dashboard's certificate, and, for the traffic
proxy's host names (`{port}-{capsule_id}.<sandbox_domain>`), a wildcard one chosen by SNI.

One listener serves both (the traffic proxy is middleware of the control plane's app), so a second
certificate can only be picked during the handshake: `SSLContext.sni_callback` swaps in the sandbox
domain's context when the client asks for a name under it. Anything wrong with what was given (a missing
or unreadable file, a key that is not the certificate's, a wildcard certificate that does not cover
`*.<sandbox_domain>`) refuses the start with a clear error: never a fallback to plain HTTP.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


class TLSConfigError(ValueError):
    """The TLS settings cannot be served: the message says which file and why."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path | None = None
    key: Path | None = None
    sandbox_cert: Path | None = None
    sandbox_key: Path | None = None


def _context(cert: Path, key: Path, what: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for path in (cert, key):
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            raise TLSConfigError(f"{what}: no such file: {path}") from None
        except OSError as exc:
            raise TLSConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = "the key is not the certificate's" if "KEY_VALUES_MISMATCH" in str(exc) else str(exc)
        raise TLSConfigError(f"{what} ({cert}, {key}): {reason}") from None
    except OSError as exc:
        raise TLSConfigError(f"{what} ({cert}, {key}): {exc}") from None
    return context


def _names(cert: Path) -> list[str]:
    """The DNS names a PEM certificate (the first of its file) is valid for."""
    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"the sandbox domain's certificate {cert}: {exc}") from None
    return [name.lower() for name in sans.get_values_for_type(x509.DNSName)]


def server_context(files: TLSFiles, sandbox_domain: str) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain HTTP (no certificate given)."""
    if bool(files.cert) != bool(files.key):
        raise TLSConfigError("--tls-cert and --tls-key (WRENN_TLS_CERT, WRENN_TLS_KEY) go together")
    if bool(files.sandbox_cert) != bool(files.sandbox_key):
        raise TLSConfigError(
            "--tls-sandbox-cert and --tls-sandbox-key (WRENN_TLS_SANDBOX_CERT, WRENN_TLS_SANDBOX_KEY) "
            "go together"
        )
    if files.sandbox_cert and not files.cert:
        raise TLSConfigError("a sandbox domain certificate needs the server's own: --tls-cert and --tls-key")
    if files.cert is None or files.key is None:
        return None
    context = _context(files.cert, files.key, "the server's certificate")
    if files.sandbox_cert is None or files.sandbox_key is None:
        return context
    if not sandbox_domain:
        raise TLSConfigError("a sandbox domain certificate needs the sandbox domain: WRENN_SANDBOX_DOMAIN")
    wildcard = f"*.{sandbox_domain}"
    if wildcard not in _names(files.sandbox_cert):
        raise TLSConfigError(
            f"the sandbox domain's certificate {files.sandbox_cert} is not valid for {wildcard} "
            f"(it names {', '.join(_names(files.sandbox_cert)) or 'no DNS name'})"
        )
    sandboxes = _context(files.sandbox_cert, files.sandbox_key, "the sandbox domain's certificate")
    suffix = f".{sandbox_domain}"

    def by_name(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name and name.lower().endswith(suffix):
            connection.context = sandboxes

    context.sni_callback = by_name  # type: ignore[assignment]
    return context
