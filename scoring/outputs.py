"""Vectorised encoders for the consumer's output topics (Confluent-framed Avro).

``Prediction`` ends with two fields that are the same for every row of a micro-batch (the
per-stage ``latency`` map and ``produced_ms``). Avro writes a record as its fields back to back,
so a message is ``ColumnarCodec(flat prefix)`` bytes followed by one tail encoded once per batch
with fastavro: no per-record dict, byte-identical to ``AvroCodec.encode`` (tested).
``ShadowPrediction`` is flat: ``ColumnarCodec`` alone. Dead letters are rare: ``AvroCodec``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro
import pyarrow as pa

from schemas import AvroCodec, ColumnarCodec, ColumnarUnsupported
from scoring.errors import ScoreConfigError

__all__ = ["SplitEncoder", "dead_letter"]


class SplitEncoder:
    """Encodes rows whose schema is a flat prefix plus fields constant per batch."""

    def __init__(self, codec: AvroCodec, constant_fields: Sequence[str] = ()) -> None:
        schema = codec.schema
        names = [f["name"] for f in schema["fields"]]
        k = len(names) - len(constant_fields)
        if tuple(names[k:]) != tuple(constant_fields):
            raise ScoreConfigError(f"schema {schema.get('name')}: {list(constant_fields)} must be its last "
                                   "fields: keep batch-constant fields at the end of the schema")
        prefix = dict(schema, fields=schema["fields"][:k])
        try:
            self._prefix = ColumnarCodec(prefix, codec.schema_id)
        except ColumnarUnsupported as exc:
            raise ScoreConfigError(f"schema {schema.get('name')}: {exc}") from exc
        self._tail = fastavro.parse_schema(
            {"type": "record", "name": f"_{schema['name']}Tail", "fields": schema["fields"][k:]}) if constant_fields else None
        self.schema_id = codec.schema_id

    def encode(self, columns: Mapping[str, Any], constants: Mapping[str, Any] | None = None) -> list[bytes]:
        """One message per row; ``columns``: field -> Arrow/NumPy/list column (prefix fields)."""
        # explicit types from the schema: no type inference per batch, and a wrong column fails here
        table = pa.table({f.name: v if isinstance(v := columns[f.name], (pa.Array, pa.ChunkedArray))
                          else pa.array(v, f.type) for f in self._prefix.arrow_schema})
        msgs = self._prefix.encode_table(table)
        if self._tail is None:
            return msgs
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._tail, dict(constants or {}))
        tail = buf.getvalue()
        return [m + tail for m in msgs]


def dead_letter(codec: AvroCodec, msg: Any, reason: str, error: str, stage: str) -> bytes:
    """A DeadLetter record for one consumed ``confluent_kafka.Message`` (original bytes kept)."""
    return codec.encode({
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "key": msg.key(), "value": msg.value() or b"", "reason": reason, "error": error[:2000],
        "failed_ms": int(time.time() * 1000), "stage": stage,
    })
