"""The point-in-time join of query rows ``(entity, t)`` to one view's Parquet tiles.

Split of work, and why:

* **DuckDB scans**: the tiles a chunk of rows can need (the chunk's entities, as a semi-join; the
  resolutions the requested windows use; ``tile_start`` in the chunk's time range, which also
  prunes ``date=`` partitions). It reads Parquet lazily and spills, so the tile set on disk may
  be far larger than memory; only one chunk's tiles are ever loaded.
* **numpy joins**: the loaded tiles are sorted by ``(entity, resolution, tile_start)`` and each row's
  window is located with ``searchsorted`` on the ranges of ``windows.window_tile_ranges`` (a
  sort-merge range join). The present tiles of each (row, window) are then gathered in canonical
  ``(resolution, tile_start)`` order into rows of K (padded with the identity tile) and folded by ``ir.cmerge`` /
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
from online_store.reader import feature_arrow_type  # noqa: F401  (re-exported: one owner, the reader)

__all__ = ["feature_arrow_type", "entity_codes", "load_tiles", "view_values", "BLOCK_CELLS"]

#: Rows x tiles cells of one merge block (per field: 8 bytes each).
BLOCK_CELLS = 1 << 21
_NUMERIC_KINDS = ("cnt", "sum", "m2", "min", "max")
Column = tuple[np.ndarray, np.ndarray]  # (values, null mask); object dtype for strings


def _groups(view: ViewPlan, features: Sequence[Feature]) -> list[tuple[WindowGroup, tuple[Feature, ...]]]:
    wanted = {f.name for f in features}
    out = []
    for g in view.groups:
        feats = tuple(f for f in g.features if f.name in wanted)
        if feats:
            out.append((g, feats))
    return out


def _needed(features: Sequence[Feature]) -> set[str]:
    """IR fields the requested features read (a window group may hold more, for other features)."""
    return {x.name for f in features for x in ir.fields_for(f.op, f.column, f.column_type)}


def entity_codes(ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(code per row, -1 for a NULL id; the distinct ids, code = position)."""
    enc = pc.dictionary_encode(ids)
    return pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def load_tiles(con: Any, relation: str, view: ViewPlan, features: Sequence[Feature], dictionary: pa.Array,
               t: np.ndarray) -> pa.Table:
    """Tiles of ``view`` that rows at times ``t`` of the entities ``dictionary`` can read: the needed
    resolutions and fields, ``tile_start`` in ``[min window start, max floor(t, tick))`` (no lower bound
    for unbounded windows). The entity comes back as its ``code`` (position in ``dictionary``):
    DuckDB's hash join maps ids to codes, so no tile's id string crosses into Python."""
    groups = _groups(view, features)
    fields = sorted(_needed(features))
    # a window's cover reads its head on the rungs up to its hop and its body on any coarser rung
    # with a whole aligned tile inside it (``windows.window_tile_ranges``): every rung up to the
    # longest range asked for, not only those up to the hops; a range [floor(t - W, h), floor(t, tick))
    # is up to W + h - tick long (a latest value's TTL need not be a multiple of its hop)
    longest = max((g.window_ms + g.hop_ms - view.tick_ms for g, _ in groups if g.window_ms is not None), default=0)
    unbounded = any(g.window_ms is None for g, _ in groups)
    res = sorted(r for r in view.ladder if r >= view.tick_ms and (unbounded or r <= longest))
    hi = int(windows.tile_start(int(t.max()), view.tick_ms)) if len(t) else 0
    bounded = [g for g, _ in groups if g.window_ms is not None]
    lo = None
    if len(groups) == len(bounded) and len(t):
        lo = min(int(windows.tile_start(int(t.min()) - g.window_ms, g.hop_ms)) for g in bounded)
    con.register("hw_pit_ids", pa.table({"id": dictionary, "code": pa.array(np.arange(len(dictionary)))}))
    cols = "".join(f', tl."{n}"' for n in fields)
    where = [f"tl.resolution_ms IN ({', '.join(map(str, res))})", f"tl.tile_start < {hi}",
             f"tl.date <= '{tile_date(hi)}'"]
    if lo is not None:
        where += [f"tl.tile_start >= {lo}", f"tl.date >= '{tile_date(lo)}'"]
    sql = (f'SELECT c.code AS code, tl.resolution_ms, tl.tile_start{cols} FROM "{relation}" tl '
           f"JOIN hw_pit_ids c ON tl.entity = c.id WHERE {' AND '.join(where)}")
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("hw_pit_ids")


