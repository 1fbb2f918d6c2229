"""Seed-compatible module name: `from wrenn.files import Files`."""

from wrenn.sdk._files import AsyncFiles, AsyncWatchHandle, Files, WatchHandle
from wrenn.sdk._models import FileEntry, FilesystemEvent, FilesystemEventType

__all__ = [
    "AsyncFiles",
    "AsyncWatchHandle",
    "FileEntry",
    "Files",
    "FilesystemEvent",
    "FilesystemEventType",
    "WatchHandle",
]
