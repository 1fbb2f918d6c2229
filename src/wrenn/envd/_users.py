"""Who a request acts as: the Basic-auth user, else the default user set by /init."""

from __future__ import annotations

import base64
import binascii
import os
import pwd
from dataclasses import dataclass


class UnknownUserError(LookupError):
    """The named user does not exist in the guest."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def lookup(name: str) -> User:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUserError(f"user {name!r} does not exist") from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return User(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=entry.pw_dir,
        shell=entry.pw_shell or "/bin/sh",
        groups=groups,
    )


def current_user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def basic_auth_user(header: str | None) -> str | None:
    """The user name of an `Authorization: Basic base64("<user>:")` header (E2B sends no password)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise UnknownUserError("malformed Basic authorization header") from None
    name = decoded.partition(":")[0]
    return name or None
