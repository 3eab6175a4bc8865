"""The one error root. Every package's ``errors.py`` subclasses :class:`HeadwaterError`.

The CLI prints ``str(exc)`` of a HeadwaterError as one line and exits 2, so messages must name
the problem *and* the fix.
"""

from __future__ import annotations

__all__ = ["HeadwaterError", "ConfigError", "StackError"]


class HeadwaterError(Exception):
    """Root of every error Headwater raises on purpose."""


class ConfigError(HeadwaterError):
    """A config file or a definition is invalid."""


class StackError(HeadwaterError):
    """The local stack (Kafka, Redis, connector jars) cannot be fetched, started or reached."""
