"""The Parquet tile layout: written by replay, read by training sets and the parity checker.

One definition of where tiles live on disk and what their columns are (contracts.md, 1)::

    <out>/view=<view>/resolution_ms=<r>/date=<YYYY-MM-DD>/<files>.parquet   (Hive partitions;
                                                    date = UTC date of tile_start)
    <out>/_replay/<view>.json                       one manifest per replayed view

File columns: ``entity, tile_start, plan_hash, n_events, max_append_ms`` then every IR field of the
view's plan (``ViewPlan.fields``, named ``IRField.name``), typed like the tiles topic value schema
(``online_store.tiles``): cnt int64, sum/m2 double, min/max in the column's type (int64 for
int/long/timestamp, double for float/double, string, bool), last string, distinct list<string>.
Progress rows (``resolution_ms = 0``) are never written. A replay replaces the view's whole tile
set (``replay.runner``), so a rerun is idempotent.

Readers go through :func:`open_tiles` (DuckDB view) or :func:`open_dataset` (pyarrow): both check
the plan hash (manifest and files) first, because tiles of another plan hold other semantics and
merging them would give silently wrong values.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from backfill.errors import PlanMismatchError, TileLayoutError
from online_store.tiles import is_marker
from streamjobs import ir
from streamjobs.plan import ViewPlan

__all__ = [
    "HEADER_COLUMNS", "PARTITION_COLUMNS", "MANIFEST_DIR", "ir_arrow_type", "tile_schema", "tile_date",
    "view_dir", "partition_dir", "tile_files", "ReplayManifest", "manifest_path", "write_manifest",
    "read_manifest", "tiles_table", "write_tiles", "check_plan", "open_dataset", "open_tiles",
]

HEADER_COLUMNS = ("entity", "tile_start", "plan_hash", "n_events", "max_append_ms")
PARTITION_COLUMNS = ("view", "resolution_ms", "date")
MANIFEST_DIR = "_replay"

_SCALAR = {"int": pa.int64(), "long": pa.int64(), "timestamp": pa.int64(), "float": pa.float64(),
           "double": pa.float64(), "string": pa.string(), "boolean": pa.bool_(), "other": pa.string()}
_HEADER_TYPES = {"entity": pa.string(), "tile_start": pa.int64(), "plan_hash": pa.string(),
                 "n_events": pa.int64(), "max_append_ms": pa.int64()}


def ir_arrow_type(f: ir.IRField) -> pa.DataType:
    """Arrow type of one IR column (same as the tiles topic's Avro type of that field)."""
    if f.kind == "cnt":
        return pa.int64()
    if f.kind in ("sum", "m2"):
        return pa.float64()
    if f.kind in ("min", "max"):
        return _SCALAR[f.column_type]
    if f.kind == "last":
        return pa.string()
    return pa.list_(pa.string())


def tile_schema(view: ViewPlan) -> pa.Schema:
    """Columns of ``view``'s tile files (partition columns excluded: they live in the path)."""
    return pa.schema([pa.field(n, t) for n, t in _HEADER_TYPES.items()]
                     + [pa.field(f.name, ir_arrow_type(f)) for f in view.fields])


def tile_date(tile_start_ms: int) -> str:
    """The ``date`` partition of a tile: UTC date of its start."""
    return datetime.fromtimestamp(int(tile_start_ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def view_dir(out: str | Path, view: str) -> Path:
    return Path(out) / f"view={view}"


def partition_dir(out: str | Path, view: str, resolution_ms: int, date: str) -> Path:
    return view_dir(out, view) / f"resolution_ms={int(resolution_ms)}" / f"date={date}"


def tile_files(out: str | Path, view: str) -> list[Path]:
    """Data files of one view, sorted; hidden and ``_``-prefixed files (markers, temp files) skipped."""
    root = view_dir(out, view)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("resolution_ms=*/date=*/*")
                  if p.is_file() and not p.name.startswith((".", "_")))


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ReplayManifest:
    """What one replay of one view read and wrote; ``extra`` keeps any other keys the writer added."""

    view: str
    plan_hash: str
    tick_ms: int
    range: Mapping[str, Any]
    events_read: int
    events_late: int
    tiles_written: int
    finished_ms: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = ("view", "plan_hash", "tick_ms", "range", "events_read", "events_late", "tiles_written", "finished_ms")

    def to_dict(self) -> dict[str, Any]:
        return {**dict(self.extra), **{k: getattr(self, k) for k in self._KEYS}}

    @property
    def covered(self) -> tuple[int | None, int | None] | None | str:
        """``(lo, hi)`` event times (ms; None: open) the replay holds every event of, None when it
        holds no such range, ``"unknown"`` for a manifest written before replays recorded it."""
        c = self.extra.get("covered", "unknown")
        if not isinstance(c, Mapping):
            return None if c is None else "unknown"
        return (c.get("from_ms"), c.get("to_ms"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReplayManifest":
        missing = [k for k in cls._KEYS if k not in data]
        if missing:
            raise TileLayoutError(f"replay manifest of view {data.get('view')!r} lacks {', '.join(missing)}; "
                                  "rerun the replay of that view")
        return cls(**{k: data[k] for k in cls._KEYS}, extra={k: v for k, v in data.items() if k not in cls._KEYS})


def manifest_path(out: str | Path, view: str) -> Path:
    return Path(out) / MANIFEST_DIR / f"{view}.json"


def write_manifest(out: str | Path, manifest: ReplayManifest | Mapping[str, Any]) -> Path:
    """Atomic write (temp file + rename), so a reader never sees half a manifest."""
    m = manifest if isinstance(manifest, ReplayManifest) else ReplayManifest.from_dict(manifest)
    path = manifest_path(out, m.view)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def read_manifest(out: str | Path, view: str) -> ReplayManifest | None:
    """The view's manifest, or None when there is none; a corrupt one is a one-line error."""
    path = manifest_path(out, view)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise TileLayoutError(f"corrupt replay manifest {path}: rerun the replay of view {view!r} ({exc})") from exc
    return ReplayManifest.from_dict(data)


# ---------------------------------------------------------------- writing (tests, tools; replay writes via Flink)


def tiles_table(view: ViewPlan, records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Tile rows (``resolution_ms``, the header and IR fields; IR sets as sets or lists) to an Arrow
    table in the file schema plus ``resolution_ms``; progress rows, late counts and markers are dropped."""
    schema = tile_schema(view)
    rows = [r for r in records if int(r["resolution_ms"]) > 0 and not is_marker(r)]
    cols: dict[str, list[Any]] = {"resolution_ms": [int(r["resolution_ms"]) for r in rows]}
    for f in schema:
        vals = [r.get(f.name) for r in rows]
        if pa.types.is_list(f.type):
            vals = [None if v is None else sorted(str(x) for x in v if x is not None) for v in vals]
        cols[f.name] = vals
    return pa.table({"resolution_ms": pa.array(cols.pop("resolution_ms"), pa.int64()),
                     **{f.name: pa.array(cols[f.name], f.type) for f in schema}})


def write_tiles(out: str | Path, view: ViewPlan, table: pa.Table) -> int:
    """Write ``table`` (from :func:`tiles_table`, or the same columns) into the layout, replacing
    every partition it touches. Returns the number of tiles written."""
    if table.num_rows and set(table.column("plan_hash").unique().to_pylist()) != {view.plan_hash}:
        raise PlanMismatchError(f"tiles to write for view {view.name!r} carry another plan hash than "
                                f"{view.plan_hash}; recompute them with the current definitions")
    res = table.column("resolution_ms").to_numpy()
    table = table.filter(pa.array(res != 0))
    schema = tile_schema(view)
    starts = table.column("tile_start").to_numpy()
    keys: dict[tuple[int, str], list[int]] = {}
    for i, (r, s) in enumerate(zip(table.column("resolution_ms").to_pylist(), starts.tolist())):
        keys.setdefault((r, tile_date(s)), []).append(i)
    body = table.select([f.name for f in schema]).cast(schema)
    for (r, date), idx in sorted(keys.items()):
        d = partition_dir(out, view.name, r, date)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        pq.write_table(body.take(pa.array(idx)), d / f"part-{uuid.uuid4().hex[:12]}.parquet")
    return table.num_rows


# ---------------------------------------------------------------- reading


def _files_or_raise(out: str | Path, view: ViewPlan) -> list[Path]:
    files = tile_files(out, view.name)
    if not files and read_manifest(out, view.name) is None:
        raise TileLayoutError(f"no tiles of view {view.name!r} under {out}: replay the view into that "
                              f"directory first (headwater replay ... --out {out})")
    return files


def check_plan(out: str | Path, view: ViewPlan, *, con: Any = None) -> None:
    """Raise :class:`PlanMismatchError` unless the manifest and every file carry ``view.plan_hash``."""
    m = read_manifest(out, view.name)
    hint = (f"replay view {view.name!r} again with the current definitions (into a fresh --out), "
            "or check out the definitions that wrote them")
    if m is not None and m.plan_hash != view.plan_hash:
        raise PlanMismatchError(f"tiles of view {view.name!r} under {out} were written by plan {m.plan_hash}, "
                                f"the definitions are plan {view.plan_hash}: {hint}")
    files = _files_or_raise(out, view)
    if not files:
        return
    import duckdb

    c = con or duckdb.connect()
    found = [r[0] for r in c.execute("SELECT DISTINCT plan_hash FROM read_parquet(?)",
                                     [[str(p) for p in files]]).fetchall()]
    other = sorted(h for h in found if h != view.plan_hash)
    if other:
        raise PlanMismatchError(f"tiles of view {view.name!r} under {out} were written by plan {other[0]}, "
                                f"the definitions are plan {view.plan_hash}: {hint}")


def open_dataset(out: str | Path, view: ViewPlan, *, check: bool = True) -> Any:
    """The view's tiles as a ``pyarrow.dataset.Dataset`` (columns of :func:`tile_schema` plus
    ``resolution_ms`` int64 and ``date`` string from the path)."""
    import pyarrow.dataset as ds

    if check:
        check_plan(out, view)
    files = [str(p) for p in _files_or_raise(out, view)]
    part = ds.partitioning(pa.schema([("resolution_ms", pa.int64()), ("date", pa.string())]), flavor="hive")
    schema = tile_schema(view).append(pa.field("resolution_ms", pa.int64())).append(pa.field("date", pa.string()))
    return ds.dataset(files, schema=schema, format="parquet", partitioning=part,
                      partition_base_dir=str(view_dir(out, view.name)))


def open_tiles(con: Any, out: str | Path, view: ViewPlan, *, name: str | None = None, check: bool = True) -> str:
    """Register the view's tiles as a DuckDB view on ``con`` (typed per the contract, with
    ``resolution_ms`` BIGINT and ``date`` VARCHAR from the path) and return its name.
    An empty replay output gives an empty view with the same columns."""
    if check:
        check_plan(out, view, con=con)
    files = [str(p) for p in _files_or_raise(out, view)]
    name = name or f"tiles_{view.name}"
    schema = tile_schema(view)
    if files:
        cols = ", ".join(f'CAST("{f.name}" AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT {cols}, CAST(resolution_ms AS BIGINT) '
                    f'AS resolution_ms, CAST(date AS VARCHAR) AS date FROM read_parquet({_list(files)}, '
                    "hive_partitioning = true, union_by_name = true)")
    else:
        cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT {cols}, CAST(NULL AS BIGINT) AS resolution_ms, '
                    "CAST(NULL AS VARCHAR) AS date WHERE false")
    return name


def _list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return "VARCHAR[]"
    return {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN"}[t]
