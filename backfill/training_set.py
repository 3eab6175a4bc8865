"""Point-in-time training sets: a spine of (entity keys, t, labels...) joined to feature values at t.

Output: the spine's columns in spine order, then one column per requested feature named by its
full ref ``"view:feature"`` (always the ref, never a bare name: refs are what ``fetch``, the feature
log and model metadata use, and a bare name would change meaning when a second view adds the same
name). Exactly one row per spine row, in spine order; duplicate spine rows stay duplicate. Values
are those ``online_store.reader.fetch(at_ms=t)`` returns for the same entity on a quiesced stream:
tiles covering ``[floor(t - W, h), floor(t, tick))`` merged by the reader's fold (``pit_join``), so no
value depends on an event at or after ``floor(t, tick)``. No data: count and sum 0, others null.
Unbounded latest-value windows (no TTL) read every tile back to the entity's oldest (DESIGN: no
lower bound); online reads only the store's retention (``keys.lookback_ms``).

Latest-value features of a view whose source is given in ``sources`` are computed from raw rows
with a DuckDB ASOF JOIN (``latest_rows``) instead of tiles; both give the same values.

Memory: the spine is processed in chunks of ``chunk_rows`` (Parquet spines are streamed by row
batch; CSV is read whole); per chunk only that chunk's tiles are loaded (DuckDB prunes the rest by
entity, resolution and time), at most about ``max_tiles`` at once (the chunk's entities are split
into hash buckets), and merges run in blocks of bounded size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill import layout
from backfill.coverage import CoverageError, describe, uncovered
from backfill.errors import BackfillError, SpineError
from backfill.latest_rows import latest_values, register_source
from backfill.pit_join import entity_codes, feature_arrow_type, load_tiles, view_values
from backfill.spine import entity_ids, open_spine, timestamps_ms
from streamjobs.plan import Feature, FeaturePlan

__all__ = ["training_set", "iter_training_set", "write_training_set", "DEFAULT_CHUNK_ROWS", "FEATURE_HASHES_KEY"]

DEFAULT_CHUNK_ROWS = 1_000_000
#: Parquet metadata: {"view:feature": definition hash} of the columns, for `headwater train`'s skew guard
FEATURE_HASHES_KEY = b"headwater.feature_hashes"
#: Tiles loaded at once per view: a chunk's entities are split into ceil(stored tiles / this) hash
#: buckets, each loaded and merged alone (a random spine touches every entity, so time chunks alone
#: would load every tile). ~60-100 bytes per tile in memory.
DEFAULT_MAX_TILES = 8_000_000
Progress = Callable[[int, int, float], None]


def _plan(repo: Any) -> FeaturePlan:
    if isinstance(repo, FeaturePlan):
        return repo
    from headwater.config import RepoConfig, load_repo
    from streamjobs.repo import load_definitions
    cfg = repo if isinstance(repo, RepoConfig) else load_repo(repo)
    return load_definitions(cfg).plan


def iter_training_set(repo: Any, spine: Any, features: str | Sequence[str], *, tiles: str | Path | None = None,
                      timestamp_column: str = "ts", sources: Mapping[str, Any] | None = None,
                      chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: Progress | None = None,
                      max_tiles: int = DEFAULT_MAX_TILES, allow_partial: bool = False) -> Iterator[pa.Table]:
    """:func:`training_set` chunk by chunk (Arrow tables in spine order), for bounded-memory writers."""
    import duckdb
    import pyarrow.parquet as pq

    plan = _plan(repo)
    frefs = plan.features_by_ref(features)
    if not frefs:
        raise BackfillError("no features requested: pass refs like card_velocity:amount_sum_1h or card_velocity:*")
    sources = dict(sources or {})
    unknown = sorted(set(sources) - {v.source for v in plan.views})
    if unknown:
        raise BackfillError(f"source {unknown[0]!r} is not a source of the definitions (sources: "
                            f"{', '.join(sorted({v.source for v in plan.views}))}): fix the name given to --source")
    by_view: dict[str, list[Feature]] = {}
    for fr in frefs:
        by_view.setdefault(fr.view, []).append(fr.feature)
    views = [plan.view(v) for v in by_view]
    keys = list(dict.fromkeys(v.entity_key for v in views))
    src = open_spine(spine, [timestamp_column, *keys], text_columns=keys)
    clash = [fr.ref for fr in frefs if fr.ref in src.schema.names]
    if clash:
        raise SpineError(f"spine already has a column {clash[0]!r}; rename it (feature columns are named view:feature)")
    con = duckdb.connect()
    tiled: dict[str, tuple[str, list[Feature]]] = {}
    buckets: dict[str, int] = {}
    raw: dict[str, tuple[str, list[Feature]]] = {}
    covered: dict[str, Any] = {}
    for v in views:
        from_rows = [f for f in by_view[v.name] if f.op == "latest" and v.source in sources]
        from_tiles = [f for f in by_view[v.name] if f not in from_rows]
        if from_rows:
            raw[v.name] = (register_source(con, v.source, sources[v.source]), from_rows)
        if from_tiles:
            if tiles is None:
                raise BackfillError(f"feature {v.name}:{from_tiles[0].name} needs tiles: pass tiles= (--tiles) "
                                    f"pointing at a replay output" + (
                                        "" if from_tiles[0].op != "latest" else f", or sources={{{v.source!r}: ...}}"))
            tiled[v.name] = (layout.open_tiles(con, tiles, v), from_tiles)
            covered[v.name] = layout.read_manifest(tiles, v.name).covered  # type: ignore[union-attr]
            stored = sum(pq.ParquetFile(p).metadata.num_rows for p in layout.tile_files(tiles, v.name))
            buckets[v.name] = max(1, -(-stored // max(int(max_tiles), 1)))
    covered = {n: c for n, c in covered.items() if c != "unknown"}  # manifests older than the record
    partial = _check_coverage(src, timestamp_column, plan, covered, tiled, chunk_rows, allow_partial, tiles)
    done, total, t0 = 0, src.num_rows, time.perf_counter()
    for chunk in src.chunks(max(int(chunk_rows), 1)):
        t = timestamps_ms(chunk.column(timestamp_column), timestamp_column)
        values: dict[str, pa.Array] = {}
        for v in views:
            ids = entity_ids(chunk.column(v.entity_key))
            if v.name in tiled:
                rel, feats = tiled[v.name]
                cols = _tiled_values(con, rel, v, feats, ids, t, buckets[v.name])
                for f in feats:
                    values[f"{v.name}:{f.name}"] = _arrow(f, *cols[f.name])
                    if partial and v.name in covered:
                        gap = uncovered(v, f, t, covered[v.name])
                        if gap.any():  # --allow-partial: a value the replay cannot give is null, never short
                            values[f"{v.name}:{f.name}"] = pc.if_else(
                                pa.array(gap), pa.nulls(len(gap), values[f"{v.name}:{f.name}"].type),
                                values[f"{v.name}:{f.name}"])
            if v.name in raw:
                rel, feats = raw[v.name]
                for name, arr in latest_values(con, rel, v, feats, ids, t).items():
                    values[f"{v.name}:{name}"] = arr
        out = chunk
        for fr in frefs:
            out = out.append_column(pa.field(fr.ref, feature_arrow_type(fr.feature)), values[fr.ref])
        done += chunk.num_rows
        if progress is not None:
            progress(done, total, time.perf_counter() - t0)
        yield out
    con.close()


def _tiled_values(con: Any, rel: str, v: Any, feats: list[Feature], ids: pa.Array, t: np.ndarray,
                  buckets: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``view_values`` per entity bucket (code % buckets), scattered back into row order."""
    codes, dictionary = entity_codes(ids)
    if buckets <= 1:
        return view_values(v, feats, codes, t, load_tiles(con, rel, v, feats, dictionary, t))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bucket = np.where(codes >= 0, codes % buckets, 0)
    for b in range(buckets):
        rows = np.flatnonzero(bucket == b)
        if not len(rows):
            continue
        sub_dict = dictionary.take(pa.array(np.arange(b, len(dictionary), buckets)))
        sub_codes = np.where(codes[rows] >= 0, codes[rows] // buckets, -1)
        part = view_values(v, feats, sub_codes, t[rows], load_tiles(con, rel, v, feats, sub_dict, t[rows]))
        for name, (vals, null) in part.items():
            if name not in out:
                out[name] = (np.empty(len(t), vals.dtype), np.zeros(len(t), bool))
            out[name][0][rows], out[name][1][rows] = vals, null
    return out


def _arrow(f: Feature, v: np.ndarray, null: np.ndarray) -> pa.Array:
    if v.dtype == object:
        return pa.array(v.tolist(), feature_arrow_type(f))
    return pa.array(v, feature_arrow_type(f), mask=null)


def _check_coverage(src: Any, timestamp_column: str, plan: FeaturePlan, covered: Mapping[str, Any],
                    tiled: Mapping[str, tuple[str, list[Feature]]], chunk_rows: int, allow_partial: bool,
                    tiles: Any) -> bool:
    """Refuse spine rows whose windows reach past what the replay read (``backfill.coverage``), or
    with ``allow_partial`` say how many will have null features; True when some will."""
    todo = [(plan.view(n), tiled[n][1], covered[n]) for n in covered if n in tiled]
    if not todo:
        return False
    counts = {v.name: 0 for v, _, _ in todo}
    span: dict[str, tuple[int, int]] = {}  # earliest and latest uncovered t: the windows' extremes
    for col in src.column_chunks(timestamp_column, max(int(chunk_rows), 1)):
        t = timestamps_ms(col, timestamp_column)
        for v, feats, cov in todo:
            gap = np.zeros(len(t), dtype=bool)
            for f in feats:
                gap |= uncovered(v, f, t, cov)
            counts[v.name] += int(gap.sum())
            if gap.any():
                lo, hi = span.get(v.name, (int(t[gap].min()), int(t[gap].max())))
                span[v.name] = (min(lo, int(t[gap].min())), max(hi, int(t[gap].max())))
    bad = [(v, feats, cov) for v, feats, cov in todo if counts[v.name]]
    if not bad:
        return False
    v, feats, cov = bad[0]
    what = (f"{counts[v.name]:,} of {src.num_rows:,} spine rows ask features of view {v.name!r} over event times "
            f"the replay in {tiles} did not read ({describe(v, feats, np.array(span[v.name], np.int64), cov)})")
    if not allow_partial:
        raise CoverageError(what, "replay a range covering them (`headwater replay --from ... --to ... --replace`), "
                                  "drop those rows, or pass --allow-partial to keep them with those features null")
    for v, feats, cov in bad:
        print(f"training-set: {counts[v.name]:,} rows get null {v.name} features: outside the replayed range "
              f"({describe(v, feats, np.array(span[v.name], np.int64), cov)})", file=sys.stderr)
    return True


def training_set(repo: Any, spine: Any, features: str | Sequence[str], *, tiles: str | Path | None = None,
                 timestamp_column: str = "ts", sources: Mapping[str, Any] | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: Progress | None = None,
                 max_tiles: int = DEFAULT_MAX_TILES, allow_partial: bool = False) -> pa.Table:
    """Point-in-time feature values for every spine row (see the module doc).

    ``repo``: repository path, ``RepoConfig`` or a ``FeaturePlan``; ``spine``: Parquet/CSV path,
    pandas DataFrame or Arrow table with the views' entity key columns and ``timestamp_column``
    (ints = epoch ms, naive = UTC, any zone normalised to UTC); ``features``: ``"view:feature"`` or
    ``"view:*"`` refs; ``tiles``: a replay output directory (``backfill.layout``); ``sources``: raw
    rows per source name for latest-value features (``backfill.latest_rows``). Rows whose windows
    reach past the event times the replay read raise :class:`backfill.coverage.CoverageError`, or
    with ``allow_partial`` get those features null.
    """
    parts = list(iter_training_set(repo, spine, features, tiles=tiles, timestamp_column=timestamp_column,
                                   sources=sources, chunk_rows=chunk_rows, progress=progress, max_tiles=max_tiles,
                                   allow_partial=allow_partial))
    if not parts:  # an empty spine: its columns plus the (empty) feature columns
        plan = _plan(repo)
        schema = open_spine(spine, [timestamp_column]).schema
        for fr in plan.features_by_ref(features):
            schema = schema.append(pa.field(fr.ref, feature_arrow_type(fr.feature)))
        return schema.empty_table()
    return pa.concat_tables(parts)


def write_training_set(out: str | Path, repo: Any, spine: Any, features: str | Sequence[str], **kw: Any) -> int:
    """Stream :func:`iter_training_set` into one Parquet file (bounded memory); returns rows written.
    Progress goes to stderr."""
    import pyarrow.parquet as pq

    def show(done: int, total: int, secs: float) -> None:
        print(f"training-set: {done}/{total} rows, {done / max(secs, 1e-9):,.0f} rows/s", file=sys.stderr)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    meta = _hashes_metadata(repo, features)
    writer = None
    rows = 0
    try:
        for part in iter_training_set(repo, spine, features, progress=kw.pop("progress", show), **kw):
            if writer is None:
                writer = pq.ParquetWriter(tmp, part.schema.with_metadata({**(part.schema.metadata or {}), **meta}))
            writer.write_table(part)
            rows += part.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        empty = training_set(repo, spine, features, **kw)
        pq.write_table(empty.replace_schema_metadata({**(empty.schema.metadata or {}), **meta}), tmp)
    tmp.replace(out)
    return rows


def _hashes_metadata(repo: Any, features: str | Sequence[str]) -> dict[bytes, bytes]:
    """Each column's definition hash, so a model trained on this file after a definition edit is refused."""
    import json
    from scoring.registry import feature_hashes
    plan = _plan(repo)
    refs = [fr.ref for fr in plan.features_by_ref(features)]
    return {FEATURE_HASHES_KEY: json.dumps(feature_hashes(plan, refs), sort_keys=True).encode()}
