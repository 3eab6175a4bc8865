"""Point-in-time training sets (backfill.training_set) against the brute-force oracle, the in-memory
tile path (what fetch does) and raw rows; PIT edge cases; spine handling. Pure: tiles are built
with ir.update (tests/oracle.MemoryTiler) and written in the Parquet layout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from backfill import layout, training_set
from backfill.errors import BackfillError, PlanMismatchError, SpineError
from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source, ir
from streamjobs.plan import build_plan
from tests.oracle import MemoryTiler, feature_view_from_case, oracle_values, view_spec_from_plan
from tests.test_conformance_ir import CASES, assert_value

H = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def write_memory_tiles(out: Path, view_plan, events) -> MemoryTiler:
    """Tiles of ``events`` (ir.update per ladder resolution) in the Parquet layout, with a manifest."""
    tiler = MemoryTiler(view_plan)
    tiler.ingest(events)
    recs = [{"entity": str(e), "resolution_ms": r, "tile_start": s, "plan_hash": view_plan.plan_hash,
             "n_events": 1, "max_append_ms": s, **ir.to_row(t)}
            for e, tiles in tiler.tiles.items() for (r, s), t in tiles.items()]
    layout.write_tiles(out, view_plan, layout.tiles_table(view_plan, recs))
    layout.write_manifest(out, {"view": view_plan.name, "plan_hash": view_plan.plan_hash,
                                "tick_ms": view_plan.tick_ms, "range": {}, "events_read": len(events),
                                "events_late": tiler.dropped, "tiles_written": len(recs), "finished_ms": 0})
    return tiler


def same(a: Any, b: Any) -> bool:
    """Exact equality, NaN == NaN, and a float equals a float only bit for bit (signed zeros too)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b and type(a) is type(b) or (a is None and b is None)


# ---------------------------------------------------------------- conformance vectors


@pytest.mark.skipif(not CASES, reason="conformance vectors not found")
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_conformance_vectors(tmp_path, path):
    case = json.loads(path.read_text())
    plan = build_plan([feature_view_from_case(case)])
    vp = plan.views[0]
    write_memory_tiles(tmp_path, vp, case["events"])
    ent = case["view"]["entity"]
    spine = pd.DataFrame({ent: [q[ent] for q in case["queries"]], "ts": [q["t_ms"] for q in case["queries"]],
                          "label": range(len(case["queries"]))})
    got = training_set(plan, spine, [f"{vp.name}:*"], tiles=tmp_path).to_pylist()
    ops = {f.name: f.op for f in vp.features}
    assert [r["label"] for r in got] == list(range(len(case["queries"])))
    for q, row in zip(case["queries"], got):
        for name, expected in q["expected"].items():
            assert_value(name, ops[name], expected, row[f"{vp.name}:{name}"], f"{case['name']} {q[ent]}@{q['t_ms']}")


# ---------------------------------------------------------------- property test against the oracle

COLUMNS = {"card_id": "string", "amount": "double", "n": "long", "country": "string", "ts": "long"}


def prop_view(tick: int, lateness: int, ttl: int | None) -> FeatureView:
    return FeatureView(
        name="pv", entity=Entity("card", "card_id"),
        source=Source("tx", "events", event_time_field="ts", columns=COLUMNS),
        aggregations=(
            Aggregation("count", "amount", ("1m", "1h")), Aggregation("sum", "amount", ("10m", "1h")),
            Aggregation("mean", "amount", ("1h",)), Aggregation("stddev", "amount", ("1h",)),
            Aggregation("min", "n", ("10m",)), Aggregation("max", "amount", ("2h",), hop="10m"),
            Aggregation("distinct_count", "country", ("1h",)), Aggregation("last", "n", ("10m",)),
            LatestValue("country", ttl=ttl, name="last_country"),
            LatestValue("n", name="last_n_ever"),
        ),
        allowed_lateness=lateness, tick=tick)


