"""The point-in-time join of query rows ``(entity, t)`` to one view's Parquet tiles.

Split of work, and why:

* **DuckDB scans**: the tiles a chunk of rows can need (the chunk's entities, as a semi-join; the
  resolutions the requested windows use; ``tile_start`` in the chunk's time range, which also
  prunes ``date=`` partitions). It reads Parquet lazily and spills, so the tile set on disk may
  be far larger than memory; only one chunk's tiles are ever loaded.
* **numpy joins**: the loaded tiles are sorted by ``(entity, resolution, tile_start)`` and each row's
  window is located with ``searchsorted`` on the ranges of ``windows.window_tile_ranges`` (a
  sort-merge range join). The present tiles of each (row, window) are then gathered in canonical
  ``(resolution, tile_start)`` order into a (rows x 1 x K) matrix and folded by ``ir.vmerge`` /
  ``ir.vfinalize``, exactly as ``online_store.reader`` folds what Redis returns, so float sums are
  bit-identical to a fetch. A SQL ``SUM`` has no defined order and would differ in the last bits.
  ``last``/``distinct`` are merged per row as the reader does (max key, set union) and finalized by
  ``ir.finalize`` (which applies the latest-value TTL). Rows are processed in blocks of bounded
  rows x K cells, so one entity with a long history cannot blow up the matrix of all the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.errors import BackfillError
from backfill.layout import tile_date
from streamjobs import ir, windows
from streamjobs.plan import Feature, ViewPlan, WindowGroup

__all__ = ["feature_arrow_type", "load_tiles", "view_values", "BLOCK_CELLS"]

#: Rows x tiles cells of one merge block (per field: 8 bytes each).
BLOCK_CELLS = 1 << 21
_NUMERIC_KINDS = ("cnt", "sum", "sumsq", "min", "max")
_ARROW = {"int": pa.int64(), "long": pa.int64(), "timestamp": pa.int64(), "float": pa.float64(),
          "double": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}

Column = tuple[np.ndarray, np.ndarray]  # (values, null mask); object dtype for strings


def feature_arrow_type(f: Feature) -> pa.DataType:
    """The output type of a feature, as ``FetchResult.values`` types it."""
    if f.op in ("count", "distinct_count"):
        return pa.int64()
    if f.op in ("sum", "mean", "stddev"):
        return pa.float64()
    return _ARROW.get(f.column_type, pa.string())


def _groups(view: ViewPlan, features: Sequence[Feature]) -> list[tuple[WindowGroup, tuple[Feature, ...]]]:
    wanted = {f.name for f in features}
    out = []
    for g in view.groups:
        feats = tuple(f for f in g.features if f.name in wanted)
        if feats:
            out.append((g, feats))
    return out


def load_tiles(con: Any, relation: str, view: ViewPlan, features: Sequence[Feature], ids: pa.Array,
               t: np.ndarray) -> pa.Table:
    """Tiles of ``view`` the rows ``(ids, t)`` can read: their entities, the needed resolutions and fields,
    ``tile_start`` in ``[min window start, max floor(t, tick))`` (no lower bound for unbounded windows)."""
    groups = _groups(view, features)
    fields = sorted({f.name for g, _ in groups for f in g.fields})
    res = sorted({r for g, _ in groups for r in view.ladder if view.tick_ms <= r <= g.hop_ms})
    hi = int(windows.tile_start(int(t.max()), view.tick_ms)) if len(t) else 0
    bounded = [g for g, _ in groups if g.window_ms is not None]
    lo = None
    if len(groups) == len(bounded) and len(t):
        lo = min(int(windows.tile_start(int(t.min()) - g.window_ms, g.hop_ms)) for g in bounded)
    uniq = pc.unique(ids.drop_null())
    con.register("hw_pit_ids", pa.table({"id": uniq}))
    cols = ", ".join(f'"{n}"' for n in fields)
    where = [f"resolution_ms IN ({', '.join(map(str, res))})", f"tile_start < {hi}", f"date <= '{tile_date(hi)}'",
             "entity IN (SELECT id FROM hw_pit_ids)"]
    if lo is not None:
        where += [f"tile_start >= {lo}", f"date >= '{tile_date(lo)}'"]
    sql = (f'SELECT entity, resolution_ms, tile_start{", " if cols else ""}{cols} FROM "{relation}" '
           f"WHERE {' AND '.join(where)}")
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("hw_pit_ids")


def _padded(tiles: pa.Table, f: ir.IRField) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric field's column with one extra identity tile at the end (cnt 0, sum 0.0, min/max null)."""
    col = tiles.column(f.name)
    null = None
    if f.kind in ("min", "max"):
        null = np.append(col.is_null().to_numpy(zero_copy_only=False), True)
    dtype = np.float64 if f.kind in ("sum", "sumsq") or f.column_type in ("float", "double") else np.int64
    vals = pc.fill_null(col, pa.scalar(0, pa.from_numpy_dtype(dtype))).to_numpy(zero_copy_only=False)
    return np.append(vals.astype(dtype, copy=False), dtype(0)), null


