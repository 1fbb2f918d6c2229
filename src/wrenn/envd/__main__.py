"""`python -m wrenn.envd`: run envd (inside a sandbox VM, or on a host with --dev)."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from wrenn._shared import logs

from ._app import Envd
from ._config import DEFAULT_PORT, ENVD_VERSION, EnvdConfig

log = logging.getLogger("wrenn.envd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrenn.envd", description="Wrenn's guest agent (envd).")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="run on a plain Linux host: never set the clock; default user = the invoking user",
    )
    parser.add_argument(
        "--max-upload-bytes", type=int, default=None, help="largest single upload (default: disk space)"
    )
    parser.add_argument(
        "--host-address",
        default=None,
        help="until an access token is set, answer only this address (the host, as the guest sees it)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument("--version", action="version", version=ENVD_VERSION)
    return parser.parse_args(argv)


async def serve(config: EnvdConfig) -> None:
    server: uvicorn.Server | None = None
    # uvicorn's live connections, so /snapshot/prepare can close the idle ones.
    envd = Envd(config, connections=lambda: server.server_state.connections if server else ())
    server = uvicorn.Server(
        uvicorn.Config(
            envd,
            host=config.host,
            port=config.port,
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=640,  # outlives clients' pooled connections (E2B's SDK keeps them 300 s)
            timeout_graceful_shutdown=5,
        )
    )
    log.info(
        "envd listening",
        extra={
            "host": config.host,
            "port": config.port,
            "version": ENVD_VERSION,
            "dev": config.dev,
            "host_address": config.host_address,
        },
    )
    await server.serve()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    config = EnvdConfig(
        host=args.host,
        port=args.port,
        dev=args.dev,
        max_upload_bytes=args.max_upload_bytes,
        host_address=args.host_address,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
