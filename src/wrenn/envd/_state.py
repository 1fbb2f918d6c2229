"""What /init sets: the access token, default user and workdir, and the sandbox's environment."""

from __future__ import annotations

import hashlib
import hmac
import time
from base64 import b64encode
from dataclasses import dataclass, field

from . import _users
from ._users import User

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(slots=True)
class EnvdState:
    default_user: str
    access_token: str | None = None
    default_workdir: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)

    # --- users -----------------------------------------------------------------------------------

    def user(self, name: str | None) -> User:
        """The named user, or the default one. Raises UnknownUserError."""
        return _users.lookup(name or self.default_user)

    def process_env(self, user: User, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A process's environment: login basics, then the sandbox's env vars, then the request's."""
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell,
            "LANG": "C.UTF-8",
        }
        env.update(self.env_vars)
        env.update(extra or {})
        return env

    def workdir(self, user: User) -> str:
        return self.default_workdir or user.home

    # --- authentication --------------------------------------------------------------------------

    def token_ok(self, presented: str | None) -> bool:
        """True when no token is set, or `presented` equals it (compared in constant time)."""
        if self.access_token is None:
            return True
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.access_token.encode())

    def signature_ok(
        self, path: str, operation: str, username: str | None, signature: str | None, expiration: str | None
    ) -> tuple[bool, str]:
        """Check a signed /files URL. Returns (ok, reason)."""
        if self.access_token is None:
            return True, ""
        if not signature:
            return False, "missing access token or signature"
        payload = f"{path}:{operation}:{username or ''}:{self.access_token}"
        expires: int | None = None
        if expiration:
            try:
                expires = int(expiration)
            except ValueError:
                return False, "signature_expiration must be a unix timestamp"
            payload += f":{expires}"
        digest = b64encode(hashlib.sha256(payload.encode()).digest()).decode().rstrip("=")
        if not hmac.compare_digest(signature.encode(), f"v1_{digest}".encode()):
            return False, "invalid signature"
        if expires is not None and expires < time.time():  # only a genuine signature learns this
            return False, "signature is already expired"  # E2B's envd's words, which its SDK's tests read
        return True, ""
