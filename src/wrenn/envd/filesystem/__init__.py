"""envd's filesystem service: stat, list, create, move, remove and watch paths in the guest."""

from . import _metadata as file_metadata
from ._entry import entry_info
from ._service import FilesystemService, make_dirs

__all__ = ["FilesystemService", "entry_info", "file_metadata", "make_dirs"]
