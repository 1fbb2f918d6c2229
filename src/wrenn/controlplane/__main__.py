"""`python -m wrenn.controlplane` / `wrenn server`: run the control plane."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from wrenn._shared import logs

from ._app import create_app
from ._settings import Settings


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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    a = p.parse_args(argv)
    logs.configure(a.log_level, a.log_format)
    settings = Settings.from_env(
        database_url=a.database_url,
        data_dir=a.data_dir,
        local_agents=tuple(a.local_agent),
        local_agent_token_file=a.local_agent_token_file,
    )
    uvicorn.run(create_app(settings), host=a.host, port=a.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