def view_values(view: ViewPlan, features: Sequence[Feature], ids: pa.Array, t: np.ndarray,
                tiles: pa.Table) -> dict[str, Column]:
    """Values of ``features`` (one view) for rows ``(ids[i], t[i])`` from ``tiles`` (``load_tiles``)."""
    n = len(t)
    enc = pc.dictionary_encode(ids).combine_chunks() if isinstance(ids, pa.ChunkedArray) else pc.dictionary_encode(ids)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    ladder = tuple(sorted(view.ladder))
    tick = view.tick_ms
    n_t = tiles.num_rows
    if n_t:
        tcode = pc.index_in(tiles.column("entity"), value_set=enc.dictionary).to_numpy(zero_copy_only=False)
        tres = np.searchsorted(ladder, tiles.column("resolution_ms").to_numpy())
        tstart = tiles.column("tile_start").to_numpy().astype(np.int64)
        base, top = int(tstart.min()), int(tstart.max()) + tick
    else:
        tcode = tres = tstart = np.zeros(0, np.int64)
        base, top = 0, tick
    span = (top - base) // tick + 1
    nres = len(ladder)
    if (len(enc.dictionary) + 1) * nres * span >= 2**62:
        raise BackfillError(f"view {view.name!r}: tile time span too long for one chunk key; lower chunk_rows")

    def key(code: Any, ri: int, start: Any) -> np.ndarray:
        rel = (np.clip(start, base, top) - base) // tick
        return (np.asarray(code, np.int64) * nres + ri) * span + rel

    order = np.argsort(key(tcode, 0, tstart) + tres * span, kind="stable") if n_t else np.zeros(0, np.intp)
    skeys = (key(tcode, 0, tstart) + tres * span)[order]
    valid = codes >= 0
    numeric_cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    var_cache: dict[str, list[Any]] = {}
    out: dict[str, Column] = {}
    since = base if n_t else None
    for g, feats in _groups(view, features):
        ranges = windows.window_tile_ranges(t, g.window_ms, g.hop_ms, ladder, tick,
                                            since_ms=since if since is not None else t)
        starts, lens = [], []
        for r, lo, hi in ranges:
            ri = ladder.index(r)
            a = np.searchsorted(skeys, key(codes, ri, lo))
            b = np.searchsorted(skeys, key(codes, ri, hi))
            starts.append(a)
            lens.append(np.where(valid, b - a, 0))
        counts = np.sum(lens, axis=0) if lens else np.zeros(n, np.int64)
        num_fields = [f for f in g.fields if f.kind in _NUMERIC_KINDS]
        var_fields = [f for f in g.fields if f.kind not in _NUMERIC_KINDS]
        for f in num_fields:
            if f.name not in numeric_cache:
                numeric_cache[f.name] = _padded(tiles, f)
        for f in var_fields:
            if f.name not in var_cache:
                var_cache[f.name] = tiles.column(f.name).to_pylist() + [None]
        cols = {f.name: (np.empty(n, _dtype(f)), np.zeros(n, bool)) for f in feats}
        for rows in _blocks(counts):
            idx = _gather(rows, starts, lens, order, n_t, int(counts[rows].max(initial=0)))
            _merge_block(g, feats, num_fields, var_fields, numeric_cache, var_cache, idx, rows, t, n_t, cols)
        out.update(cols)
    return out


