"""Seed-compatible module name: `from wrenn.exceptions import WrennError, WrennNotFoundError, ...`."""

from wrenn.sdk._exceptions import (
    WrennAgentError,
    WrennAuthenticationError,
    WrennConflictError,
    WrennError,
    WrennForbiddenError,
    WrennHostHasCapsulesError,
    WrennHostUnavailableError,
    WrennInternalError,
    WrennNotFoundError,
    WrennRateLimitError,
    WrennTooLargeError,
    WrennValidationError,
)

#: The seed's older name.
WrennHostHasSandboxesError = WrennHostHasCapsulesError

__all__ = [
    "WrennAgentError",
    "WrennAuthenticationError",
    "WrennConflictError",
    "WrennError",
    "WrennForbiddenError",
    "WrennHostHasCapsulesError",
    "WrennHostHasSandboxesError",
    "WrennHostUnavailableError",
    "WrennInternalError",
    "WrennNotFoundError",
    "WrennRateLimitError",
    "WrennTooLargeError",
    "WrennValidationError",
]