event = st.fixed_dictionaries({
    "card_id": st.sampled_from(["a", "b", "c"]),
    "amount": st.one_of(st.none(), st.sampled_from([0.1, 1.0, -2.5, 1e6, 0.0, 3.3])),
    "n": st.one_of(st.none(), st.integers(-5, 5)),
    "country": st.one_of(st.none(), st.sampled_from(["FR", "DE", "US"])),
    "event_time_ms": st.integers(T0, T0 + 3 * H),
    "delay": st.sampled_from([0, 0, 0, 1000, 60_000, 400_000]),
    "partition": st.integers(0, 2),
})


def normalize(raw: list[dict]) -> list[dict]:
    out = []
    for i, e in enumerate(raw):
        e = dict(e)
        e["ts"] = e["event_time_ms"]
        e["append_time_ms"] = e["event_time_ms"] + e.pop("delay")
        e["offset"] = i
        out.append(e)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(event, min_size=0, max_size=40),
       st.lists(st.tuples(st.sampled_from(["a", "b", "c", "zz"]), st.integers(T0 - H, T0 + 4 * H)), min_size=1,
                max_size=12),
       st.sampled_from([1000, 10_000]), st.sampled_from([0, 300_000]), st.sampled_from([None, 1800_000]),
       st.integers(1, 2**12 - 1))
def test_property_matches_oracle_and_tile_path(tmp_path_factory, raw, queries, tick, lateness, ttl, subset):
    events = normalize(raw)
    plan = build_plan([prop_view(tick, lateness, ttl)])
    vp = plan.views[0]
    out = tmp_path_factory.mktemp("pv")
    tiler = write_memory_tiles(out, vp, events)
    spine = pa.table({"card_id": [q[0] for q in queries], "ts": [q[1] for q in queries]})
    got = training_set(plan, spine, ["pv:*"], tiles=out, chunk_rows=5).to_pylist()
    assert training_set(plan, spine, ["pv:*"], tiles=out, max_tiles=7).to_pylist() == got  # entity buckets
    some = [f"pv:{f.name}" for i, f in enumerate(vp.features) if subset >> (i % 12) & 1]
    if some:  # a feature asked without the others reads the same tiles (a window's body is on coarser rungs)
        assert training_set(plan, spine, some, tiles=out).to_pylist() == [{k: r[k] for k in r if k in some or
                                                                           not k.startswith("pv:")} for r in got]
    raw_rows = pa.Table.from_pylist([{k: e[k] for k in ("card_id", "amount", "n", "country", "ts")}
                                     | {"hw_partition": e["partition"], "hw_offset": e["offset"],
                                        "hw_append_ms": e["append_time_ms"]} for e in events],
                                    schema=pa.schema([("card_id", pa.string()), ("amount", pa.float64()),
                                                      ("n", pa.int64()), ("country", pa.string()), ("ts", pa.int64()),
                                                      ("hw_partition", pa.int64()), ("hw_offset", pa.int64()),
                                                      ("hw_append_ms", pa.int64())]))
    from_rows = training_set(plan, spine, ["pv:last_country", "pv:last_n_ever"], tiles=out,
                             sources={"tx": raw_rows}).to_pylist()
    spec = view_spec_from_plan(vp)
    ops = {f.name: f.op for f in vp.features}
    for (entity, t), row, rrow in zip(queries, got, from_rows):
        want = oracle_values(spec, events, entity, t)
        system = tiler.query(entity, t)
        for f in vp.features:
            v = row[f"pv:{f.name}"]
            assert same(v, system[f.name]), (f.name, entity, t, v, system[f.name])  # bit-identical to the tile path
            if f.op == "latest" and f.ttl_ms is None:
                continue  # MemoryTiler/oracle agree on unbounded; checked via `system` above
            assert_value(f.name, ops[f.name], want[f.name], v, f"{entity}@{t}")
        for name in ("last_country", "last_n_ever"):
            assert rrow[f"pv:{name}"] == row[f"pv:{name}"], (name, entity, t)


# ---------------------------------------------------------------- PIT edge cases

def edge_view(ttl="1h") -> FeatureView:
    return FeatureView(
        name="ev", entity=Entity("card", "card_id"),
        source=Source("tx", "events", event_time_field="ts", columns=COLUMNS),
        aggregations=(Aggregation("count", "amount", ("10m",)), Aggregation("sum", "amount", ("10m",)),
                      Aggregation("mean", "amount", ("10m",)), LatestValue("country", ttl=ttl, name="last_country")),
        allowed_lateness="5m")


