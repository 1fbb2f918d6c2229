"""The one way the control plane writes a time into a response: RFC 3339 in UTC with a `Z`
(`2026-12-05T06:12:31.324899Z`), whatever the database handed back. Response models type their times as
`Timestamp`; routes that build their JSON by hand call `rfc3339`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def rfc3339(value: datetime) -> str:
    """`value` in UTC, RFC 3339 with `Z` (a naive value is taken as UTC, as SQLite stores it)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


#: A datetime field of a response model, serialised by `rfc3339`.
Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
