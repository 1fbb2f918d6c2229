"""The control plane's database: models, engine and migrations."""

from . import _states as states
from ._engine import make_engine, migrate, private_sqlite_file, sessions
from ._models import (
    ApiKey,
    AuditLog,
    Base,
    BootstrapToken,
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
    "BootstrapToken",
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
    "private_sqlite_file",
    "sessions",
    "states",
    "utcnow",
]
