"""Errors of the replay package: one line naming the problem and the fix (the CLI prints it)."""

from __future__ import annotations

from headwater.errors import HeadwaterError

__all__ = ["ReplayError", "RangeError"]


class ReplayError(HeadwaterError):
    """Root of every error raised on purpose by ``replay``."""


class RangeError(ReplayError):
    """A replay range (timestamps or offsets) is malformed or outside what the topic holds."""
