"""Avro schemas for every Headwater topic, the Confluent-framed wire codec, schema stores and
backward-compatibility checks."""

from schemas.codec import HEADER_SIZE, MAGIC_BYTE, AvroCodec, builtin_schema_names, load_schema
from schemas.compat import check_backward, check_store
from schemas.errors import (
    DECODE_REASONS,
    DecodeError,
    DecodeReason,
    EncodeError,
    SchemaError,
    SchemaStoreError,
    UnknownSchemaIdError,
)
from schemas.store import (
    REGISTRY_FILE,
    FileSchemaStore,
    RegistrySchemaStore,
    SchemaStore,
    open_store,
)
from schemas.columnar import ColumnarCodec, ColumnarUnsupported

__all__ = [
    "AvroCodec",
    "load_schema",
    "builtin_schema_names",
    "MAGIC_BYTE",
    "HEADER_SIZE",
    "SchemaStore",
    "FileSchemaStore",
    "RegistrySchemaStore",
    "open_store",
    "REGISTRY_FILE",
    "check_backward",
    "check_store",
    "SchemaError",
    "SchemaStoreError",
    "UnknownSchemaIdError",
    "EncodeError",
    "DecodeError",
    "DecodeReason",
    "DECODE_REASONS",
    "ColumnarCodec",
    "ColumnarUnsupported",
]
