"""`wrenn template ...`: build templates from Dockerfiles, list, delete, and follow their logs."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from ._auth import credentials
from ._capsule import print_rows
from ._dockerfile import DockerfileError, parse

app = typer.Typer(help="Build, list and delete templates.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_LEVEL_STYLE = {"error": "red", "warn": "yellow", "debug": "dim"}


def _client() -> httpx.Client:
    key, base = credentials()
    return httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=httpx.Timeout(60, read=300))


def _fail(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text
        err.print(f"[red]error[/red]: {message}")
        raise typer.Exit(1)


def _context(directory: Path) -> bytes:
    """The build context as a gzipped tar, paths relative to it (no `.git`, nor `.dockerignore`d names)."""
    ignored = {".git"}
    ignore_file = directory / ".dockerignore"
    if ignore_file.is_file():
        ignored |= {line.strip().strip("/") for line in ignore_file.read_text().splitlines() if line.strip()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part in ignored for part in rel.parts) or str(rel) in ignored:
                continue
            tar.add(path, arcname=str(rel), recursive=False)
    return buffer.getvalue()


def follow(client: httpx.Client, build_id: str) -> dict[str, Any]:
    """Print the build's log as it grows, with the current step, until it ends; its last view."""
    offset = 0
    with out.status("waiting for the build to start...") as status:
        while True:
            r = client.get(f"/v1/templates/builds/{build_id}", params={"offset": offset})
            _fail(r)
            build: dict[str, Any] = r.json()
            for entry in build.get("logs", []):
                offset = entry["seq"] + 1
                style = _LEVEL_STYLE.get(entry["level"], "")
                step = f"[{entry['step']}]".ljust(11)
                out.print(f"[dim]{step}[/dim] " + (f"[{style}]" if style else ""), end="")
                out.print(entry["message"], markup=False, highlight=False, style=style or None)
                if entry["message"].startswith("[") and "/" in entry["message"].split("]")[0]:
                    status.update(f"{build['status']}: {entry['message'][:80]}")
            if build["status"] not in ("waiting", "building"):
                return build
            if build["status"] == "building" and offset == 0:
                status.update("building...")
            time.sleep(0.5)


@app.command()
def build(
    name: Annotated[str, typer.Option("--name", help="the template's name (name[:tag])")],
    file: Annotated[Path, typer.Option("-f", "--file", help="the Dockerfile")] = Path("Dockerfile"),
    context: Annotated[
        Path | None, typer.Option(help="the build context (default: the Dockerfile's directory)")
    ] = None,
    vcpus: Annotated[int | None, typer.Option(help="the template's vCPUs")] = None,
    memory_mb: Annotated[int | None, typer.Option("--memory", help="its memory in MiB")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step again")] = False,
    detach: Annotated[bool, typer.Option(help="print the build id and return")] = False,
) -> None:
    """Build a template from a Dockerfile, following its steps and logs."""
    try:
        parsed = parse(file.read_text())
    except (OSError, DockerfileError) as exc:
        err.print(f"[red]error[/red]: {file}: {exc}")
        raise typer.Exit(2) from None
    config = parsed.config(name)
    config.update({"force": no_cache, "vcpus": vcpus, "memory_mb": memory_mb})
    config = {k: v for k, v in config.items() if v is not None}
    files: dict[str, Any] = {"config": (None, json.dumps(config))}
    if any(step["type"] == "COPY" for step in parsed.steps):
        files["archive"] = ("context.tar.gz", _context(context or file.parent), "application/gzip")
    with _client() as client:
        r = client.post("/v1/templates/builds", files=files)
        _fail(r)
        build_id = r.json()["id"]
        if detach:
            print(build_id)
            return
        out.print(f"build [bold]{build_id}[/bold] of [bold]{name}[/bold]: {len(parsed.steps)} steps")
        result = follow(client, build_id)
    if result["status"] != "ready":
        step = f" at step {result['failed_step']}" if result.get("failed_step") else ""
        err.print(f"[red]build {result['status']}{step}[/red]: {result.get('error', '')}")
        raise typer.Exit(1)
    out.print(f"[green]template {name} ready[/green] ({result['size_bytes'] >> 20} MiB)")


@app.command("list")
def list_() -> None:
    """The team's built templates."""
    with _client() as client:
        r = client.get("/v1/templates")
        _fail(r)
    rows = [
        [
            t["name"],
            t["id"],
            t["build_id"] or "-",
            ",".join(sorted(t["tags"])),
            f"{t['size_bytes'] >> 20} MiB",
        ]
        for t in r.json()
    ]
    print_rows(["name", "id", "build", "tags", "size"], rows)


@app.command()
def delete(name: Annotated[str, typer.Argument(help="the template's name or id")]) -> None:
    """Delete a template, its builds and its files."""
    with _client() as client:
        _fail(client.delete(f"/v1/templates/{name}"))


@app.command()
def logs(
    build_id: Annotated[str, typer.Argument(help="the build's id")],
    follow_: Annotated[bool, typer.Option("--follow", "-F", help="until the build ends")] = False,
) -> None:
    """A build's log."""
    with _client() as client:
        if follow_:
            follow(client, build_id)
            return
        r = client.get(f"/v1/templates/builds/{build_id}")
        _fail(r)
    for entry in r.json().get("logs", []):
        out.print(f"[dim]{entry['time']} [{entry['step']}][/dim] {entry['message']}", highlight=False)
