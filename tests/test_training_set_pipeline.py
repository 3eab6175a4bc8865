"""training_set(t) == fetch(at_ms=t) through the real pipeline: every conformance vector produced to
Kafka, aggregated by the Flink SQL job into the tiles topic, written to Redis by the online writer
(fetch) and copied from the tiles topic into the Parquet layout (training_set)."""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa
import pytest

from backfill import layout, training_set
from tests.pipeline import prefixed, read_tiles
from tests.test_conformance_ir import CASES, assert_value
from tests.test_training_set import same

pytestmark = [pytest.mark.integration, pytest.mark.flink,
              pytest.mark.skipif(not CASES, reason="conformance vectors not found")]


def topic_tiles_to_layout(out, plan, records) -> int:
    """Latest tile records of the tiles topic (``read_tiles``) into the Parquet layout, per view."""
    by_view = defaultdict(list)
    from online_store.tiles import is_marker
    for (view, _, res, _), rec in records.items():
        if res > 0 and not is_marker(rec):
            by_view[view].append(rec)
    n = 0
    for v in plan.views:
        n += layout.write_tiles(out, v, layout.tiles_table(v, by_view.get(v.name, [])))
        layout.write_manifest(out, {"view": v.name, "plan_hash": v.plan_hash, "tick_ms": v.tick_ms,
                                    "range": {"source": "tiles topic"}, "events_read": 0, "events_late": 0,
                                    "tiles_written": len(by_view.get(v.name, [])), "finished_ms": 0})
    return n


@pytest.fixture(scope="module")
def run(conformance_pipeline):
    repo, defs, cases, _ = conformance_pipeline  # the session's one Flink run (tests/conftest.py)
    return repo, defs, cases


@pytest.fixture(scope="module")
def online(stack, run):
    """Tiles topic -> online writer -> Redis (db 0, keys of this run's unique project, deleted after)."""
    import redis as redis_lib
    from online_store import run_writer
    repo, defs, _ = run
    client = redis_lib.Redis.from_url(stack.redis_url, decode_responses=False)
    stats = run_writer(stack, repo, defs.plan, group_id=f"w-tsp-{repo.project}", idle_exit_s=3.0,
                       redis_client=client, history_ms=400 * 86_400_000)  # own group: the session shares the topic
    assert stats.written > 0 and stats.undecodable == 0
    yield client
    for key in client.scan_iter(match=f"*{repo.project}*".encode()):
        client.delete(key)


def close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return same(a, b)


def check_every_query(repo, defs, cases, client, tiles, *, exact: bool = True) -> int:
    """training_set over ``tiles`` == fetch from Redis (bit for bit when ``exact``: the same tiles), and
    == the vector's expected values."""
    from online_store import fetch
    checked = 0
    for case in cases:
        vp = defs.plan.view(case["name"])
        ent = case["view"]["entity"]
        ops = {f.name: f.op for f in vp.features}
        ids = [prefixed(case["name"], q[ent]) for q in case["queries"]]
        spine = pa.table({ent: ids, "ts": [q["t_ms"] for q in case["queries"]]})
        offline = training_set(defs.plan, spine, [f"{vp.name}:*"], tiles=tiles).to_pylist()
        for q, e, row in zip(case["queries"], ids, offline):
            online = fetch(client, repo.project, defs.plan, [e], [f"{vp.name}:*"], at_ms=q["t_ms"]).rows()[0]
            for f in vp.features:
                ref = f"{vp.name}:{f.name}"
                assert (same if exact else close)(row[ref], online[ref]), (case["name"], q, ref, row[ref], online[ref])
                checked += 1
            for name, expected in q["expected"].items():
                assert_value(name, ops[name], expected, row[f"{vp.name}:{name}"], f"{case['name']} {e}@{q['t_ms']}")
    return checked


def test_training_set_from_topic_tiles_equals_fetch(stack, run, online, tmp_path):
    repo, defs, cases = run
    out = tmp_path / "tiles"
    assert topic_tiles_to_layout(out, defs.plan, read_tiles(stack, repo)) > 0
    assert check_every_query(repo, defs, cases, online, out) >= sum(len(c["queries"]) for c in cases)


def test_training_set_from_replay_equals_fetch(stack, run, online, tmp_path):
    """The same check with the Parquet tiles of a bounded replay (Flink batch mode). Floats to 1e-12, not
    bit for bit: batch SUM adds a tile's events in another order than the streaming job, so replay and
    streaming tiles themselves differ in the last bits (the merge of equal tiles is bit-identical above)."""
    from replay import run_replay
    repo, defs, cases = run
    out = tmp_path / "replay"
    run_replay(repo, out, conn=stack, definitions=defs, progress=None)
    assert all(layout.read_manifest(out, v.name) is not None for v in defs.plan.views)
    assert check_every_query(repo, defs, cases, online, out, exact=False) >= sum(len(c["queries"]) for c in cases)
