"""Spine input: Parquet, CSV, pandas or Arrow, read in bounded chunks; timestamps to UTC epoch ms.

Timestamp rules (DESIGN: "Timezones normalise to UTC"): integers are epoch milliseconds; naive
datetimes are UTC; zone-aware datetimes (any zone, any unit) are converted to UTC; strings are
parsed as ISO-8601 (an offset in the string is honoured, none means UTC). Sub-millisecond
precision is floored to the millisecond, the unit every tile and event time uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.errors import SpineError

__all__ = ["SpineSource", "open_spine", "timestamps_ms", "entity_ids"]

_UNIT_PER_MS = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}


class SpineSource:
    """A spine that yields Arrow tables of at most ``chunk_rows`` rows, in spine order."""

    def __init__(self, spine: Any, text_columns: Sequence[str] = ()) -> None:
        """``text_columns``: read as strings from CSV, never inferred (entity ids: "00123" is not 123)."""
        self._table: pa.Table | None = None
        self._parquet: Any = None
        if isinstance(spine, (str, Path)):
            path = Path(spine)
            if not path.exists():
                raise SpineError(f"spine file {path} does not exist: pass a Parquet or CSV file")
            if path.suffix.lower() in (".csv", ".tsv"):
                import pyarrow.csv as pcsv
                opts = pcsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                conv = pcsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})
                try:
                    self._table = pcsv.read_csv(path, parse_options=opts, convert_options=conv)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise SpineError(f"spine {path} is not a readable CSV ({str(exc).splitlines()[0]}): "
                                     "fix the file (a header row, the same number of fields on every row)") from exc
            else:
                import pyarrow.parquet as pq
                try:
                    self._parquet = pq.ParquetFile(path)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise SpineError(f"spine {path} is not a Parquet file ({str(exc).splitlines()[0]}); use .csv "
                                     "for CSV, and one file rather than a dataset directory") from exc
        elif isinstance(spine, pa.Table):
            self._table = spine
        elif isinstance(spine, pa.RecordBatch):
            self._table = pa.Table.from_batches([spine])
        elif type(spine).__name__ == "DataFrame":
            self._table = _from_pandas(spine)
        else:
            raise SpineError(f"spine of type {type(spine).__name__} is not supported: pass a Parquet/CSV path, "
                             "a pandas DataFrame or a pyarrow Table")

    @property
    def schema(self) -> pa.Schema:
        return self._parquet.schema_arrow if self._parquet is not None else self._table.schema  # type: ignore[union-attr]

    @property
    def num_rows(self) -> int:
        return self._parquet.metadata.num_rows if self._parquet is not None else self._table.num_rows  # type: ignore[union-attr]

    def chunks(self, chunk_rows: int) -> Iterator[pa.Table]:
        if self._parquet is not None:
            for batch in self._parquet.iter_batches(batch_size=chunk_rows):
                yield pa.Table.from_batches([batch])
            return
        t = self._table
        assert t is not None
        for start in range(0, t.num_rows, chunk_rows):
            yield t.slice(start, chunk_rows)


    def column_chunks(self, column: str, chunk_rows: int) -> Iterator[pa.ChunkedArray]:
        """One column, chunk by chunk, without reading the others of a Parquet spine."""
        if self._parquet is not None:
            for batch in self._parquet.iter_batches(batch_size=chunk_rows, columns=[column]):
                yield pa.chunked_array([batch.column(0)])
            return
        for chunk in self.chunks(chunk_rows):
            yield chunk.column(column)


def open_spine(spine: Any, required: Sequence[str], text_columns: Sequence[str] = ()) -> SpineSource:
    src = SpineSource(spine, text_columns)
    names = src.schema.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpineError(f"spine has the column {twice[0]!r} twice: rename one")
    missing = [c for c in required if c not in src.schema.names]
    if missing:
        raise SpineError(f"spine has no column {missing[0]!r} (columns: {', '.join(src.schema.names)}); "
                         f"add it or pass --timestamp-column / rename the entity key column")
    return src


def _from_pandas(df: Any) -> pa.Table:
    import pandas as pd

    df = df.copy()
    for c in df.columns:  # python datetimes with mixed zones do not convert to Arrow as is
        if _is_py_datetime(df[c]):
            df[c] = pd.to_datetime(df[c], utc=True)
    return pa.Table.from_pandas(df, preserve_index=False)


def _is_py_datetime(s: Any) -> bool:
    from datetime import datetime
    return s.dtype == object and s.notna().any() and isinstance(s.dropna().iloc[0], datetime)


def timestamps_ms(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """Epoch-ms int64 of a spine timestamp column (see the module doc for the rules)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise SpineError(f"spine column {name!r} has {col.null_count} null timestamps; drop or fill those rows")
    t = col.type
    if pa.types.is_integer(t):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_timestamp(t):  # stored as UTC instants whatever the zone; naive = UTC
        raw = col.cast(pa.int64()).to_numpy()
        per = _UNIT_PER_MS[t.unit]
        return raw * 1000 if per is None else raw // per
    if pa.types.is_date(t):
        return col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86_400_000
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        import pandas as pd
        try:
            parsed = pd.to_datetime(pd.Series(col.to_pylist()), utc=True, format="ISO8601")  # never 01/02 as US
        except (ValueError, TypeError) as exc:
            raise SpineError(f"spine column {name!r} holds strings that are not ISO-8601 timestamps "
                             f"({str(exc).splitlines()[0].split(', at position')[0]}); "
                             "use e.g. 2026-01-01T10:00:00+01:00 or epoch milliseconds") from exc
        return pa.array(parsed).cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy() // 1_000_000
    raise SpineError(f"spine column {name!r} has type {t}, not a timestamp: use a datetime, an ISO-8601 string "
                     "or epoch milliseconds")


def entity_ids(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Entity ids as strings (Flink casts entity keys to STRING); nulls stay null (no data)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