def _padded(tiles: pa.Table, f: ir.IRField) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric field's column with one extra identity tile at the end (cnt 0, sum 0.0, min/max null)."""
    col = tiles.column(f.name)
    n = len(col)
    dtype = np.float64 if f.kind in ("sum", "m2") or f.column_type in ("float", "double") else np.int64
    vals = np.empty(n + 1, dtype=dtype)
    vals[n] = 0
    vals[:n] = pc.fill_null(col, pa.scalar(0, pa.from_numpy_dtype(dtype))).to_numpy(zero_copy_only=False)
    null = None
    if f.kind in ("min", "max"):
        null = np.empty(n + 1, dtype=bool)
        null[n] = True
        null[:n] = col.is_null().to_numpy(zero_copy_only=False)
    return vals, null


def view_values(view: ViewPlan, features: Sequence[Feature], codes: np.ndarray, t: np.ndarray,
                tiles: pa.Table) -> dict[str, Column]:
    """Values of ``features`` (one view) for rows ``(codes[i], t[i])`` (``entity_codes``) from ``tiles``
    (``load_tiles``). Rows are worked on sorted by (entity, t), so every ``searchsorted`` probes in
    ascending order (cache-friendly: 20x faster than random probes on 10M tiles), then put back."""
    perm = np.lexsort((t, codes))
    codes, t = codes[perm], t[perm]
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return {k: (v[inv], null[inv]) for k, (v, null) in _sorted_values(view, features, codes, t, tiles).items()}


def _sorted_values(view: ViewPlan, features: Sequence[Feature], codes: np.ndarray, t: np.ndarray,
                   tiles: pa.Table) -> dict[str, Column]:
    n = len(t)
    ladder = tuple(sorted(view.ladder))
    tick = view.tick_ms
    n_t = tiles.num_rows
    if n_t:
        tcode = tiles.column("code").to_numpy().astype(np.int64)
        tres = np.searchsorted(ladder, tiles.column("resolution_ms").to_numpy())
        tstart = tiles.column("tile_start").to_numpy().astype(np.int64)
        base, top = int(tstart.min()), int(tstart.max()) + tick
    else:
        tcode = tres = tstart = np.zeros(0, np.int64)
        base, top = 0, tick
    span = (top - base) // tick + 1
    nres = len(ladder)
    if (int(codes.max(initial=0)) + 2) * nres * span >= 2**62:
        raise BackfillError(f"view {view.name!r}: tile time span too long for one chunk key; lower chunk_rows")

    def key(code: Any, ri: int, start: Any) -> np.ndarray:
        rel = (np.clip(start, base, top) - base) // tick
        return (np.asarray(code, np.int64) * nres + ri) * span + rel

    tkeys = (tcode * nres + tres) * span + (tstart - base) // tick  # unique per tile
    order = np.argsort(tkeys) if n_t else np.zeros(0, np.intp)
    skeys = tkeys[order]
    valid = codes >= 0
    numeric_cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    var_cache: dict[str, Any] = {}
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
        need = _needed(feats)
        num_fields = [f for f in g.fields if f.kind in _NUMERIC_KINDS and f.name in need]
        var_fields = [f for f in g.fields if f.kind not in _NUMERIC_KINDS and f.name in need]
        for f in num_fields:
            if f.name not in numeric_cache:
                numeric_cache[f.name] = _padded(tiles, f)
        for f in var_fields:
            if f.name not in var_cache:
                var_cache[f.name] = _last_ranks(tiles, f) if f.kind == "last" else _distinct_items(tiles, f)
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
        flat = idx.reshape(-1)  # each row's tiles in canonical order, padded with the identity tile
        tiles: dict[str, np.ndarray] = {}
        for f in num_fields:
            vals, null = numeric[f.name]
            tiles[f.name] = vals[flat]
            if null is not None:
                tiles[f.name + "__null"] = null[flat]
        rowptr = np.arange(len(idx) + 1, dtype=np.int64) * idx.shape[1]
        with np.errstate(all="ignore"):  # IEEE results as the reader gets them (inf - inf = nan)
            merged = ir.cmerge(num_fields, rowptr, np.zeros(len(flat), np.int64), np.ones((1, 1), bool), tiles)
            for f in feats:
                if f.op not in ("last", "latest", "distinct_count"):
                    v, null = ir.vfinalize(f, merged, 0)
                    cols[f.name][0][rows], cols[f.name][1][rows] = v, null
    var_feats = [f for f in feats if f.op in ("last", "latest", "distinct_count")]
    if not var_feats:
        return
    merged_var: dict[str, list[Any]] = {}
    for f in var_fields:
        merged_var[f.name] = (_merge_last(var[f.name], idx) if f.kind == "last"
                              else _merge_distinct(var[f.name], idx, n_t))
    ts = t[rows].tolist()
    for f in var_feats:
        name = f"{f.column}__{'distinct' if f.op == 'distinct_count' else 'last'}"
        vals = [None if v is None else ir.finalize((f,), {name: v}, t_ms=tt)[f.name]
                for v, tt in zip(merged_var[name], ts)]
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        cols[f.name][0][rows] = arr
        cols[f.name][1][rows] = np.array([v is None for v in vals], dtype=bool)