def ev(card, ts, amount=1.0, country="FR", partition=0, offset=0, append=None):
    return {"card_id": card, "ts": ts, "event_time_ms": ts, "amount": amount, "country": country, "n": 1,
            "append_time_ms": ts if append is None else append, "partition": partition, "offset": offset}


@pytest.fixture
def edge(tmp_path):
    plan = build_plan([edge_view()])
    events = [ev("c1", T0 + 600_000, 1.0, "FR", offset=0),        # exactly at a window start for t = T0 + 20m
              ev("c1", T0 + 1_200_000, 2.0, "DE", offset=1),      # at t = T0 + 20m: inside the current tick
              ev("c1", T0 + 1_200_400, 4.0, "US", offset=2),      # inside the current tick
              ev("c2", T0 + 5 * H, 7.0, "IT", offset=3),          # only future events for the queries below
              ev("c3", T0, 1.0, "ES", partition=1, offset=5),     # ties: same event time, partitions/offsets
              ev("c3", T0, 2.0, "PT", partition=0, offset=9),
              ev("c3", T0, 3.0, "GR", partition=1, offset=4)]
    write_memory_tiles(tmp_path, plan.views[0], events)
    return plan, tmp_path


def rows(plan, out, spine, refs=("ev:*",), **kw):
    return training_set(plan, spine, list(refs), tiles=out, **kw).to_pylist()


def test_window_start_inclusive_and_current_tick_excluded(edge):
    plan, out = edge
    t = T0 + 1_200_700  # window [T0 + 10m, floor(t, 1s) = T0 + 20m)
    r = rows(plan, out, pa.table({"card_id": ["c1", "c1", "c1"], "ts": [t, T0 + 1_201_000, T0 + 600_000]}))
    assert (r[0]["ev:amount_count_10m"], r[0]["ev:amount_sum_10m"], r[0]["ev:last_country"]) == (1, 1.0, "FR")
    assert (r[1]["ev:amount_count_10m"], r[1]["ev:amount_sum_10m"], r[1]["ev:last_country"]) == (3, 7.0, "US")
    assert (r[2]["ev:amount_count_10m"], r[2]["ev:last_country"]) == (0, None)  # the event at t itself is excluded


def test_ttl_boundary_inclusive(edge):
    plan, out = edge
    spine = pa.table({"card_id": ["c3", "c3", "c3"], "ts": [T0 + H - 1, T0 + H, T0 + H + 1]})  # c3's events: T0
    r = rows(plan, out, spine, refs=("ev:last_country",))
    assert [x["ev:last_country"] for x in r] == ["ES", "ES", None]  # t - ttl == event time is in; 1 ms out is not


def test_ties_break_by_partition_then_offset(edge):
    plan, out = edge
    r = rows(plan, out, pa.table({"card_id": ["c3"], "ts": [T0 + 1000]}))
    # (ts, partition, offset): ES (T0, 1, 5) > GR (T0, 1, 4) > PT (T0, 0, 9)
    assert r[0]["ev:last_country"] == "ES"


def test_no_data_future_only_null_keys_and_duplicates(edge):
    plan, out = edge
    spine = pd.DataFrame({"card_id": ["nobody", "c2", None, "c1", "c1"], "ts": [T0 + H] * 5, "label": [0, 1, 2, 3, 3]})
    r = rows(plan, out, spine)
    for x in r[:3]:  # no data: count and sum 0, others null
        assert (x["ev:amount_count_10m"], x["ev:amount_sum_10m"], x["ev:amount_mean_10m"], x["ev:last_country"]) \
            == (0, 0.0, None, None)
    assert r[3] == r[4] and [x["label"] for x in r] == [0, 1, 2, 3, 3] and len(r) == 5
    assert [x["card_id"] for x in r] == ["nobody", "c2", None, "c1", "c1"]


