"""The `wrenn` command."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from wrenn import __version__, images

from . import _admin, _backup, _capsule, _host, _keys, _platform, _shutdown, _template
from ._auth import NoCredentials
from ._platform import DEFAULT_DATA_DIR

app = typer.Typer(
    name="wrenn",
    help="Self-hostable microVM sandboxes for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(_capsule.app, name="capsule")
app.add_typer(_host.app, name="host")
app.add_typer(_template.app, name="template")
app.add_typer(_keys.app, name="keys")
app.command()(_keys.login)
app.add_typer(_admin.app, name="admin")
app.add_typer(_shutdown.app, name="capsules")
err = Console(stderr=True, soft_wrap=True)
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
DataDir = Annotated[Path, typer.Option(help="images, database, sandboxes and logs")]


@app.command()
def version() -> None:
    """Print Wrenn's version."""
    print(__version__)


@app.command(context_settings=_PASSTHROUGH)
def server(ctx: typer.Context) -> None:
    """Run the control plane (REST API). `wrenn server --help` lists its options."""
    from wrenn.controlplane.__main__ import main as server_main

    server_main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def agent(ctx: typer.Context) -> None:
    """Run the host agent (needs root). `wrenn agent --help` lists its options."""
    from wrenn.agent.__main__ import main as agent_main

    agent_main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def image(ctx: typer.Context) -> None:
    """Build or show guest images: `wrenn image build [--template minimal|python]`, `wrenn image show`."""
    from wrenn.images.__main__ import main as images_main

    raise typer.Exit(images_main(list(ctx.args)) or 0)


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
    detach: Annotated[bool, typer.Option(help="leave it running in the background and return")] = False,
    command: Annotated[str, typer.Option(help="run this in a first capsule")] = 'python3 -c "print(6*7)"',
    data_dir: DataDir = DEFAULT_DATA_DIR,
    port: Annotated[int, typer.Option(help="the control plane's port")] = 8080,
    agent_port: Annotated[int, typer.Option(help="the host agent's port")] = 50051,
    agent_proxy_port: Annotated[
        int, typer.Option(help="the host agent's sandbox-traffic port (default: --agent-port + 1)")
    ] = 0,
    with_: Annotated[
        list[str] | None,
        typer.Option("--with", help="also build this base image, e.g. code-interpreter (repeatable)"),
    ] = None,
    e2b_key: Annotated[
        bool,
        typer.Option("--e2b-key", help="also mint a key in E2B's shape (e2b_ + hex) for e2b SDKs <= 2.45"),
    ] = False,
    pause_deadline: Annotated[
        int,
        typer.Option(
            help="at a shutdown (SIGTERM to the supervisor, or systemd stopping wrenn-capsules.service), "
            "seconds to pause the capsules in"
        ),
    ] = 60,
    supervisor: Annotated[
        str,
        typer.Option(
            help="systemd: install and start systemd units; self: wrenn's own supervisor; "
            "auto: systemd where it is the init system"
        ),
    ] = "auto",
) -> None:
    """The whole platform on this machine: control plane, host agent and SQLite, kept running by systemd
    (where it is the init system) or by wrenn's own supervisor; then a first capsule. Of a platform
    (partly) running it keeps what runs, restarts the rest."""
    from wrenn.sdk import Capsule

    for name in with_ or ():
        if name not in images.TEMPLATES and name not in images.ALIASES:
            raise typer.BadParameter(f"no base image {name!r} (known: {', '.join(sorted(images.TEMPLATES))})")
    platform = _platform.start(
        data_dir,
        port,
        agent_port,
        err,
        proxy_port=agent_proxy_port or None,
        templates=tuple(images.ALIASES.get(n, n) for n in with_ or ()),
        pause_deadline_s=pause_deadline,
        supervised_by=supervisor,
    )
    err.print(f"Wrenn is up at {platform.base_url}. A first capsule:")
    started = time.monotonic()
    with (
        err.status("booting a capsule"),
        Capsule(api_key=platform.api_key, base_url=platform.base_url) as capsule,
    ):
        booted = time.monotonic() - started
        result = capsule.commands.run(command, timeout=120)
    err.print(f"$ {command}   (capsule {capsule.capsule_id}, booted in {booted:.1f} s)")
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    err.print(
        "\nWhat next:\n"
        f"  eval $(wrenn env{'' if data_dir == DEFAULT_DATA_DIR else f' --data-dir {data_dir}'})"
        "      # WRENN_BASE_URL and WRENN_API_KEY for the SDK and the CLI\n"
        "  python3 -c 'from wrenn import Capsule; print(Capsule().commands.run(\"uname -a\").stdout)'\n"
        "  wrenn capsule create | list | exec ID -- CMD | shell ID | cp SRC DST | kill ID\n"
        f"  API docs: {platform.base_url}/docs      stop everything: wrenn down\n"
        f"\nDashboard: {platform.base_url}/   sign in as {platform.admin_email}, "
        f"password {platform.admin_password}  (also in {_platform.Platform.state_file(data_dir)})"
    )
    if e2b_key:
        key = _keys.mint("wrenn up (E2B shape)", e2b=True)
        err.print(
            "\nFor a program written for E2B (any e2b SDK, 2.45 included):\n"
            f"  export E2B_API_KEY={key} E2B_API_URL={platform.base_url} E2B_SANDBOX_URL={platform.base_url}"
        )
    if detach:
        return
    err.print("Running in the foreground; Ctrl-C stops Wrenn.")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    signal.sigwait(stop_signals)
    _platform.stop(data_dir, err)