# ``last`` and ``distinct`` without a Python object per tile: a tile's ``last`` key is ranked once by
# string order (the order ``ir.merge`` maxes over), so a window's key is the tile of highest rank;
# ``distinct`` items are dictionary-coded and a window's set is the unique (row, code) pairs.


def _last_ranks(tiles: pa.Table, f: ir.IRField) -> tuple[pa.Array, np.ndarray]:
    col = tiles.column(f.name).combine_chunks()
    order = pc.sort_indices(col, null_placement="at_start").to_numpy()
    rank = np.empty(len(col) + 1, dtype=np.int64)
    rank[order] = np.arange(len(col))
    rank[:len(col)][col.is_null().to_numpy(zero_copy_only=False)] = -1
    rank[len(col)] = -1  # the identity tile
    return col, rank


def _merge_last(cached: tuple[pa.Array, np.ndarray], idx: np.ndarray) -> list[Any]:
    """Max key per row over its tiles (None when no tile has one)."""
    col, rank = cached
    r = rank[idx] if idx.shape[1] else np.full((len(idx), 1), -1)
    best = r.argmax(axis=1)
    has = r[np.arange(len(r)), best] >= 0
    out: list[Any] = [None] * len(r)
    if has.any():
        winners = idx[np.flatnonzero(has), best[has]]
        for i, key in zip(np.flatnonzero(has).tolist(), col.take(pa.array(winners)).to_pylist()):
            out[i] = key
    return out


def _distinct_items(tiles: pa.Table, f: ir.IRField) -> tuple[np.ndarray, np.ndarray, int]:
    col = tiles.column(f.name).combine_chunks()
    if col.null_count:
        col = pc.fill_null(col, pa.scalar([], col.type))
    offsets = col.offsets.to_numpy().astype(np.int64) - int(col.offsets[0].as_py())
    enc = pc.dictionary_encode(col.values.slice(int(col.offsets[0].as_py()), int(offsets[-1])))
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)  # NULL items are ignored
    return np.append(offsets, offsets[-1]), codes, max(len(enc.dictionary), 1)


def _merge_distinct(cached: tuple[np.ndarray, np.ndarray, int], idx: np.ndarray, n_t: int) -> list[Any]:
    """Per row, the union of its tiles' items, as a sized stand-in (``ir`` finalizes a set by its size)."""
    offsets, codes, n_items = cached
    rr, kk = np.nonzero(idx < n_t)
    j = idx[rr, kk]
    lens = offsets[j + 1] - offsets[j]
    total = int(lens.sum())
    row_of = np.repeat(rr, lens)
    pos = np.repeat(offsets[j], lens) + (np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens))
    item = codes[pos] if total else np.zeros(0, np.int64)
    keep = item >= 0
    pairs = np.unique(row_of[keep] * n_items + item[keep])
    sizes = np.bincount(pairs // n_items, minlength=len(idx)) if len(pairs) else np.zeros(len(idx), np.int64)
    return [range(k) for k in sizes.tolist()]
