"""Avro records on the wire in Confluent framing: ``0x00 | schema id (4 bytes, big-endian) | body``.

The codec works on plain Avro values: logical types are ignored, so a ``timestamp-millis``
field is an ``int`` of ms UTC in and out (never a ``datetime``). Window maths, parity checks
and vectorised decoding all want integers, and a round trip must return what went in.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError
from fastavro.validation import validate as avro_validate

from schemas.errors import DecodeError, EncodeError, SchemaError, UnknownSchemaIdError
from schemas.fastread import FastReadError, compile_reader
from schemas.store import SchemaStore, canonical_json, validate_schema

__all__ = ["AvroCodec", "load_schema", "builtin_schema_names", "MAGIC_BYTE", "HEADER_SIZE"]

MAGIC_BYTE = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")
_AVRO_DIR = Path(__file__).parent / "avro"
# How long an id the store did not know stays "unknown" before we ask the store again; stops
# a stream of records with a foreign id from costing one registry round trip each.
_UNKNOWN_ID_RETRY_S = 30.0


def builtin_schema_names() -> list[str]:
    """Names accepted by :func:`load_schema` for the schemas shipped in ``schemas/avro``."""
    return sorted(p.stem for p in _AVRO_DIR.glob("*.avsc"))


def load_schema(path_or_name: str | Path) -> dict:
    """Load a schema by built-in name (``"tile"``) or from an ``.avsc`` file path.

    Raises :class:`SchemaError` naming the file when it is missing, not JSON or not Avro.
    """
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or "/" in text or "\\" in text or text.endswith(".avsc"):
        path = Path(path_or_name)
    else:
        path = _AVRO_DIR / f"{text}.avsc"
        if not path.is_file():
            raise SchemaError(
                f"no built-in schema named {text!r} (built-ins: "
                f"{', '.join(builtin_schema_names())}); pass a path to load an .avsc file"
            )
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such schema file") from None
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: top level must be a JSON object (an Avro record)")
    validate_schema(schema, str(path))
    return schema


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without ``logicalType`` (see module docstring); defaults are data."""
    if isinstance(node, list):
        return [_strip_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {
            k: (v if k == "default" else _strip_logical_types(v))
            for k, v in node.items()
            if k != "logicalType"
        }
    return node


@lru_cache(maxsize=512)
def _fast_reader(canon: str) -> Any:
    return compile_reader(json.loads(canon))


@lru_cache(maxsize=512)
def _parse_canonical(canon: str) -> Any:
    return fastavro.parse_schema(json.loads(canon))


def _parse(schema: Any, where: str) -> tuple[str, Any]:
    """(canonical json, fastavro-parsed schema) of the plain-Avro form; parsed once per schema."""
    canon = canonical_json(_strip_logical_types(schema))
    try:
        return canon, _parse_canonical(canon)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"{where}: not a valid Avro schema: {exc}") from exc


def _short_field(field: str | None, parsed: Any) -> str | None:
    """``ns.Record.field`` -> ``Record.field``: the namespace adds nothing to the message."""
    name = parsed.get("name", "") if isinstance(parsed, dict) else ""
    if field and "." in name and field.startswith(name.rsplit(".", 1)[0] + "."):
        return field[len(name.rsplit(".", 1)[0]) + 1 :]
    return field


