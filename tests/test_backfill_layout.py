"""The shared Parquet tile layout (backfill/layout.py): paths, schema, manifest, plan-hash check."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from backfill import layout
from backfill.errors import PlanMismatchError, TileLayoutError
from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source
from streamjobs.plan import build_view_plan
from tests.oracle import MemoryTiler

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_view(name: str = "v", *, window: str = "1h") -> FeatureView:
    cols = {"card_id": "string", "amount": "double", "country": "string", "n": "long", "ts": "long"}
    return FeatureView(
        name=name, entity=Entity("card", "card_id"),
        source=Source("events", "events", event_time_field="ts", columns=cols),
        aggregations=(Aggregation("sum", "amount", (window,)), Aggregation("max", "n", ("10m",)),
                      Aggregation("distinct_count", "country", ("1h",)),
                      LatestValue("country", ttl="1h", name="last_country")),
        allowed_lateness="1m")


def tile_records(view, tiler: MemoryTiler) -> list[dict]:
    """MemoryTiler tiles as layout rows (header fields filled from the IR: n_events = any count)."""
    out = []
    for entity, tiles in tiler.tiles.items():
        for (r, s), t in tiles.items():
            out.append({"entity": str(entity), "resolution_ms": r, "tile_start": s, "plan_hash": view.plan_hash,
                        "n_events": 1, "max_append_ms": s, **ir_row(t)})
    return out


def ir_row(t):
    from streamjobs import ir
    return ir.to_row(t)


def events(n: int = 50) -> list[dict]:
    return [{"card_id": f"c{i % 3}", "amount": float(i), "country": ["FR", "DE", None][i % 3], "n": i,
             "ts": T0 + i * 97_000 - (DAY if i == 7 else 0), "event_time_ms": T0 + i * 97_000 - (DAY if i == 7 else 0),
             "append_time_ms": T0 + i * 97_000 - (DAY if i == 7 else 0), "partition": i % 2, "offset": i}
            for i in range(n)]


def write(tmp_path, view, evs):
    tiler = MemoryTiler(view)
    tiler.ingest([e for e in evs])
    recs = tile_records(view, tiler)
    n = layout.write_tiles(tmp_path, view, layout.tiles_table(view, recs + [
        {"entity": "", "resolution_ms": 0, "tile_start": 0, "plan_hash": view.plan_hash, "n_events": 0,
         "max_append_ms": 0}]))
    return recs, n


def test_schema_follows_ir_fields_and_types():
    vp = build_view_plan(make_view())
    s = layout.tile_schema(vp)
    assert s.names[:5] == list(layout.HEADER_COLUMNS)
    assert s.names[5:] == [f.name for f in vp.fields]
    assert s.field("amount__sum").type == pa.float64()
    assert s.field("n__max").type == pa.int64()
    assert s.field("country__last").type == pa.string()
    assert s.field("country__distinct").type == pa.list_(pa.string())


def test_paths_and_dates():
    assert layout.tile_date(T0) == "2026-01-01"
    assert layout.tile_date(T0 - 1) == "2025-12-31"
    p = layout.partition_dir("/x", "v", 60_000, "2026-01-01")
    assert str(p) == "/x/view=v/resolution_ms=60000/date=2026-01-01"


def test_round_trip_through_duckdb_and_pyarrow(tmp_path):
    vp = build_view_plan(make_view())
    recs, n = write(tmp_path, vp, events())
    assert n == len(recs)  # the progress row is not written
    assert not list(tmp_path.glob("view=v/resolution_ms=0"))
    dates = {p.name for p in tmp_path.glob("view=v/resolution_ms=*/date=*")}
    assert dates == {"date=2025-12-31", "date=2026-01-01"}
    con = duckdb.connect()
    name = layout.open_tiles(con, tmp_path, vp)
    got = con.execute(f'SELECT entity, resolution_ms, tile_start, amount__sum, n__max, country__last, '
                      f'country__distinct, date FROM "{name}"').fetchall()
    want = {(r["entity"], r["resolution_ms"], r["tile_start"]): r for r in recs}
    assert len(got) == len(want)
    for e, r, s, sm, mx, last, dist, date in got:
        w = want[(e, r, s)]
        assert (sm, mx, last, sorted(dist)) == (w["amount__sum"], w["n__max"], w["country__last"],
                                                sorted(w["country__distinct"]))
        assert date == layout.tile_date(s)
    ds = layout.open_dataset(tmp_path, vp)
    t = ds.to_table(columns=["entity", "resolution_ms", "tile_start"])
    assert t.num_rows == len(want) and t.schema.field("resolution_ms").type == pa.int64()


def test_rewrite_replaces_partitions(tmp_path):
    vp = build_view_plan(make_view())
    write(tmp_path, vp, events(50))
    recs, _ = write(tmp_path, vp, events(50))
    con = duckdb.connect()
    assert con.execute(f'SELECT count(*) FROM "{layout.open_tiles(con, tmp_path, vp)}"').fetchone()[0] == len(recs)


def test_manifest_round_trip_keeps_extra_keys(tmp_path):
    m = {"view": "v", "plan_hash": "abc", "tick_ms": 1000, "range": {"timestamps": [1, 2]}, "events_read": 5,
         "events_late": 1, "tiles_written": 9, "finished_ms": 123, "job": "x"}
    layout.write_manifest(tmp_path, m)
    got = layout.read_manifest(tmp_path, "v")
    assert got.to_dict() == m and got.extra == {"job": "x"}
    assert layout.read_manifest(tmp_path, "other") is None
    (tmp_path / "_replay" / "bad.json").write_text("{")
    with pytest.raises(TileLayoutError, match="corrupt replay manifest"):
        layout.read_manifest(tmp_path, "bad")
    (tmp_path / "_replay" / "short.json").write_text(json.dumps({"view": "short"}))
    with pytest.raises(TileLayoutError, match="lacks plan_hash"):
        layout.read_manifest(tmp_path, "short")


def test_plan_mismatch_is_one_line_error(tmp_path):
    old = build_view_plan(make_view())
    new = build_view_plan(make_view(window="2h"))
    assert old.plan_hash != new.plan_hash
    write(tmp_path, old, events())
    with pytest.raises(PlanMismatchError, match=f"written by plan {old.plan_hash}.*replay view 'v' again") as e:
        layout.open_tiles(duckdb.connect(), tmp_path, new)
    assert "\n" not in str(e.value)
    layout.write_manifest(tmp_path, {"view": "v", "plan_hash": old.plan_hash, "tick_ms": 1000, "range": {},
                                     "events_read": 0, "events_late": 0, "tiles_written": 0, "finished_ms": 0})
    with pytest.raises(PlanMismatchError):
        layout.open_dataset(tmp_path, new)
    layout.open_dataset(tmp_path, old)  # the right plan reads


def test_missing_tiles_name_the_fix(tmp_path):
    vp = build_view_plan(make_view())
    with pytest.raises(TileLayoutError, match="no tiles of view 'v'.*replay"):
        layout.open_tiles(duckdb.connect(), tmp_path, vp)


def test_markers_and_hidden_files_are_skipped(tmp_path):
    vp = build_view_plan(make_view())
    write(tmp_path, vp, events())
    d = next(tmp_path.glob("view=v/resolution_ms=*/date=*"))
    (d / "_SUCCESS").write_text("")
    (d / ".part-x.inprogress").write_text("garbage")
    con = duckdb.connect()
    assert con.execute(f'SELECT count(*) FROM "{layout.open_tiles(con, tmp_path, vp)}"').fetchone()[0] > 0
