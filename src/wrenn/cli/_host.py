"""`wrenn host ...`: hosts of the platform (admin)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from ._auth import admin
from ._capsule import print_rows

app = typer.Typer(help="Register and list hosts (admin).", no_args_is_help=True)
out = Console(soft_wrap=True)


class HostError(Exception):
    pass


def _session() -> tuple[str, dict[str, str]]:
    base, email, password = admin()
    r = httpx.post(f"{base}/v1/auth/login", json={"email": email, "password": password}, timeout=30)
    _check(r)
    return base, {"Authorization": f"Bearer {r.json()['token']}"}


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            error = r.json()["error"]
            raise HostError(f"{error['code']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise HostError(f"HTTP {r.status_code}: {r.text[:200]}") from None
    return r.json() if r.content else None


@app.command()
def create(kind: Annotated[str, typer.Option("--type", help="regular or byoc")] = "regular") -> None:
    """Create a host and print its one-time registration token (valid 1 hour)."""
    base, headers = _session()
    body = _check(httpx.post(f"{base}/v1/hosts", json={"type": kind}, headers=headers, timeout=30))
    out.print(f"host {body['host']['id']} created; on the new server, as root:")
    out.print(
        f"  wrenn agent --register {body['registration_token']} --control-plane {base} --address <ip:port>"
    )


@app.command("list")
def list_() -> None:
    """Hosts and their state."""
    base, headers = _session()
    rows = [
        [
            h["id"],
            h["status"],
            h.get("address", ""),
            str(h.get("cpu_cores", "")),
            f"{h.get('memory_mb', '')} MiB",
            str(h.get("last_heartbeat_at") or "-"),
        ]
        for h in _check(httpx.get(f"{base}/v1/hosts", headers=headers, timeout=30))
    ]
    print_rows(["id", "status", "address", "cpus", "memory", "last heartbeat"], rows)
