"""Seed-compatible module name: `from wrenn.capsule import Capsule`."""

from wrenn.sdk._capsule import AsyncCapsule, Capsule

__all__ = ["AsyncCapsule", "Capsule"]
