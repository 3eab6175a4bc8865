"""Errors of the ``schemas`` package, all under :class:`headwater.errors.HeadwaterError`."""

from __future__ import annotations

from typing import Literal, get_args

from headwater.errors import HeadwaterError

__all__ = [
    "SchemaError",
    "SchemaStoreError",
    "UnknownSchemaIdError",
    "EncodeError",
    "DecodeError",
    "DecodeReason",
    "DECODE_REASONS",
]

#: Machine-readable decode failure codes; they go into the dead-letter ``reason`` field.
DecodeReason = Literal["empty", "bad_magic", "truncated", "unknown_schema_id", "avro_error"]
DECODE_REASONS: tuple[str, ...] = get_args(DecodeReason)


class SchemaError(HeadwaterError):
    """An Avro schema file is missing, not JSON, or not a valid Avro schema."""


class SchemaStoreError(HeadwaterError):
    """The schema store (``schema_registry.json`` or a Schema Registry) cannot be used."""


class UnknownSchemaIdError(SchemaStoreError):
    """No schema is registered under this id.

    Separate from :class:`SchemaStoreError` so the codec can dead-letter records with a foreign
    id while an unreachable registry (a transient outage, not bad data) still propagates.
    """

    def __init__(self, schema_id: int, where: str) -> None:
        super().__init__(f"no schema with id {schema_id} in {where}")
        self.schema_id = schema_id
        self._where = where

    def __reduce__(self):  # type: ignore[override]  # keep picklable across processes
        return (type(self), (self.schema_id, self._where))


class EncodeError(HeadwaterError):
    """A record does not match the codec's schema; ``field`` names the offending field if known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (str(self), self.field))


class DecodeError(HeadwaterError):
    """Bytes that cannot be decoded; keeps ``raw`` so the consumer can dead-letter them as-is."""

    def __init__(self, reason: DecodeReason, message: str, raw: bytes) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: DecodeReason = reason
        self.message = message
        self.raw = raw

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (self.reason, self.message, self.raw))