class AvroCodec:
    """Encodes and decodes one schema; decodes data written with any schema the store knows.

    ``validate`` checks every record before writing: fastavro's writer silently truncates a
    float written to a long and writes booleans as numbers. Turn it off only on hot paths
    whose records are built by code, not read from users.
    """

    def __init__(
        self,
        schema: dict,
        schema_id: int,
        store: SchemaStore | None = None,
        *,
        validate: bool = True,
    ) -> None:
        if not 0 <= schema_id < 2**32:
            raise SchemaError(f"schema id {schema_id} does not fit the 4-byte wire header")
        self.schema = schema
        self.schema_id = schema_id
        self.store = store
        self._validate = validate
        self._canon, self._parsed = _parse(schema, f"schema for id {schema_id}")
        self._fast = _fast_reader(self._canon)  # records of this very schema: see schemas/fastread.py
        self._header = _HEADER.pack(MAGIC_BYTE, schema_id)
        # writer id -> parsed writer schema, or None when it equals ours (no resolution needed)
        self._writers: dict[int, Any] = {schema_id: None}
        self._unknown: dict[int, float] = {}

    @property
    def canonical(self) -> str:
        """``canonical_json`` of the plain-Avro schema (logical types stripped): equal strings, same bytes."""
        return self._canon

    @property
    def header(self) -> bytes:
        """The 5-byte Confluent frame every record of this schema id starts with."""
        return self._header

    @classmethod
    def for_subject(
        cls, store: SchemaStore, subject: str, schema: dict | str | Path
    ) -> AvroCodec:
        """Register ``schema`` under ``subject`` (idempotent) and return a codec for it."""
        if not isinstance(schema, dict):
            schema = load_schema(schema)
        return cls(schema, store.register(subject, schema), store)

    def encode(self, record: dict) -> bytes:
        """Framed bytes for ``record``; raises :class:`EncodeError` if it does not fit."""
        if self._validate:
            self._check(record)
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self._parsed, record)
        except Exception as exc:  # writer errors are TypeError/ValueError/AttributeError/...
            if not self._validate:
                self._check(record)  # a message naming the field beats the writer's
            raise EncodeError(f"cannot encode record for schema id {self.schema_id}: {exc}") from exc
        return buf.getvalue()

    def encode_many(self, records: Iterable[dict]) -> list[bytes]:
        return [self.encode(r) for r in records]

    def decode(self, data: bytes) -> dict:
        """The record in ``data``; raises :class:`DecodeError` (with ``.raw``) for bad bytes.

        A record written with another schema id is read with that writer schema (from the
        store) and resolved to this codec's schema, so evolved producers keep working.
        """
        raw = b"" if data is None else bytes(data)
        if not raw:
            raise DecodeError("empty", "no bytes (null or empty value)", raw)
        if raw[0] != MAGIC_BYTE:
            raise DecodeError(
                "bad_magic", f"first byte is 0x{raw[0]:02x}, not the magic byte 0x00", raw
            )
        if len(raw) < HEADER_SIZE:
            raise DecodeError(
                "truncated", f"{len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header", raw
            )
        schema_id = _HEADER.unpack_from(raw)[1]
        writer = self._writer_for(schema_id, raw)
        if writer is None and self._fast is not None:
            return self._decode_fast(raw, schema_id)
        buf = io.BytesIO(raw)
        buf.seek(HEADER_SIZE)
        try:
            if writer is None:
                value = fastavro.schemaless_reader(buf, self._parsed, None)
            else:
                value = fastavro.schemaless_reader(buf, writer, self._parsed)
        except Exception as exc:  # any reader failure on bad bytes is a data error
            # The reader hitting the end of the buffer means the body was cut short.
            ran_out = buf.tell() >= len(raw) and isinstance(exc, (EOFError, IndexError))
            raise DecodeError(
                "truncated" if ran_out else "avro_error",
                f"schema id {schema_id}: {type(exc).__name__}: {exc}",
                raw,
            ) from exc
        extra = len(raw) - buf.tell()
        if extra:
            raise DecodeError(
                "avro_error", f"schema id {schema_id}: {extra} trailing bytes after the record", raw
            )
        return value

    def _decode_fast(self, raw: bytes, schema_id: int) -> dict:
        try:
            value, end = self._fast(raw, HEADER_SIZE)  # type: ignore[misc]
        except (IndexError, struct.error) as exc:
            raise DecodeError("truncated", f"schema id {schema_id}: the record ends early ({exc})", raw) from exc
        except (UnicodeDecodeError, FastReadError) as exc:
            raise DecodeError("avro_error", f"schema id {schema_id}: {type(exc).__name__}: {exc}", raw) from exc
        if end != len(raw):
            raise DecodeError(
                "avro_error", f"schema id {schema_id}: {len(raw) - end} trailing bytes after the record", raw
            )
        return value

    def decode_many(
        self, datas: Sequence[bytes]
    ) -> tuple[list[dict | None], list[DecodeError | None]]:
        """Decode a batch; position i holds either a value or its error, never both."""
        values: list[dict | None] = []
        errors: list[DecodeError | None] = []
        for data in datas:
            try:
                values.append(self.decode(data))
                errors.append(None)
            except DecodeError as exc:
                values.append(None)
                errors.append(exc)
        return values, errors

    def _writer_for(self, schema_id: int, raw: bytes) -> Any:
        try:
            return self._writers[schema_id]
        except KeyError:
            pass
        if self.store is None:
            raise DecodeError(
                "unknown_schema_id",
                f"schema id {schema_id} is not this codec's ({self.schema_id}) "
                "and the codec has no schema store",
                raw,
            )
        retry_at = self._unknown.get(schema_id)
        if retry_at is not None and time.monotonic() < retry_at:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not registered", raw)
        try:
            # SchemaStoreError other than "unknown id" (e.g. registry down) propagates on
            # purpose: an outage is not bad data and must not dead-letter good records.
            schema = self.store.get_by_id(schema_id)
        except UnknownSchemaIdError as exc:
            self._unknown[schema_id] = time.monotonic() + _UNKNOWN_ID_RETRY_S
            raise DecodeError("unknown_schema_id", str(exc), raw) from exc
        canon, parsed = _parse(schema, f"stored schema id {schema_id}")
        self._writers[schema_id] = None if canon == self._canon else parsed
        self._unknown.pop(schema_id, None)
        return self._writers[schema_id]

    def _check(self, record: Any) -> None:
        try:
            avro_validate(record, self._parsed, raise_errors=True)
        except ValidationError as exc:
            first = exc.errors[0] if exc.errors else None
            field = _short_field(getattr(first, "field", None) or None, self._parsed)
            if first is not None:
                expected = first.schema
                if isinstance(expected, dict) and set(expected) == {"type"}:
                    expected = expected["type"]
                msg = f"field {field or '<record>'} is {first.datum!r}, expected {expected}"
            else:
                msg = str(exc)
            raise EncodeError(f"record does not match schema id {self.schema_id}: {msg}",
                              field=field) from exc
        except Exception as exc:  # validate itself can trip on exotic inputs
            raise EncodeError(f"record does not match schema id {self.schema_id}: {exc}") from exc
