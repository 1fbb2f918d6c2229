"""`python -m wrenn.controlplane` / `wrenn server`: run the control plane."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import uvicorn

from wrenn._shared import logs

from ._app import create_app
from ._settings import Settings
from ._tls import TLSConfigError, TLSFiles, server_context


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="wrenn server", description="Wrenn's control plane (REST API).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--database-url", default=None, help="default: $DATABASE_URL, else SQLite under --data-dir"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="default: $WRENN_DIR or /var/lib/wrenn")
    p.add_argument("--local-agent", action="append", default=[], help="a host agent URL to register at start")
    p.add_argument(
        "--local-agent-token-file",
        type=Path,
        default=None,
        help="the local agents' secret (default: DATA_DIR/agent-api-token, as `wrenn up` lays it out)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate chain")
    p.add_argument("--tls-key", type=Path, default=None, help="... and this PEM private key")
    p.add_argument(
        "--tls-sandbox-cert",
        type=Path,
        default=None,
        help="a wildcard certificate for *.WRENN_SANDBOX_DOMAIN, served to capsule host names (SNI)",
    )
    p.add_argument("--tls-sandbox-key", type=Path, default=None, help="... and its private key")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    a = p.parse_args(argv)
    logs.configure(a.log_level, a.log_format)
    settings = Settings.from_env(
        database_url=a.database_url,
        data_dir=a.data_dir,
        local_agents=tuple(a.local_agent),
        local_agent_token_file=a.local_agent_token_file,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_sandbox_cert=a.tls_sandbox_cert,
        tls_sandbox_key=a.tls_sandbox_key,
    )
    try:
        context = tls_context(settings)  # before anything else starts: a bad certificate stops it here
    except TLSConfigError as exc:
        raise SystemExit(f"wrenn server: refusing to start: {exc}") from None
    config = uvicorn.Config(
        create_app(settings),
        host=a.host,
        port=a.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    server(config, context).run()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context from `settings` (`_tls`); None: plain HTTP."""
    files = TLSFiles(settings.tls_cert, settings.tls_key, settings.tls_sandbox_cert, settings.tls_sandbox_key)
    return server_context(files, settings.sandbox_domain)


def server(config: uvicorn.Config, context: ssl.SSLContext | None) -> uvicorn.Server:
    """A uvicorn server with `context` (uvicorn's own options take files only, not a context whose SNI
    callback picks a second certificate): its config is loaded first, so that uvicorn keeps the context."""
    config.load()
    config.ssl = context
    return uvicorn.Server(config)


if __name__ == "__main__":
    main()
