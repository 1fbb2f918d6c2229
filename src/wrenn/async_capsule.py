"""Seed-compatible module name: `from wrenn.async_capsule import AsyncCapsule`."""

from wrenn.sdk._capsule import AsyncCapsule

__all__ = ["AsyncCapsule"]
