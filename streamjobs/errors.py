"""Errors of the streamjobs package: definitions, windows, IR maths.

Every message is one line that names the offending view/feature/window and says the fix, because
the CLI prints ``str(exc)`` verbatim.
"""

from __future__ import annotations

from headwater.errors import ConfigError, HeadwaterError

__all__ = ["StreamJobsError", "DefinitionError", "UnknownOpError", "IRError"]


class StreamJobsError(HeadwaterError):
    """Root of every error raised on purpose by ``streamjobs``."""


class DefinitionError(StreamJobsError, ConfigError):
    """A feature definition (view, aggregation, window, hop, ladder, duration) is invalid."""


class UnknownOpError(DefinitionError):
    """An aggregation names an op that the registry in ``streamjobs.ir`` does not define."""


class IRError(StreamJobsError):
    """IR values that cannot be merged, encoded or decoded (a bug or corrupt tile, not a definition)."""
