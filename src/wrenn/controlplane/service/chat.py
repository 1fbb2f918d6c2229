"""Chat channels (Slack, Discord, Microsoft Teams, Google Chat, Telegram, Matrix), sent through `apprise`
rather than six hand-written clients. A channel's config is the seed's:

    slack, discord, teams, googlechat: {"webhook_url"}     telegram: {"bot_token", "chat_id"}
    matrix: {"homeserver_url", "access_token", "room_id"}

A chat target is an outbound request a tenant chooses, so what may be sent where is narrow:

- a `webhook_url` must be an https URL on the service's own hosts (`OFFICIAL`) that apprise recognises as
  that service's (a Slack channel given a Discord URL is refused); apprise then sends to the host it knows
  for the service, never to one built from the tenant's text. Telegram's is fixed (api.telegram.org).
- Telegram and Matrix fields are checked against strict patterns before they go into an apprise URL, so
  no field can add a host, a path or an apprise option.
- Matrix's homeserver is any host the tenant runs: its name is resolved and every address checked by the
  SSRF guard (`_ssrf.AddressGuard`: public addresses only, never an agent's; the operator's
  `webhook_allow_networks` allows more) when the channel is saved and again before every send. Apprise
  sends with `requests`, which resolves the name again: a name that changes its answer between the check
  and the send (DNS rebinding) could reach one more address; the paths are Matrix's own
  (`/_matrix/client/...`) and redirects are never followed (`redirect=no`).

Apprise is synchronous (requests): each send runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

import apprise
import httpcore

from .. import _ssrf

#: The fields each chat provider's config has (all required).
FIELDS: dict[str, tuple[str, ...]] = {
    "slack": ("webhook_url",),
    "discord": ("webhook_url",),
    "teams": ("webhook_url",),
    "googlechat": ("webhook_url",),
    "telegram": ("bot_token", "chat_id"),
    "matrix": ("homeserver_url", "access_token", "room_id"),
}
#: The hosts a `webhook_url` may name: exact names, or suffixes starting with a dot.
OFFICIAL: dict[str, tuple[str, ...]] = {
    "slack": ("hooks.slack.com",),
    "discord": ("discord.com", "discordapp.com"),
    "googlechat": ("chat.googleapis.com",),
    # Teams' incoming webhooks are Power Automate workflows now (Office 365 connectors are retired).
    "teams": (".logic.azure.com", ".logic.azure.us", ".powerplatform.com", ".powerplatform.microsoft.us"),
}
#: The apprise plugin each provider must resolve to.
_PLUGINS = {
    "slack": "NotifySlack", "discord": "NotifyDiscord", "teams": "NotifyWorkflows",
    "googlechat": "NotifyGoogleChat", "telegram": "NotifyTelegram", "matrix": "NotifyMatrix",
}  # fmt: skip
_BOT_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")
_CHAT_ID = re.compile(r"^(-?[0-9]{1,20}|@[A-Za-z0-9_]{5,64})$")
_ACCESS_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{8,500}$")
_ROOM = re.compile(r"^[!#][A-Za-z0-9._=+/-]{1,200}:[A-Za-z0-9.-]{1,200}(:[0-9]{1,5})?$")


def _official(provider: str, host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host.endswith(h) if h.startswith(".") else host == h for h in OFFICIAL[provider])


def check(provider: str, config: dict[str, str]) -> dict[str, str]:
    """The config as stored, or ValueError saying what is wrong (nothing is resolved or sent)."""
    fields = FIELDS[provider]
    unknown = set(config) - set(fields)
    if unknown:
        raise ValueError(f"config: unknown fields {sorted(unknown)} ({provider} has {list(fields)})")
    missing = [f for f in fields if not config.get(f)]
    if missing:
        raise ValueError(f"config: {provider} needs {missing}")
    if any(len(v) > 2000 for v in config.values()):
        raise ValueError("config: a field has more than 2000 characters")
    stored = {f: config[f] for f in fields}
    apprise_url(provider, stored)  # raises for what apprise would not take as the provider's
    return stored


def apprise_url(provider: str, config: dict[str, str]) -> str:
    """The apprise URL of a checked config (ValueError when it is not the provider's)."""
    if provider in OFFICIAL:
        url = config["webhook_url"]
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or not _official(provider, parts.hostname):
            hosts = ", ".join(OFFICIAL[provider])
            raise ValueError(f"config.webhook_url: an https URL on {provider}'s own hosts ({hosts})")
        if parts.username or parts.password:
            raise ValueError("config.webhook_url: no user or password in the URL")
        target = url
    elif provider == "telegram":
        if not _BOT_TOKEN.match(config["bot_token"]):
            raise ValueError("config.bot_token: a Telegram bot token (<digits>:<token>)")
        if not _CHAT_ID.match(config["chat_id"]):
            raise ValueError("config.chat_id: a Telegram chat id (a number) or @channel name")
        target = f"tgram://{config['bot_token']}/{config['chat_id']}/"
    else:
        parts = urlsplit(config["homeserver_url"])
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ValueError("config.homeserver_url: an http(s) URL of the homeserver")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("config.homeserver_url: the homeserver's address alone (no path or query)")
        if not _ACCESS_TOKEN.match(config["access_token"]):
            raise ValueError("config.access_token: a Matrix access token")
        if not _ROOM.match(config["room_id"]):
            raise ValueError("config.room_id: a Matrix room id (!id:server) or alias (#alias:server)")
        scheme = "matrixs" if parts.scheme == "https" else "matrix"
        target = (
            f"{scheme}://{quote(config['access_token'], safe='')}@{parts.netloc}/"
            f"{quote(config['room_id'], safe='')}"
        )
    plugin = apprise.Apprise.instantiate(target)
    if plugin is None or type(plugin).__name__ != _PLUGINS[provider]:
        raise ValueError(f"config: not a {provider} address apprise can send to")
    return target


async def check_host(provider: str, config: dict[str, str], guard: _ssrf.AddressGuard) -> None:
    """Refuse (ValueError) a tenant-chosen host the control plane must not reach (Matrix's homeserver;
    the other providers' hosts are the services' own)."""
    if provider != "matrix":
        return
    parts = urlsplit(config["homeserver_url"])
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        await _ssrf.GuardedBackend(guard).address(parts.hostname or "", port)
    except httpcore.ConnectError as exc:
        raise ValueError(f"config.homeserver_url: {exc}") from None


def message(body: str) -> tuple[str, str]:
    """The title and text a person reads for the event whose channel payload is `body`."""
    event: dict[str, Any] = json.loads(body)
    resource, actor = event.get("resource") or {}, event.get("actor") or {}
    title = f"Wrenn: {event.get('event')}"
    lines = [
        f"{event.get('event')}: {resource.get('type')} {resource.get('id') or ''}".rstrip(),
        f"team {event.get('team_id')}, by {actor.get('name') or actor.get('type')}",
        f"at {event.get('timestamp')}",
    ]
    return title, "\n".join(lines)


async def send(
    provider: str, config: dict[str, str], body: str, guard: _ssrf.AddressGuard, timeout_s: float
) -> tuple[bool, str]:
    """Send the event (its channel payload `body`) to the chat; (accepted, what went wrong)."""
    try:
        target = apprise_url(provider, config)
        await check_host(provider, config, guard)
    except ValueError as exc:
        return False, str(exc)
    title, text = message(body)

    def notify() -> bool:
        asset = apprise.AppriseAsset(http_redirects=False)
        plugin = apprise.Apprise.instantiate(target, asset=asset)
        if plugin is None:
            return False
        plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout_s
        return bool(plugin.notify(body=text, title=title))

    started = time.monotonic()
    try:
        ok = await asyncio.wait_for(asyncio.to_thread(notify), timeout_s * 4)
    except TimeoutError:
        return False, f"{provider} did not answer in {time.monotonic() - started:.0f} s"
    return ok, "" if ok else f"{provider} did not accept the message"
