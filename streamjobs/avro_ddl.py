"""Avro schema -> Flink SQL column list, so tables read and write exactly the ``.avsc`` layout.

Flink's Avro format has no field names on the wire; binary compatibility comes from the same
field order, types and nullability. Nullable means a ``["null", T]`` union (null first, as
Flink writes it); everything else is declared ``NOT NULL``. Timestamps stay epoch-ms BIGINTs:
the compiler derives TIMESTAMP_LTZ columns from them where event time is needed.
"""

from __future__ import annotations

from headwater.errors import ConfigError

__all__ = ["flink_type", "ddl_columns"]

_PRIMITIVE = {"string": "STRING", "long": "BIGINT", "int": "INT", "double": "DOUBLE",
              "float": "FLOAT", "boolean": "BOOLEAN", "bytes": "BYTES"}


def flink_type(avro_type, where: str = "") -> str:
    """The Flink SQL type for one Avro type, with nullability."""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(avro_type) != 2 or len(branches) != 1 or avro_type[0] != "null":
            raise ConfigError(f"field {where}: only [\"null\", T] unions map to Flink columns; "
                              f"got {avro_type}: reorder to put null first or drop the union")
        return _base(branches[0], where)
    return _base(avro_type, where) + " NOT NULL"


def _base(t, where: str) -> str:
    if isinstance(t, str):
        if t in _PRIMITIVE:
            return _PRIMITIVE[t]
        raise ConfigError(f"field {where}: Avro type {t!r} has no Flink column mapping here")
    if isinstance(t, dict):
        kind = t.get("type")
        if kind in _PRIMITIVE:
            return _PRIMITIVE[kind]  # logical types (timestamp-millis ...) keep their base type
        if kind == "array":
            return f"ARRAY<{flink_type(t['items'], where + '[]')}>"
        if kind == "map":
            return f"MAP<STRING NOT NULL, {flink_type(t['values'], where + '{}')}>"
    raise ConfigError(f"field {where}: Avro type {t!r} has no Flink column mapping here")


def ddl_columns(schema: dict) -> list[tuple[str, str]]:
    """``[(column, flink_type)]`` in schema order."""
    if schema.get("type") != "record":
        raise ConfigError(f"schema {schema.get('name')!r} must be an Avro record to become a table")
    return [(f["name"], flink_type(f["type"], f["name"])) for f in schema["fields"]]
