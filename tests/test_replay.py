"""Replay through the real stack: Kafka (CreateTime test topic) -> Flink batch SQL -> Parquet tiles.

The topic also holds an aborted transaction repeating the biggest vector: a replay must skip it.

The conformance vectors are produced once (tests/pipeline.py injects their append times as record
timestamps and keeps their per-partition order); each test runs one replay. The Parquet tiles must
equal, field for field, the tiles ``ir.update`` builds from exactly the records the range selects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from replay.errors import ReplayError

from tests.oracle import feature_view_from_case
from tests.pipeline import (EVENT_TIME, assert_tiles_equal, event_schema, pipeline_view, prefixed, produce_aborted,
                            produce_cases, setup)
from tests.test_conformance_ir import CASES

pytestmark = [pytest.mark.integration, pytest.mark.flink,
              pytest.mark.skipif(not CASES, reason="conformance vectors not found")]

BIG = "randomized_small"  # the vector with three partitions and 3,000 events


@pytest.fixture(scope="module")
def produced(stack, tmp_path_factory):
    from headwater.config import clone_repo
    from streamjobs.plan import build_plan
    from streamjobs.repo import Definitions
    from tests.conftest import EXAMPLE_REPO, new_suffix
    unique = new_suffix()
    repo = setup(stack, clone_repo(EXAMPLE_REPO, tmp_path_factory.mktemp("replay") / "repo", unique))
    schema = event_schema()
    cases = [json.loads(p.read_text()) for p in CASES]
    views = tuple(pipeline_view(feature_view_from_case(c, event_time_field=EVENT_TIME), repo.topics.events.name,
                                schema) for c in cases)
    offsets = produce_cases(stack, repo, schema, [(c["name"], c["view"]["entity"], c["events"]) for c in cases])
    # the big case once more in an aborted transaction: a replay reading uncommitted would count it twice
    big = next(c for c in cases if c["name"] == BIG)
    produce_aborted(stack, repo, schema, BIG, big["view"]["entity"], big["events"])
    events = []  # every record of the topic, with its broker offset
    for c in cases:
        ent = c["view"]["entity"]
        events += [{**e, ent: prefixed(c["name"], e[ent]), "amount": float(e["amount"]), "case": c["name"],
                    "offset": offsets[(c["name"], e["partition"], e["offset"])]} for e in c["events"]]
    return repo, Definitions(views, build_plan(views)), cases, events, tmp_path_factory.mktemp("out")


def _replay(stack, produced, out, **kw):
    from replay import run_replay
    repo, defs, *_ = produced
    lines: list[str] = []
    stats = run_replay(repo, out, conn=stack, definitions=defs, progress=lines.append, **kw)
    return stats, lines


def _parquet_tiles(out: Path, vp) -> dict:
    """(view, entity, resolution_ms, tile_start) -> row, read through the shared layout (plan-checked)."""
    from backfill import layout
    rows = layout.open_dataset(out, vp).to_table().to_pylist()
    for r in rows:
        assert r["date"] == layout.tile_date(r["tile_start"]) and r["resolution_ms"] in vp.ladder, r
        assert r["plan_hash"] == vp.plan_hash
    keys = [(vp.name, r["entity"], r["resolution_ms"], r["tile_start"]) for r in rows]
    assert len(set(keys)) == len(keys), "a tile written twice"
    return dict(zip(keys, rows))


def _case_events(events, case):
    return [e for e in events if e["case"] == case]


def test_replay_tiles_equal_ir_update_tiles_and_late_count(stack, produced):
    from backfill import layout
    from streamjobs import windows
    repo, defs, cases, events, tmp = produced
    out = tmp / "all"
    stats, lines = _replay(stack, produced, out)
    assert stats.events_read == len(events)
    assert any("records" in m for m in lines) and stats.summary() in lines
    for case in cases:
        vp = defs.plan.view(case["name"])
        tiles = _parquet_tiles(out, vp)
        assert_tiles_equal(vp, tiles, _case_events(events, case["name"]), entity_prefix=case["name"] + "|")
        # every view reads the whole topic: lateness is the view's own rule over all records
        late = sum(not windows.on_time(e["event_time_ms"], e["append_time_ms"], vp.allowed_lateness_ms,
                                       vp.allowed_future_ms) for e in events)
        m = layout.read_manifest(out, vp.name)
        assert (m.events_read, m.events_late, m.plan_hash) == (len(events), late, vp.plan_hash)
        assert m.tiles_written == len(tiles) == next(v.tiles_written for v in stats.views if v.view == vp.name)
        assert {int(p): r for p, r in m.range["offsets"].items()}.keys() == {0, 1, 2}
        assert m.covered[0] is None and m.covered[1] <= m.finished_ms  # the whole topic, to the resolve time
        assert all(f.name.endswith(".parquet") for f in layout.tile_files(out, vp.name))
    assert next(v.events_late for v in stats.views if v.view == "lateness_by_append_time") > 0


def test_offset_bounds_select_exactly_those_records_and_rerun_is_idempotent(stack, produced):
    from backfill import layout
    _, defs, _, events, tmp = produced
    big = _case_events(events, BIG)
    by_p = {p: sorted(e["offset"] for e in big if e["partition"] == p) for p in (0, 1, 2)}
    lo0, hi0 = by_p[0][len(by_p[0]) // 4], by_p[0][3 * len(by_p[0]) // 4]
    lo2 = by_p[2][len(by_p[2]) // 2]
    out = tmp / "offsets"
    stats, _ = _replay(stack, produced, out, views=[BIG], offsets=f"0:{lo0}-{hi0},2:{lo2}-")
    chosen = [e for e in events if (e["partition"] == 0 and lo0 <= e["offset"] < hi0)
              or (e["partition"] == 2 and e["offset"] >= lo2)]
    assert stats.events_read == len(chosen) and len(chosen) > 100
    vp = defs.plan.view(BIG)
    first = _parquet_tiles(out, vp)
    assert_tiles_equal(vp, first, [e for e in chosen if e["case"] == BIG], entity_prefix=BIG + "|")
    assert layout.read_manifest(out, BIG).range["offsets"].keys() == {"0", "2"}
    files_before = layout.tile_files(out, BIG)

    _replay(stack, produced, out, views=[BIG], offsets=f"0:{lo0}-{hi0},2:{lo2}-")
    files_after = layout.tile_files(out, BIG)
    assert len(files_after) == len(files_before) and not set(files_after) & set(files_before)  # replaced
    second = _parquet_tiles(out, vp)
    assert second.keys() == first.keys()
    assert all((second[k]["n_events"], second[k]["max_append_ms"]) == (first[k]["n_events"], first[k]["max_append_ms"])
               for k in first)
    # same IRs (distinct as sets; float sums up to the merge order of parallel partial aggregates)
    assert_tiles_equal(vp, second, [e for e in chosen if e["case"] == BIG], entity_prefix=BIG + "|")

    # a range that does not cover the one replayed there would silently drop its tiles: refused,
    # before any job runs; with replace=True the view's tiles are the new range's, all of them
    with pytest.raises(ReplayError, match=f"does not read 0:{lo0}-{hi0}, 2:{lo2}-.*--replace"):
        _replay(stack, produced, out, views=[BIG], offsets=f"0:{hi0}-")
    assert layout.tile_files(out, BIG) == files_after
    _replay(stack, produced, out, views=[BIG], offsets=f"0:{hi0}-", replace=True)
    third = [e for e in events if e["partition"] == 0 and e["offset"] >= hi0 and e["case"] == BIG]
    assert_tiles_equal(vp, _parquet_tiles(out, vp), third, entity_prefix=BIG + "|")
    assert layout.read_manifest(out, BIG).range["offsets"].keys() == {"0"}


def test_timestamp_bounds_select_records_by_kafka_timestamp(stack, produced):
    """[from, to) on the record timestamp, resolved per partition like Kafka's offsets_for_times:
    from the first offset whose timestamp is >= the bound."""
    _, defs, _, events, tmp = produced
    big = sorted(_case_events(events, BIG), key=lambda e: e["append_time_ms"])
    start, end = big[len(big) // 3]["append_time_ms"], big[2 * len(big) // 3]["append_time_ms"]
    out = tmp / "times"
    stats, _ = _replay(stack, produced, out, views=[BIG], start=start, end=end)

    def first_offset(p, ts):
        offs = [e["offset"] for e in events if e["partition"] == p and e["append_time_ms"] >= ts]
        return min(offs, default=max((e["offset"] + 1 for e in events if e["partition"] == p), default=0))

    chosen = [e for e in events if first_offset(e["partition"], start) <= e["offset"] < first_offset(e["partition"], end)]
    assert stats.events_read == len(chosen) and 0 < len(chosen) < len(events)
    vp = defs.plan.view(BIG)
    assert_tiles_equal(vp, _parquet_tiles(out, vp), [e for e in chosen if e["case"] == BIG], entity_prefix=BIG + "|")
    assert pq.read_metadata(next(iter((out / f"view={BIG}").rglob("*.parquet")))).num_rows > 0


def test_one_statement_set_reads_kafka_once(stack, temp_repo):
    """EXPLAIN of the replay job for the example repository: every tile query and the stats
    queries of both views share one Kafka scan (source reuse), so history is read once."""
    from headwater.config import load_repo
    from replay.sql import batch_config, build_job
    from streamjobs.compiler import KafkaBounds
    from streamjobs.job import bindings, table_env
    from streamjobs.repo import load_definitions
    repo = load_repo(temp_repo)  # a copy: bindings() registers schemas in the repo's store
    defs = load_definitions(repo)
    sources, _, _ = bindings(repo, defs)
    bounds = KafkaBounds(startup="earliest-offset", bounded="latest-offset")
    job = build_job(list(defs.plan.views), sources, {v.topic: bounds for v in defs.plan.views},
                    stack.bootstrap_servers, "explain", Path("/nonexistent/work"))
    env = table_env(stack, mode="batch", extra=batch_config())
    for stmt in job.ddl:
        env.execute_sql(stmt)
    stmts = env.create_statement_set()
    for ins in job.inserts:
        stmts.add_insert_sql(ins)
    plan = stmts.explain().split("== Optimized Execution Plan ==")[1]
    assert plan.count("TableSourceScan(") == 1 and "Reused(" in plan
    assert len(job.inserts) == 2 * len(defs.plan.views)
