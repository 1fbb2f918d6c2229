"""Seed-compatible module name: `from wrenn.pty import PtySession, PtyEvent`."""

from wrenn.sdk._pty import AsyncPtySession, PtyEvent, PtyEventType, PtySession

__all__ = ["AsyncPtySession", "PtyEvent", "PtyEventType", "PtySession"]