def _dtype(f: Feature) -> Any:
    if f.op in ("last", "latest", "distinct_count"):
        return object
    return np.float64 if feature_arrow_type(f) == pa.float64() else np.int64


def _blocks(counts: np.ndarray) -> list[np.ndarray]:
    """Row index blocks, by ascending tile count, each with rows x max count <= BLOCK_CELLS."""
    order = np.argsort(counts, kind="stable")
    c = np.maximum(counts[order], 1)
    out, i, n = [], 0, len(order)
    while i < n:
        j = min(n, i + max(BLOCK_CELLS // int(c[i]), 1))
        while j > i + 1 and (j - i) * int(c[j - 1]) > BLOCK_CELLS:
            j = i + (j - i) // 2
        out.append(order[i:j])
        i = j
    return out


def _gather(rows: np.ndarray, starts: list[np.ndarray], lens: list[np.ndarray], order: np.ndarray,
            n_t: int, width: int) -> np.ndarray:
    """(rows, width) tile indices in canonical order, padded with ``n_t`` (the identity tile)."""
    idx = np.full((len(rows), width), n_t, dtype=np.intp)
    pos = np.zeros(len(rows), dtype=np.intp)
    for a_all, ln_all in zip(starts, lens):
        a, ln = a_all[rows], ln_all[rows]
        for k in range(int(ln.max(initial=0))):
            m = ln > k
            idx[m, pos[m] + k] = order[a[m] + k]
        pos += ln
    return idx


def _merge_block(g: WindowGroup, feats: Sequence[Feature], num_fields: list[ir.IRField],
                 var_fields: list[ir.IRField], numeric: dict[str, tuple[np.ndarray, np.ndarray | None]],
                 var: dict[str, list[Any]], idx: np.ndarray, rows: np.ndarray, t: np.ndarray, n_t: int,
                 cols: dict[str, Column]) -> None:
    if num_fields:
        mats: dict[str, np.ndarray] = {}
        for f in num_fields:
            vals, null = numeric[f.name]
            mats[f.name] = vals[idx][:, None, :]
            if null is not None:
                mats[f.name + "__null"] = null[idx][:, None, :]
        with np.errstate(all="ignore"):  # IEEE results as the reader gets them (inf - inf = nan)
            merged = ir.vmerge(num_fields, mats)
            for f in feats:
                if f.op not in ("last", "latest", "distinct_count"):
                    v, null = ir.vfinalize(f, merged, 0)
                    cols[f.name][0][rows], cols[f.name][1][rows] = v, null
    var_feats = [f for f in feats if f.op in ("last", "latest", "distinct_count")]
    if not var_feats:
        return
    present = [r[r < n_t].tolist() for r in idx]
    merged_var: dict[str, list[Any]] = {}
    for f in var_fields:
        col = var[f.name]
        if f.kind == "last":
            merged_var[f.name] = [max((col[j] for j in js if col[j] is not None), default=None) for js in present]
        else:
            merged_var[f.name] = [{x for j in js for x in (col[j] or ())} for js in present]
    ts = t[rows].tolist()
    for f in var_feats:
        name = f"{f.column}__{'distinct' if f.op == 'distinct_count' else 'last'}"
        vals = [ir.finalize((f,), {name: v}, t_ms=tt)[f.name] for v, tt in zip(merged_var[name], ts)]
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        cols[f.name][0][rows] = arr
        cols[f.name][1][rows] = np.array([v is None for v in vals], dtype=bool)
