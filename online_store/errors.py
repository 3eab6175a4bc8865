"""Errors of the online store. Messages are one line naming the problem and the fix (the CLI prints them)."""

from __future__ import annotations

from headwater.errors import HeadwaterError

__all__ = ["OnlineStoreError", "LayoutError", "FetchArgumentError", "StoreUnavailableError", "CorruptTileError"]


class OnlineStoreError(HeadwaterError):
    """Root of every error raised on purpose by ``online_store``."""


class LayoutError(OnlineStoreError):
    """A project, view or entity name that cannot be placed in the Redis key layout."""


class FetchArgumentError(OnlineStoreError, ValueError):
    """``fetch`` called with entity ids that do not fit the requested views."""


class StoreUnavailableError(OnlineStoreError):
    """Redis (or Kafka, for the writer loop) cannot be reached or answered with an error."""


class CorruptTileError(OnlineStoreError):
    """Stored tile bytes that do not match the view's tile encoding (another writer or a bug)."""
