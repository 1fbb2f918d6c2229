"""Seed-compatible module name: `from wrenn.models import Capsule, FileEntry, Status, Template`.

`wrenn.models.Capsule` is the data model (the seed's name), not the `wrenn.Capsule` client class.
"""

from wrenn.sdk._models import (
    CapsuleInfo,
    CommandHandle,
    CommandResult,
    FileEntry,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    PtyEvent,
    PtyEventType,
    Status,
    Template,
)

Capsule = CapsuleInfo

__all__ = [
    "Capsule",
    "CapsuleInfo",
    "CommandHandle",
    "CommandResult",
    "FileEntry",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "ProcessInfo",
    "PtyEvent",
    "PtyEventType",
    "Status",
    "Template",
]
