"""Seed-compatible module name (the seed SDK 0.3's `wrenn.code_runner`): `wrenn.code_interpreter`."""

from wrenn.code_interpreter import *  # noqa: F403
from wrenn.code_interpreter import __all__ as __all__
