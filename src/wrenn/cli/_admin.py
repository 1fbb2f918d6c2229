"""`wrenn admin users|teams|capsules|hosts|audit ...`: the platform's operators' commands (`/v1/admin/*`).

They act as a platform admin: `WRENN_ACCESS_TOKEN` (an admin's user token) with `WRENN_BASE_URL`, else the
admin account `wrenn up` created on this machine."""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from ._capsule import print_rows
from ._host import _check
from ._host import _session as _admin_login

app = typer.Typer(help="Operate the platform: users, teams, capsules, audit log (platform admins).",
                  no_args_is_help=True)  # fmt: skip
users = typer.Typer(help="Accounts: list, disable, enable, make admin.", no_args_is_help=True)
teams = typer.Typer(help="Teams: list, BYOC, quotas, delete.", no_args_is_help=True)
capsules = typer.Typer(help="Capsules of every team: list, destroy.", no_args_is_help=True)
hosts = typer.Typer(help="Hosts under maintenance: cordon, uncordon, drain.", no_args_is_help=True)
app.add_typer(users, name="users")
app.add_typer(teams, name="teams")
app.add_typer(capsules, name="capsules")
app.add_typer(hosts, name="hosts")
out = Console(soft_wrap=True)


def _session() -> tuple[str, dict[str, str]]:
    token, base = os.environ.get("WRENN_ACCESS_TOKEN"), os.environ.get("WRENN_BASE_URL")
    if token and base:
        return base.rstrip("/"), {"Authorization": f"Bearer {token}"}
    return _admin_login()


def _call(method: str, path: str, **kwargs: Any) -> Any:
    base, headers = _session()
    return _check(httpx.request(method, f"{base}{path}", headers=headers, timeout=60, **kwargs))


def _user_id(who: str) -> str:
    """A user id, from an id or an exact e-mail address."""
    if who.startswith("usr-"):
        return who
    found = [
        u for u in _call("GET", "/v1/admin/users", params={"q": who})["items"] if u["email"] == who.lower()
    ]
    if not found:
        raise typer.BadParameter(f"no account with the e-mail {who}")
    return str(found[0]["id"])


@users.command("list")
def list_users(
    search: Annotated[str, typer.Option("--search", "-s", help="part of an e-mail or name")] = "",
    status: Annotated[str | None, typer.Option(help="active, inactive, disabled or deleted")] = None,
    page: int = 1,
) -> None:
    """Accounts, oldest first (50 a page)."""
    params: dict[str, Any] = {"q": search, "page": page} | ({"status": status} if status else {})
    found = _call("GET", "/v1/admin/users", params=params)
    rows = [[u["id"], u["email"], u["status"], "admin" if u["is_admin"] else "", str(u["teams_owned"]),
             ",".join(u["providers"]) or "-"] for u in found["items"]]  # fmt: skip
    print_rows(["id", "email", "status", "role", "teams owned", "providers"], rows)
    out.print(f"{len(rows)} of {found['total']}")


def _set(who: str, path: str, body: dict[str, bool]) -> dict[str, Any]:
    user: dict[str, Any] = _call("PUT", f"/v1/admin/users/{_user_id(who)}/{path}", json=body)
    return user


@users.command()
def disable(who: Annotated[str, typer.Argument(help="e-mail or user id")]) -> None:
    """Disable an account: its tokens and keys stop at once, its owned teams' capsules are destroyed."""
    user = _set(who, "active", {"active": False})
    out.print(f"{user['email']} is {user['status']}")
    if user.get("capsules_not_destroyed"):
        out.print(f"not destroyed (host failed; run again): {', '.join(user['capsules_not_destroyed'])}")


@users.command()
def enable(who: Annotated[str, typer.Argument(help="e-mail or user id")]) -> None:
    """Enable an account (also: restore a deleted one within its grace period)."""
    out.print(f"{(user := _set(who, 'active', {'active': True}))['email']} is {user['status']}")


@users.command()
def promote(who: Annotated[str, typer.Argument(help="e-mail or user id")]) -> None:
    """Make an account a platform admin."""
    out.print(f"{_set(who, 'admin', {'admin': True})['email']} is a platform admin")


@users.command()
def demote(who: Annotated[str, typer.Argument(help="e-mail or user id")]) -> None:
    """Take platform admin rights back."""
    out.print(f"{_set(who, 'admin', {'admin': False})['email']} is no longer a platform admin")


@teams.command("list")
def list_teams(
    search: Annotated[str, typer.Option("--search", "-s", help="part of a name or slug")] = "",
    deleted: Annotated[bool, typer.Option(help="include deleted teams")] = False,
    page: int = 1,
) -> None:
    """Teams, oldest first, with owner, members and running capsules."""
    found = _call("GET", "/v1/admin/teams", params={"q": search, "deleted": deleted, "page": page})
    rows = [[t["id"], t["name"], t["owner_email"] or "-", str(t["members"]), str(t["capsules"]),
             "yes" if t["byoc_enabled"] else "no", "deleted" if t["deleted_at"] else ""]
            for t in found["items"]]  # fmt: skip
    print_rows(["id", "name", "owner", "members", "capsules", "byoc", ""], rows)
    out.print(f"{len(rows)} of {found['total']}")


