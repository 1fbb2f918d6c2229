"""The `wrenn` command. Needs the `server` extra (typer, rich): `pip install 'wrenn[server]'`."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from ._app import run
    except ImportError as exc:  # the base install is the SDK alone
        sys.stderr.write(
            f"wrenn: the command line needs the server extra ({exc.name} is missing): "
            "pip install 'wrenn[server]'\n"
        )
        raise SystemExit(2) from None
    run()
