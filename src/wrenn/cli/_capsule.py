"""`wrenn capsule ...`: capsules from the command line, through the SDK."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wrenn.sdk import Capsule
from wrenn.sdk._config import Config

from ._auth import credentials

app = typer.Typer(help="Create, list and use capsules.", no_args_is_help=True)
out = Console(soft_wrap=True)


def _connect(capsule_id: str) -> Capsule:
    key, base = credentials()
    return Capsule.connect(capsule_id, api_key=key, base_url=base)


@app.command()
def create(
    template: Annotated[str, typer.Option(help="template to boot")] = "minimal",
    vcpus: Annotated[int, typer.Option(help="virtual CPUs")] = 1,
    memory_mb: Annotated[int, typer.Option("--memory", help="memory in MiB")] = 512,
    timeout: Annotated[int | None, typer.Option(help="idle seconds before it is stopped")] = None,
) -> None:
    """Create a capsule and print its id."""
    key, base = credentials()
    capsule = Capsule.create(
        template, vcpus=vcpus, memory_mb=memory_mb, timeout=timeout, api_key=key, base_url=base
    )
    print(capsule.capsule_id)


@app.command("list")
def list_() -> None:
    """The team's capsules."""
    key, base = credentials()
    rows = [
        [c.id, str(c.status), c.template, str(c.vcpus), f"{c.memory_mb} MiB", str(c.created_at)]
        for c in Capsule.list(api_key=key, base_url=base)
    ]
    print_rows(["id", "status", "template", "vcpus", "memory", "created"], rows)


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines (no header) when piped, so scripts get whole values."""
    if not out.is_terminal:
        for row in rows:
            print("\t".join(row))
        return
    table = Table(*header)
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec(
    ctx: typer.Context,
    capsule_id: str,
    timeout: Annotated[int, typer.Option(help="seconds")] = 60,
) -> None:
    """Run a shell command in a capsule: wrenn capsule exec ID -- 'ls -l /'."""
    if not ctx.args:
        raise typer.BadParameter("give the command after the id")
    result = _connect(capsule_id).commands.run(" ".join(ctx.args), timeout=timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    raise typer.Exit(result.exit_code)


@app.command()
def kill(capsule_id: str) -> None:
    """Destroy a capsule."""
    key, base = credentials()
    Capsule.destroy(capsule_id, api_key=key, base_url=base)  # type: ignore[call-arg]
    print(f"{capsule_id} destroyed")


def _attach(capsule_id: str) -> Capsule:
    """The capsule as it is (a paused one is not resumed, unlike `Capsule.connect`)."""
    key, base = credentials()
    info = Capsule.get_info(capsule_id, api_key=key, base_url=base)  # type: ignore[call-arg]
    return Capsule(_info=info, _config=Config.resolve(key, base))


def _by_id() -> dict[str, str]:
    key, base = credentials()
    return {"api_key": key, "base_url": base}


@app.command()
def pause(capsule_id: str) -> None:
    """Pause a capsule: its memory, processes and files are kept; its CPU and RAM freed."""
    print(Capsule.pause(capsule_id, **_by_id()).status)  # type: ignore[call-arg]


@app.command()
def resume(capsule_id: str) -> None:
    """Resume a paused capsule as it was."""
    print(Capsule.resume(capsule_id, **_by_id()).status)  # type: ignore[call-arg]


@app.command()
def snapshot(
    capsule_id: str,
    name: Annotated[str | None, typer.Option(help="the template's name (default: generated)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the team's template of that name")] = False,
) -> None:
    """Save a capsule as a template (it is left paused) and print the template's name."""
    capsule = _attach(capsule_id)
    try:
        print(capsule.create_snapshot(name, overwrite=overwrite).name)
    finally:
        capsule.close()  # the capsule lives on


@app.command()
def fork(capsule_id: str, count: Annotated[int, typer.Option(help="how many (1-20)")] = 1) -> None:
    """New capsules in this one's state now (memory, processes, files); prints their ids."""
    capsule = _attach(capsule_id)
    try:
        for forked in capsule.fork(count):
            print(forked.capsule_id)
            forked.close()
    finally:
        capsule.close()


@app.command()
def logs(
    capsule_id: str,
    limit: Annotated[int, typer.Option(help="how many entries")] = 200,
    since: Annotated[int | None, typer.Option(help="from this time on (unix milliseconds)")] = None,
) -> None:
    """A capsule's console: kernel, init, envd and every process it started and ended. Without --since,
    the newest entries."""
    capsule = _attach(capsule_id)
    try:
        found = capsule.logs(cursor=since, limit=limit, backward=since is None)
    finally:
        capsule.close()
    for entry in found if since is not None else found[::-1]:
        print(f"{entry['timestamp']} {entry['level']:<5} {entry['source']:<7} {entry['message']}")


def _split(spec: str) -> tuple[str | None, str]:
    """`cl-...:/path` -> (id, path); a local path -> (None, path)."""
    head, sep, tail = spec.partition(":")
    return (head, tail) if sep and head.startswith("cl-") else (None, spec)


def _read_local(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


@app.command()
def cp(source: str, destination: str) -> None:
    """Copy a file into or out of a capsule: cp ./a.txt cl-...:/home/user/a.txt, or the reverse."""
    (src_id, src), (dst_id, dst) = _split(source), _split(destination)
    if (src_id is None) == (dst_id is None):
        raise typer.BadParameter("one side must be a capsule path (cl-...:/path), the other a local path")
    if dst_id is not None:
        _connect(dst_id).files.upload_stream(dst, _read_local(Path(src)))
    else:
        assert src_id is not None
        with Path(dst).open("wb") as f:
            for chunk in _connect(src_id).files.download_stream(src):
                f.write(chunk)


@app.command()
def shell(capsule_id: str, cmd: Annotated[str, typer.Option(help="program to run")] = "/bin/bash") -> None:
    """An interactive terminal in a capsule (Ctrl-D or `exit` leaves)."""
    capsule = _connect(capsule_id)
    cols, rows = shutil.get_terminal_size()
    if not sys.stdin.isatty():
        raise typer.BadParameter("shell needs a terminal")
    code = 0
    with capsule.pty(cmd=cmd, cols=cols, rows=rows) as session:
        saved = termios.tcgetattr(sys.stdin.fileno())
        stop = threading.Event()

        def resize(*_: object) -> None:
            c, r = shutil.get_terminal_size()
            with contextlib.suppress(Exception):
                session.resize(c, r)

        def pump_input() -> None:
            fd = sys.stdin.fileno()
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    data = os.read(fd, 4096)
                    if not data:
                        return
                    session.write(data)

        signal.signal(signal.SIGWINCH, resize)
        tty.setraw(sys.stdin.fileno())
        reader = threading.Thread(target=pump_input, daemon=True)
        reader.start()
        try:
            for event in session:
                if event.type == "output":
                    os.write(sys.stdout.fileno(), event.data)
                elif event.type == "exit":
                    code = event.exit_code or 0
                    break
                elif event.type == "error" and event.fatal:
                    raise typer.Exit(1)
        finally:
            stop.set()
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    raise typer.Exit(code)