@teams.command()
def byoc(team_id: str, setting: Annotated[str, typer.Argument(help="on, off or default")]) -> None:
    """Whether the team's owner may add their own hosts."""
    values = {"on": True, "off": False, "default": None}
    if setting not in values:
        raise typer.BadParameter("on, off or default")
    team = _call("PUT", f"/v1/admin/teams/{team_id}/byoc", json={"enabled": values[setting]})
    out.print(f"{team['name']}: BYOC {'allowed' if team['byoc_enabled'] else 'not allowed'}")


@teams.command()
def quotas(
    team_id: str,
    capsules_: Annotated[int | None, typer.Option("--capsules")] = None,
    vcpus: int | None = None,
    memory_mb: int | None = None,
    disk_mb: int | None = None,
) -> None:
    """Show a team's quotas and usage; with options, set them."""
    body = {k: v for k, v in {"capsules": capsules_, "vcpus": vcpus, "memory_mb": memory_mb,
                              "disk_mb": disk_mb}.items() if v is not None}  # fmt: skip
    path = f"/v1/admin/teams/{team_id}/quotas"
    report = _call("PUT", path, json=body) if body else _call("GET", path)
    own = report["own"]
    rows = [[k, str(report["usage"][k]), str(report["quotas"][k]), "default" if own[k] is None else "own"]
            for k in ("capsules", "vcpus", "memory_mb", "disk_mb")]  # fmt: skip
    print_rows(["", "used", "quota", ""], rows)


@teams.command()
def delete(
    team_id: str, yes: Annotated[bool, typer.Option("--yes", help="no question asked")] = False
) -> None:
    """Delete a team: its capsules are destroyed."""
    if not yes:
        typer.confirm(f"delete team {team_id} and destroy its capsules?", abort=True)
    _call("DELETE", f"/v1/admin/teams/{team_id}")
    out.print(f"team {team_id} deleted")


@capsules.command("list")
def list_capsules(
    team: Annotated[str | None, typer.Option(help="a team id")] = None,
    status: Annotated[str | None, typer.Option(help="e.g. running,paused (default: not ended)")] = None,
    page: int = 1,
) -> None:
    """Capsules of every team, newest first."""
    params: dict[str, Any] = {"page": page} | ({"team_id": team} if team else {}) | (
        {"status": status} if status else {})  # fmt: skip
    found = _call("GET", "/v1/admin/capsules", params=params)
    rows = [[c["id"], c["team_id"], c["status"], c["template"], str(c["vcpus"]), f"{c['memory_mb']} MiB",
             c["host_id"] or "-"] for c in found["items"]]  # fmt: skip
    print_rows(["id", "team", "status", "template", "vcpus", "memory", "host"], rows)
    out.print(f"{len(rows)} of {found['total']}")


@capsules.command()
def destroy(capsule_id: str) -> None:
    """Destroy any team's capsule."""
    _call("DELETE", f"/v1/admin/capsules/{capsule_id}")
    out.print(f"capsule {capsule_id} destroyed")


@app.command()
def audit(
    team: Annotated[str | None, typer.Option(help="a team id")] = None,
    limit: Annotated[int, typer.Option(help="entries, newest first")] = 50,
) -> None:
    """The platform's audit log."""
    params: dict[str, Any] = {"limit": limit} | ({"team_id": team} if team else {})
    entries = _call("GET", "/v1/admin/audit-logs", params=params)["items"]
    rows = [[e["created_at"][:19], e["actor_name"], e["action"], e["resource_type"], e["resource_id"],
             e["team_id"] or "-"] for e in entries]  # fmt: skip
    print_rows(["when", "who", "did", "to", "id", "team"], rows)


@hosts.command()
def cordon(host_id: str) -> None:
    """No new capsules on the host; those running stay."""
    _call("POST", f"/v1/hosts/{host_id}/cordon")
    out.print(f"host {host_id} cordoned")


@hosts.command()
def uncordon(host_id: str) -> None:
    """The host takes new capsules again."""
    _call("POST", f"/v1/hosts/{host_id}/uncordon")
    out.print(f"host {host_id} uncordoned")


@hosts.command()
def drain(
    host_id: str,
    deadline: Annotated[int, typer.Option(help="seconds after which no further pause starts")] = 300,
) -> None:
    """Cordon the host and pause its running capsules; lists those it could not pause (exit 1 if any)."""
    base, headers = _session()
    r = httpx.post(f"{base}/v1/hosts/{host_id}/drain", json={"deadline_s": deadline}, headers=headers,
                   timeout=deadline + 330)  # fmt: skip
    report = _check(r)
    out.print(f"host {host_id} cordoned; {len(report['paused'])} capsule(s) paused")
    for capsule_id, why in report["not_paused"].items():
        out.print(f"  not paused: {capsule_id}: {why}")
    if report["not_paused"]:
        raise typer.Exit(1)