@app.command()
def down(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    pause: Annotated[
        bool, typer.Option(help="pause the running capsules instead (the next `wrenn up` resumes them)")
    ] = False,
    deadline: Annotated[int, typer.Option(help="with --pause: seconds to pause them in")] = 60,
) -> None:
    """Stop what `wrenn up` started: the supervisor, the control plane, the agent (capsules are destroyed,
    or with --pause paused to disk and resumed by the next `wrenn up`)."""
    _platform.stop(data_dir, err, pause=pause, deadline_s=deadline)


@app.command()
def status(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Show each process of the platform `wrenn up` started (pid, uptime, restarts) and its capsules.
    Exits 3 when a process is not running."""
    platform, rows = _platform.Platform.load(data_dir), _platform.processes(data_dir)
    if platform is None or not rows:
        raise _platform.PlatformError(f"Wrenn was not started from {data_dir}: run `wrenn up`")
    table = Table(box=None, pad_edge=False)
    for column in ("process", "state", "pid", "uptime", "restarts", "last exit"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            "running" if row.running else "[red]stopped[/red]",
            str(row.pid) if row.running else "-",
            _duration(row.uptime_s) if row.running else "-",
            "-" if row.restarts is None else str(row.restarts),
            row.last_exit or "-",
        )
    out = Console(soft_wrap=True)
    out.print(f"Wrenn at {platform.base_url}  (data dir {data_dir})")
    out.print(table)
    counts = _platform.capsule_counts(platform)
    if counts is None:
        out.print("capsules: unknown (the host agent does not answer)")
    else:
        shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
        out.print(f"capsules on this host: {shown}")
    if not all(row.running for row in rows):
        raise typer.Exit(3)


DatabaseUrl = Annotated[
    str | None,
    typer.Option(help="the control plane's database (default: $DATABASE_URL, else the data dir's SQLite)"),
]


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="a new (or empty) directory")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
    with_images: Annotated[bool, typer.Option("--images", help="also the base images (large)")] = False,
) -> None:
    """Back up this node while it runs: database, secrets (the sealing key!), templates, paused capsules.
    The backup holds secrets: keep it as safe as the server."""
    manifest = _backup.backup(data_dir, dest, url=database_url, images=with_images)
    secrets = ", ".join(manifest["secrets"]["files"]) or "none"
    paused = len(manifest["agent"]["paused_sandboxes"])
    err.print(f"backed up to {dest} ({manifest['database']['dialect']} database; secrets: {secrets}; "
              f"{paused} paused capsule(s)). It holds secrets: keep it safe.")  # fmt: skip
    for note in manifest["secrets"]["not_included"]:
        err.print(f"[yellow]not included: {note}[/yellow]")


@app.command()
def restore(
    src: Annotated[Path, typer.Argument(help="a directory `wrenn backup` wrote")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Restore a backup onto a fresh data dir (and an empty database); then `wrenn up` (or start the
    control plane), which migrates a backup from an older version."""
    manifest = _backup.restore(src, data_dir, url=database_url)
    err.print(
        f"restored {src} into {data_dir} ({len(manifest['agent']['paused_sandboxes'])} paused capsule(s))"
    )


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m"


@app.command()
def env(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Print `export WRENN_BASE_URL=... WRENN_API_KEY=...` for the platform `wrenn up` started."""
    platform = _platform.Platform.load(data_dir)
    if platform is None:
        raise _platform.PlatformError(f"Wrenn was not started from {data_dir}: run `wrenn up`")
    print(_platform.env_lines(platform))


def run() -> None:
    """Entry point: one clear line for every expected failure, never a traceback."""
    from wrenn.sdk import WrennError

    try:
        app()
    except (
        _platform.PlatformError,
        NoCredentials,
        _host.HostError,
        _keys.ApiFailure,
        _backup.BackupError,
    ) as exc:
        err.print(f"[red]wrenn: {exc}[/red]")
        raise SystemExit(1) from None
    except WrennError as exc:
        err.print(f"[red]wrenn: {exc.code}: {exc.message}[/red]")
        raise SystemExit(1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]wrenn: cannot reach the server: {exc}[/red]")
        raise SystemExit(1) from None
