"""`wrenn login` and `wrenn keys ...`: a user's session and the team's API keys.

`wrenn login` asks the control plane for a user token and keeps it in `~/.config/wrenn/login.json`
(`$WRENN_CONFIG_DIR` elsewhere), a file created with mode 0600 (never readable by others, not even for
an instant) in a 0700 directory. Key management needs a user (API keys cannot mint keys): the saved
login, else the admin account `wrenn up` created on this machine."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from ._auth import NoCredentials, admin

app = typer.Typer(
    help="The team's API keys (needs `wrenn login`, or the admin of `wrenn up`).", no_args_is_help=True
)


def config_dir() -> Path:
    return Path(os.environ.get("WRENN_CONFIG_DIR") or Path.home() / ".config" / "wrenn")


def login_file() -> Path:
    return config_dir() / "login.json"


def save_login(base_url: str, email: str, token: str) -> Path:
    """Write the login with mode 0600 from its creation on (O_CREAT with the mode; an existing file is
    made 0600 before it is written)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = login_file()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump({"base_url": base_url, "email": email, "token": token}, f)
    return path


def _session() -> tuple[str, str]:
    """(base URL, user token): the saved login, else a login as `wrenn up`'s admin."""
    try:
        saved = json.loads(login_file().read_text())
        return str(saved["base_url"]), str(saved["token"])
    except (FileNotFoundError, KeyError, ValueError):
        pass
    try:
        base_url, email, password = admin()
    except NoCredentials:
        raise NoCredentials("no user session: run `wrenn login` first") from None
    return base_url, _login(base_url, email, password)


def _login(base_url: str, email: str, password: str) -> str:
    r = httpx.post(f"{base_url}/v1/auth/login", json={"email": email, "password": password}, timeout=30)
    _check(r)
    return str(r.json()["token"])


class ApiFailure(Exception):
    """The control plane refused a request (its code and message)."""


def _check(r: httpx.Response) -> None:
    if r.is_success:
        return
    try:
        error = r.json()["error"]
        message = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {r.status_code}"
    raise NoCredentials(message) if r.status_code == 401 else ApiFailure(message)


def _request(method: str, path: str, **kwargs: Any) -> httpx.Response:
    base_url, token = _session()
    r = httpx.request(
        method, f"{base_url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
    )
    _check(r)
    return r


def mint(name: str, e2b: bool) -> str:
    """A new API key of the team (in E2B's shape with `e2b`); shown once."""
    return str(
        _request("POST", "/v1/api-keys", json={"name": name, "format": "e2b" if e2b else "wrenn"}).json()[
            "key"
        ]
    )


@app.command()
def create(
    name: Annotated[str, typer.Option(help="what the key is for")] = "cli",
    e2b: Annotated[
        bool, typer.Option("--e2b", help="in E2B's shape (e2b_ + 40 hex), for e2b SDKs <= 2.45")
    ] = False,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    print(mint(name, e2b))


@app.command("list")
def list_() -> None:
    """The team's API keys (their prefixes; a key itself is never shown again)."""
    from ._capsule import print_rows

    rows = [
        [
            k["id"],
            k["name"],
            k["key_prefix"] + "…",
            k.get("creator_email") or "",
            k["created_at"],
            k.get("last_used") or "",
        ]
        for k in _request("GET", "/v1/api-keys").json()
    ]
    print_rows(["id", "name", "prefix", "created by", "created", "last used"], rows)


@app.command()
def delete(key_id: str) -> None:
    """Revoke an API key."""
    _request("DELETE", f"/v1/api-keys/{key_id}")


def login(
    base_url: Annotated[
        str, typer.Option(envvar="WRENN_BASE_URL", help="the control plane")
    ] = "http://localhost:8080",
    email: Annotated[str | None, typer.Option(help="your account's email")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the password from standard input")] = False,
) -> None:
    """Sign in and keep the session for `wrenn keys` (in a 0600 file)."""
    email = email or input("Email: ")
    password = input() if password_stdin else getpass.getpass("Password: ")
    token = _login(base_url.rstrip("/"), email, password)
    path = save_login(base_url.rstrip("/"), email, token)
    print(f"signed in as {email}; the session is in {path}")
