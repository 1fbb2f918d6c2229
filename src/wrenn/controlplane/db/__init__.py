"""The control plane's database: models, engine and migrations."""

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

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "Capsule",
    "Host",
    "HostRefreshToken",
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
    "utcnow",
]
