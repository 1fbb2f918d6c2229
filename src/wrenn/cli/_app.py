"""The `wrenn` command's sub-commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
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


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def agent(ctx: typer.Context) -> None:
    """Run the host agent (needs root). `wrenn agent --help` lists its options."""
    from wrenn.agent.__main__ import main as agent_main

    agent_main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def server(ctx: typer.Context) -> None:
    """Run the control plane (REST API). `wrenn server --help` lists its options."""
    from wrenn.controlplane.__main__ import main as server_main

    server_main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def image(ctx: typer.Context) -> None:
    """Build or show guest images: `wrenn image build [--template minimal|python]`, `wrenn image show`."""
    from wrenn.images.__main__ import main as images_main

    raise typer.Exit(images_main(list(ctx.args)) or 0)


@app.command()
def up(
    command: Annotated[
        str, typer.Option(help="shell command to run once it is up")
    ] = 'python3 -c "print(6*7)"',
    keep: Annotated[bool, typer.Option(help="keep running after the command, until Ctrl-C")] = False,
    data_dir: Annotated[Path, typer.Option(help="images and sandbox files")] = Path("/var/lib/wrenn"),
) -> None:
    """Bring Wrenn up on this machine and run a command in a microVM sandbox.

    Builds the base image on first use, starts a host agent (KVM where a guest boots under it, else
    TCG), boots a sandbox and runs the command in it. The control plane joins as it lands.
    """
    try:
        code = asyncio.run(_up.run(command, keep=keep, console=err, data_dir=data_dir))
    except _up.UpError as exc:
        err.print(f"[red]wrenn up: {exc}[/red]")
        raise typer.Exit(1) from None
    raise typer.Exit(code)
