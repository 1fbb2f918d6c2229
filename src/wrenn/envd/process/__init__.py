"""envd's process service: start, attach to, feed and signal processes in the guest."""

from ._manager import ProcessManager
from ._service import ProcessService

__all__ = ["ProcessManager", "ProcessService"]