def test_timezones_normalise_to_utc(edge):
    plan, out = edge
    utc = pd.Timestamp(T0 + 1_200_700, unit="ms", tz="UTC")
    spines = [
        pd.DataFrame({"card_id": ["c1"], "ts": [T0 + 1_200_700]}),                          # epoch ms
        pd.DataFrame({"card_id": ["c1"], "ts": [utc.tz_localize(None)]}),                   # naive = UTC
        pd.DataFrame({"card_id": ["c1"], "ts": [utc]}),                                     # UTC
        pd.DataFrame({"card_id": ["c1"], "ts": [utc.tz_convert("+01:00")]}),                # +01:00
        pd.DataFrame({"card_id": ["c1"], "ts": [utc.tz_convert("US/Pacific")]}),            # US/Pacific
        pd.DataFrame({"card_id": ["c1"], "ts": [utc.tz_convert("+01:00").isoformat()]}),    # ISO string with offset
        pa.table({"card_id": ["c1"], "ts": pa.array([utc.value // 1000], pa.timestamp("us", "Asia/Tokyo"))}),
    ]
    results = [rows(plan, out, s)[0] for s in spines]
    for r in results:
        assert (r["ev:amount_count_10m"], r["ev:last_country"]) == (1, "FR")


def test_files_and_column_order(edge, tmp_path_factory):
    plan, out = edge
    d = tmp_path_factory.mktemp("spines")
    df = pd.DataFrame({"label": [1, 0], "ts": [T0 + 1_201_000, T0 + 1_201_000], "card_id": ["c1", "zz"]})
    df.to_csv(d / "s.csv", index=False)
    df.to_parquet(d / "s.parquet")
    for path in (d / "s.csv", d / "s.parquet"):
        t = training_set(plan, path, ["ev:last_country", "ev:amount_count_10m"], tiles=out)
        assert t.column_names == ["label", "ts", "card_id", "ev:last_country", "ev:amount_count_10m"]
        assert t.column("ev:amount_count_10m").to_pylist() == [3, 0]
        assert t.schema.field("ev:amount_count_10m").type == pa.int64()


def test_csv_entity_ids_stay_strings(tmp_path):
    """A CSV spine's ids are not inferred as numbers: "007" stays "007", the entity the tiles hold."""
    plan = build_plan([edge_view()])
    write_memory_tiles(tmp_path / "tiles", plan.views[0], [ev("007", T0), ev("007", T0 + 1000, offset=1)])
    (tmp_path / "s.csv").write_text(f"card_id,ts\n007,{T0 + 60_000}\n")
    t = training_set(plan, tmp_path / "s.csv", ["ev:amount_count_10m"], tiles=tmp_path / "tiles")
    assert t.column("card_id").to_pylist() == ["007"] and t.column("ev:amount_count_10m").to_pylist() == [2]


def test_rows_past_the_replayed_range_are_refused_or_null(edge):
    """Outside the event times a replay read, a count would read 0 like an entity without events."""
    from backfill.coverage import CoverageError
    plan, out = edge
    m = layout.read_manifest(out, "ev").to_dict()
    layout.write_manifest(out, {**m, "covered": {"from_ms": T0 - H, "to_ms": T0 + 2 * H}})
    spine = pa.table({"card_id": ["c1", "c1", "c3"], "ts": [T0 + 1_200_700, T0 + 3 * H, T0 - H + 300_000]})
    with pytest.raises(CoverageError, match="2 of 3 spine rows .* view 'ev'.*--allow-partial") as info:
        rows(plan, out, spine)
    assert "\n" not in str(info.value)
    r = rows(plan, out, spine, allow_partial=True)
    assert (r[0]["ev:amount_count_10m"], r[0]["ev:amount_sum_10m"], r[0]["ev:last_country"]) == (1, 1.0, "FR")
    for x in r[1:]:  # after the range's end, and a window starting before its start: null, never 0
        assert [x[f"ev:{n}"] for n in ("amount_count_10m", "amount_sum_10m", "amount_mean_10m", "last_country")] \
            == [None] * 4
    assert rows(plan, out, spine.slice(0, 1)) == r[:1]
    layout.write_manifest(out, {**m, "covered": None})  # a replay that covers no complete range
    with pytest.raises(CoverageError, match="1 of 1 spine rows.*no complete range"):
        rows(plan, out, spine.slice(0, 1))


def test_bad_spine_files_are_one_line(edge, tmp_path):
    plan, out = edge
    cases = {"empty.csv": ("", "not a readable CSV"), "ragged.csv": ("card_id,ts\nc1,1,2\n", "Expected 2 columns"),
             "dup.csv": ("card_id,ts,ts\nc1,1,2\n", "column 'ts' twice"),
             "us.csv": ("card_id,ts\nc1,01/02/2026\n", "not ISO-8601")}
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SpineError, match=words) as info:
            training_set(plan, tmp_path / name, ["ev:*"], tiles=out)
        assert "\n" not in str(info.value), name
    (tmp_path / "set.parquet").mkdir()
    with pytest.raises(SpineError, match="one file rather than a dataset directory"):
        training_set(plan, tmp_path / "set.parquet", ["ev:*"], tiles=out)


def test_errors_are_one_line(edge, tmp_path_factory):
    plan, out = edge
    with pytest.raises(SpineError, match="no column 'card_id'"):
        training_set(plan, pd.DataFrame({"x": [1], "ts": [1]}), ["ev:*"], tiles=out)
    with pytest.raises(SpineError, match="no column 'when'"):
        training_set(plan, pd.DataFrame({"card_id": ["a"], "ts": [1]}), ["ev:*"], tiles=out, timestamp_column="when")
    with pytest.raises(SpineError, match="null timestamps"):
        training_set(plan, pd.DataFrame({"card_id": ["a"], "ts": [None]}, dtype=object), ["ev:*"], tiles=out)
    with pytest.raises(BackfillError, match="needs tiles"):
        training_set(plan, pd.DataFrame({"card_id": ["a"], "ts": [1]}), ["ev:*"])
    other = build_plan([edge_view(ttl="2h")])
    with pytest.raises(PlanMismatchError, match="replay view 'ev' again"):
        training_set(other, pd.DataFrame({"card_id": ["a"], "ts": [T0]}), ["ev:*"], tiles=out)
    with pytest.raises(BackfillError, match="source 'txn' is not a source of the definitions \\(sources: tx\\)"):
        training_set(plan, pd.DataFrame({"card_id": ["a"], "ts": [T0]}), ["ev:*"], tiles=out, sources={"txn": "x"})


def test_latest_from_raw_rows_without_tiles(edge, tmp_path_factory):
    plan, out = edge
    d = tmp_path_factory.mktemp("raw")
    src = pd.DataFrame({"card_id": ["c1", "c1", "c1", "c3", "c3", "c3", "c9", "c9"],
                        "ts": [T0 + 600_000, T0 + 1_200_000, T0 + 1_200_400, T0, T0, T0, T0, T0 + 10],
                        "country": ["FR", "DE", "US", "ES", "PT", "GR", None, "late"],
                        "hw_partition": [0, 0, 0, 1, 0, 1, 0, 0], "hw_offset": [0, 1, 2, 5, 9, 4, 0, 1],
                        "hw_append_ms": [T0 + 600_000, T0 + 1_200_000, T0 + 1_200_400, T0, T0, T0, T0, T0 + 10 + 300_001]})
    src.to_parquet(d / "tx.parquet")
    spine = pa.table({"card_id": ["c1", "c1", "c3", "c3", "c9", "zz"],
                      "ts": [T0 + 1_200_700, T0 + 1_201_000, T0 + H, T0 + H + 1, T0 + H, T0]})
    got = training_set(plan, spine, ["ev:last_country"], sources={"tx": d / "tx.parquet"}).column(
        "ev:last_country").to_pylist()
    assert got == ["FR", "US", "ES", None, None, None]  # null values never win; the late row is dropped
    tiles_path = training_set(plan, spine.slice(0, 4), ["ev:last_country"], tiles=out).column("ev:last_country")
    assert tiles_path.to_pylist() == got[:4]


def test_cli_training_set(edge, tmp_path_factory, capsys):
    from headwater.cli import main
    from tests.conftest import EXAMPLE_REPO
    d = tmp_path_factory.mktemp("cli")
    pd.DataFrame({"card_id": ["c1"], "ts": [T0]}).to_parquet(d / "spine.parquet")
    rc = main(["training-set", "--repo", str(EXAMPLE_REPO), "--spine", str(d / "spine.parquet"), "--features",
               "card_velocity:amount_sum_1h", "--out", str(d / "train.parquet"), "--tiles", str(d / "none")])
    assert rc == 2 and "no tiles of view 'card_velocity'" in capsys.readouterr().err
    rc = main(["training-set", "--repo", str(EXAMPLE_REPO), "--spine", str(d / "spine.parquet"), "--features",
               "card_velocity:last_country", "--out", str(d / "train.parquet"), "--source", "transactions"])
    assert rc == 2 and "--source 'transactions': use NAME=PATH" in capsys.readouterr().err


def test_cli_writes_the_training_set(tmp_path, capsys):
    import pyarrow.parquet as pq
    from headwater.cli import main
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    from tests.conftest import EXAMPLE_REPO
    vp = load_definitions(load_repo(EXAMPLE_REPO)).plan.view("card_velocity")
    events = [{"card_id": "c1", "amount": a, "merchant_id": m, "country": "FR", "event_time": T0 + i * 60_000,
               "event_time_ms": T0 + i * 60_000, "append_time_ms": T0 + i * 60_000, "partition": 0, "offset": i}
              for i, (a, m) in enumerate([(10.0, "m1"), (5.5, "m2"), (1.0, "m1")])]
    write_memory_tiles(tmp_path / "tiles", vp, events)
    pd.DataFrame({"card_id": ["c1", "c2", "c1"], "when": ["2026-01-01T01:00:00+01:00", "2026-01-01T00:10:00Z",
                                                           "2026-01-01T00:02:30"], "label": [1, 0, 1]}
                 ).to_csv(tmp_path / "spine.csv", index=False)
    rc = main(["training-set", "--repo", str(EXAMPLE_REPO), "--spine", str(tmp_path / "spine.csv"), "--features",
               "card_velocity:amount_sum_1h,card_velocity:txn_count_10m,card_velocity:merchant_id_distinct_count_1h",
               "--out", str(tmp_path / "out" / "train.parquet"), "--tiles", str(tmp_path / "tiles"),
               "--timestamp-column", "when"])
    assert rc == 0 and "wrote 3 rows" in capsys.readouterr().out
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert [(r["card_velocity:amount_sum_1h"], r["card_velocity:txn_count_10m"],
             r["card_velocity:merchant_id_distinct_count_1h"]) for r in t] == [(0.0, 0, None), (0.0, 0, None),
                                                                             (16.5, 3, 2)]
    # the skew guard's input: each column's definition hash, as `headwater train` compares them
    from backfill.training_set import FEATURE_HASHES_KEY
    from scoring.registry import feature_hashes
    stored = json.loads(pq.read_schema(tmp_path / "out" / "train.parquet").metadata[FEATURE_HASHES_KEY])
    refs = [c for c in pq.read_schema(tmp_path / "out" / "train.parquet").names if ":" in c]
    assert stored == feature_hashes(load_definitions(load_repo(EXAMPLE_REPO)).plan, refs) and len(refs) == 3


def test_latest_value_whose_ttl_is_not_whole_hops_reads_the_coarse_rung_it_needs(tmp_path):
    """A latest value with a 23.5 h TTL (hop 1 h) reads ``[floor(t - 23.5h, 1h), t)``, 24 h long at
    00:10: its cover takes the 1 d tile. Asked alone, that rung used to be skipped (only rungs up
    to the TTL were loaded) and the value came back None; asked with a 7 d count, right."""
    v = FeatureView(name="lv", entity=Entity("card", "card_id"),
                    source=Source("tx", "events", event_time_field="ts", columns=COLUMNS),
                    aggregations=(Aggregation("count", "amount", ("7d",)),
                                  LatestValue("country", ttl="1410m", name="last_country")),
                    allowed_lateness="5m")
    plan = build_plan([v])
    events = [ev("c1", T0 + 2 * H, 1.0, "FR", offset=0)]  # T0 is a UTC midnight
    write_memory_tiles(tmp_path, plan.views[0], events)
    spine = pa.table({"card_id": ["c1"], "ts": [T0 + 24 * H + 600_000]})
    assert rows(plan, tmp_path, spine, ["lv:last_country"])[0]["lv:last_country"] == "FR"
    assert rows(plan, tmp_path, spine, ["lv:*"])[0]["lv:last_country"] == "FR"
