"""Errors of the backfill package. One line each, naming the problem and the fix (the CLI prints them)."""

from __future__ import annotations

from headwater.errors import HeadwaterError

__all__ = ["BackfillError", "TileLayoutError", "PlanMismatchError", "SpineError", "SourceError"]


class BackfillError(HeadwaterError):
    """Root of every error raised on purpose by ``backfill``."""


class TileLayoutError(BackfillError):
    """A replay output directory that does not hold tiles in the shared Parquet layout."""


class PlanMismatchError(TileLayoutError):
    """Tiles written under another plan (other semantics) than the view's current one."""


class SpineError(BackfillError, ValueError):
    """A spine without the entity key or timestamp columns, or with unparseable timestamps."""


class SourceError(BackfillError, ValueError):
    """Raw source rows (latest-value features without tiles) missing a needed column."""
