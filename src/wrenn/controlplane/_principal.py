"""Who is asking: an API key or a user (from a JWT), acting for one team."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "api_key" | "user"
    team_id: str
    actor_id: str
    actor_name: str
    user_id: str | None = None
    role: str = "member"
    #: A user JWT's id and expiry (unix seconds), to sign that one session out.
    token_id: str = ""
    token_expires: int = 0


def audit_fields(caller: Principal) -> dict[str, Any]:
    return {
        "team_id": caller.team_id,
        "actor_type": caller.kind,
        "actor_id": caller.actor_id,
        "actor_name": caller.actor_name,
    }
