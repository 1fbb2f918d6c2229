"""The egress policy lives in `wrenn._shared.egress` (the control plane validates with the same parser);
the agent's network code imports it from here."""

from __future__ import annotations

from wrenn._shared.egress import (
    CLOSED,
    HTTP_PORT,
    HTTPS_PORT,
    OPEN,
    SMTP_PORT,
    EgressPolicy,
    PolicyError,
    Rule,
    normalize_name,
    parse,
)

__all__ = [
    "CLOSED",
    "HTTPS_PORT",
    "HTTP_PORT",
    "OPEN",
    "SMTP_PORT",
    "EgressPolicy",
    "PolicyError",
    "Rule",
    "normalize_name",
    "parse",
]
