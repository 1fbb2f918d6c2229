"""The `wrenn` command's sub-commands."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from wrenn import __version__

from . import _up

app = typer.Typer(
    name="wrenn",
    help="Self-hostable microVM sandboxes for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print Wrenn's version."""
    print(__version__)


@app.command()
def envd(
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="TCP port")] = 49983,
    dev: Annotated[bool, typer.Option(help="run on a plain host: never set the clock")] = False,
) -> None:
    """Run envd, the guest agent (normally started by a sandbox's init)."""
    from wrenn.envd.__main__ import main as envd_main

    envd_main(["--host", host, "--port", str(port), *(["--dev"] if dev else [])])


@app.command()
def up(
    command: Annotated[
        str, typer.Option(help="shell command to run once it is up")
    ] = 'python3 -c "print(6*7)"',
    keep: Annotated[bool, typer.Option(help="keep running after the command, until Ctrl-C")] = False,
) -> None:
    """Bring Wrenn up on this machine and run a command in it.

    Today this starts envd (the guest agent) as a local process and runs the command through its
    E2B-compatible API; the control plane, host agent and microVMs take its place as they land.
    """
    try:
        code = asyncio.run(_up.run(command, keep=keep, console=err))
    except _up.UpError as exc:
        err.print(f"[red]wrenn up: {exc}[/red]")
        raise typer.Exit(1) from None
    raise typer.Exit(code)
