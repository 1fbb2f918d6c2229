"""Passwords (argon2), API keys (random, stored as SHA-256) and user JWTs (HS256)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from wrenn._shared.private import create_private, private_dir

log = logging.getLogger("wrenn.controlplane")

API_KEY_PREFIX = "wrn_"
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


#: A valid hash to verify against when the user does not exist, so that a login's timing does not
#: reveal whether an email is registered.
DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


#: Keys in E2B's shape (`e2b_` and 40 lower-case hex digits), for SDK releases that refuse any other
#: (2.45, for one): with such a key a program written for E2B runs unchanged but for its key and URL.
E2B_KEY_PREFIX = "e2b_"
KEY_PREFIXES = (API_KEY_PREFIX, E2B_KEY_PREFIX)


def new_api_key(e2b_shape: bool = False) -> tuple[str, str, str]:
    """(the key to show once, its hash to store, its displayable prefix): `wrn_` and 128 random bits in
    hex, or with `e2b_shape` `e2b_` and 160 (E2B's length)."""
    prefix = E2B_KEY_PREFIX if e2b_shape else API_KEY_PREFIX
    key = prefix + secrets.token_hex(20 if e2b_shape else 16)
    return key, hash_api_key(key), key[: len(prefix) + 6]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_or_create_secret(configured: str, data_dir: Path) -> str:
    """The JWT secret: the configured one, else the one stored under data_dir, else a new one stored
    there (mode 0600). Its value is never logged."""
    if configured:
        if len(configured) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters")
        return configured
    path = private_dir(data_dir) / "jwt-secret"
    if create_private(path, secrets.token_urlsafe(48)):
        log.info("generated a JWT secret", extra={"path": str(path)})
    return path.read_text().strip()


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    team_id: str
    role: str
    email: str
    #: The user's token generation when issued: a token of an older one is refused (revoked).
    generation: int = 0
    #: The token's own id (set by `verify`), for signing out one session.
    jti: str = ""
    #: When it expires (unix seconds, set by `verify`).
    exp: int = 0


class Tokens:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self._ttl_s = ttl_s

    def derive(self, purpose: bytes) -> bytes:
        """A key of its own for `purpose` (signed upload URLs), derived from the secret."""
        return hmac.new(self._secret.encode(), purpose, hashlib.sha256).digest()

    def issue(self, claims: Claims) -> str:
        now = int(time.time())
        payload = {
            "sub": claims.user_id,
            "team_id": claims.team_id,
            "role": claims.role,
            "email": claims.email,
            "typ": "user",
            "gen": claims.generation,
            "jti": secrets.token_hex(16),
            "iat": now,
            "exp": now + self._ttl_s,
        }
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def issue_host(self, host_id: str, ttl_s: int) -> str:
        """A host JWT (`typ: host`): only the host routes accept it, and user routes refuse it."""
        now = int(time.time())
        payload = {"sub": host_id, "host_id": host_id, "typ": "host", "iat": now, "exp": now + ttl_s}
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def verify_host(self, token: str) -> str | None:
        """The host id of a valid host JWT, else None."""
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "host_id"]}
            )
        except jwt.PyJWTError:
            return None
        if payload.get("typ") != "host":
            return None
        return str(payload["host_id"])

    def is_ours(self, token: str) -> bool:
        """Whether `token` is a JWT this control plane signed (a user's or a host's), expired or not."""
        try:
            jwt.decode(token, self._secret, algorithms=["HS256"], options={"verify_exp": False})
        except jwt.PyJWTError:
            return False
        return True

    def verify(self, token: str) -> Claims | None:
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.PyJWTError:
            return None
        if payload.get("typ") != "user":
            return None
        generation = payload.get("gen", 0)
        return Claims(
            payload["sub"],
            payload.get("team_id", ""),
            payload.get("role", ""),
            payload.get("email", ""),
            generation=generation if isinstance(generation, int) else -1,
            jti=str(payload.get("jti", "")),
            exp=int(payload["exp"]),
        )
