"""Seed-compatible module name: `from wrenn.client import WrennClient, AsyncWrennClient`."""

from wrenn.sdk._client import AsyncWrennClient, WrennClient

__all__ = ["AsyncWrennClient", "WrennClient"]
