"""Latest-value features straight from raw source rows, without tiles: one DuckDB ASOF JOIN.

For a profile attribute there is nothing to aggregate, so a sort-merge ASOF JOIN of the spine to the
events is the cheapest exact plan (no tiles to build). The visibility rule is the SQL of
``windows.latest_value_sql``: greatest (event_time, partition, offset) with
``event_time < floor(t, tick)``, then ``event_time >= t - ttl`` (inclusive) on the winner.
Rows are filtered like the streaming job filters them: NULL values and NULL keys never win (SQL
``MAX`` ignores NULLs), and late rows (``windows.on_time_sql`` on ``hw_append_ms``) are dropped
when the source carries append times. Without ``hw_partition``/``hw_offset`` ties on event time
break by source row order (a later row wins), like offsets within one partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from backfill.errors import SourceError
from backfill.pit_join import feature_arrow_type
from streamjobs import windows
from streamjobs.plan import Feature, ViewPlan

__all__ = ["PARTITION", "OFFSET", "APPEND_MS", "register_source", "latest_values"]

PARTITION, OFFSET, APPEND_MS = "hw_partition", "hw_offset", "hw_append_ms"
_DUCK = {"int": "BIGINT", "long": "BIGINT", "timestamp": "BIGINT", "float": "DOUBLE", "double": "DOUBLE",
         "string": "VARCHAR", "boolean": "BOOLEAN"}


def register_source(con: Any, name: str, source: Any) -> str:
    """Register a source (Parquet path or glob, CSV path, Arrow table, pandas DataFrame) as a DuckDB view."""
    rel = f"hw_src_{name}"
    if isinstance(source, (str, Path)):
        text = str(source)
        if not any(ch in text for ch in "*?[") and not Path(text).exists():
            raise SourceError(f"source {name!r}: {text} does not exist; pass a Parquet file/glob, CSV or table")
        reader = "read_csv_auto" if text.lower().endswith(".csv") else "read_parquet"
        quoted = "'" + text.replace("'", "''") + "'"
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{rel}" AS SELECT * FROM {reader}({quoted})')
    else:
        if type(source).__name__ == "DataFrame":
            source = pa.Table.from_pandas(source, preserve_index=False)
        if not isinstance(source, pa.Table):
            raise SourceError(f"source {name!r} of type {type(source).__name__}: pass a Parquet path, "
                              "an Arrow table or a pandas DataFrame")
        con.register(f"{rel}_arrow", source)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{rel}" AS SELECT * FROM "{rel}_arrow"')
    return rel


def _columns(con: Any, rel: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f'DESCRIBE "{rel}"').fetchall()}


def latest_values(con: Any, rel: str, view: ViewPlan, features: Sequence[Feature], ids: pa.Array,
                  t: np.ndarray) -> dict[str, pa.Array]:
    """Values of the latest-value ``features`` of ``view`` for rows ``(ids[i], t[i])`` from source ``rel``."""
    cols = _columns(con, rel)
    need = [view.entity_key, view.event_time_field, *{f.column for f in features}]
    missing = [c for c in need if c not in cols]
    if missing:
        raise SourceError(f"source {view.source!r} has no column {missing[0]!r} (columns: {', '.join(cols)}); "
                          f"it needs {', '.join(need)} and optionally {PARTITION}, {OFFSET}, {APPEND_MS}")
    et = f'"{view.event_time_field}"'
    if "TIMESTAMP" in cols[view.event_time_field].upper():
        et = f"epoch_ms({et})"
    part = f'"{PARTITION}"' if PARTITION in cols else "0"
    off = f'"{OFFSET}"' if OFFSET in cols else "row_number() OVER ()"
    on_time = (windows.on_time_sql("et", f'"{APPEND_MS}"', view.allowed_lateness_ms, view.allowed_future_ms)
               if APPEND_MS in cols else "TRUE")
    spine = pa.table({"rid": pa.array(np.arange(len(t), dtype=np.int64)), "entity": ids,
                      "t": pa.array(t, pa.int64())})
    con.register("hw_latest_spine", spine)
    out: dict[str, pa.Array] = {}
    try:
        for column in sorted({f.column for f in features}):
            feats = [f for f in features if f.column == column]
            inner = windows.latest_value_sql("et", "p", "o", "t", view.tick_ms, None)
            picks = ", ".join(
                f'CASE WHEN e.et IS NOT NULL AND {windows.latest_value_sql("e.et", "e.p", "e.o", "s.t", view.tick_ms, f.ttl_ms).within_ttl} '
                f'THEN CAST(e.val AS {_DUCK.get(f.column_type, "VARCHAR")}) END AS "{f.name}"' for f in feats)
            events = (f'SELECT CAST("{view.entity_key}" AS VARCHAR) AS entity, et, {inner.event_order} AS ord, val FROM ('
                      f'SELECT *, {et} AS et, {part} AS p, {off} AS o, "{column}" AS val FROM "{rel}") '
                      f'WHERE val IS NOT NULL AND "{view.entity_key}" IS NOT NULL AND {on_time}')
            res = con.sql(  # keys computed once per side (cheaper than in the ASOF condition)
                f"WITH e AS ({events}), s AS (SELECT rid, entity, t, {inner.visible_before} AS vb FROM hw_latest_spine) "
                f"SELECT s.rid, {picks} FROM s ASOF LEFT JOIN e ON s.entity = e.entity AND e.ord < s.vb"
            ).to_arrow_table()
            rid = res.column("rid").to_numpy()
            inv = np.empty(len(rid), dtype=np.int64)
            inv[rid] = np.arange(len(rid))
            for f in feats:
                out[f.name] = res.column(f.name).combine_chunks().take(pa.array(inv)).cast(feature_arrow_type(f))
    finally:
        con.unregister("hw_latest_spine")
    return out
