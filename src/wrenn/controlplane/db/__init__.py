"""The control plane's database: models, engine and migrations."""

from . import _states as states
from ._engine import make_engine, migrate, sessions
from ._models import (
    ApiKey,
    AuditLog,
    Base,
    Capsule,
    Host,
    HostRefreshToken,
    HostToken,
    LoginFailure,
    Membership,
    Team,
    Template,
    User,
    as_utc,
    utcnow,
)
from ._states import CapsuleStatus, HostStatus

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "Capsule",
    "CapsuleStatus",
    "Host",
    "HostRefreshToken",
    "HostStatus",
    "HostToken",
    "LoginFailure",
    "Membership",
    "Team",
    "Template",
    "User",
    "as_utc",
    "make_engine",
    "migrate",
    "sessions",
    "states",
    "utcnow",
]
