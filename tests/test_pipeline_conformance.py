"""Every conformance vector through the real pipeline: Kafka -> Flink SQL (streaming) -> tiles topic.

Tiles Flink wrote must equal, field for field, the tiles ``ir.update`` builds from the same events
(MemoryTiler), and fetches from Redis must reproduce every expected value (see tests/pipeline.py
for how record timestamps and offsets are injected).
"""

from __future__ import annotations

import time

import pytest

from tests.pipeline import assert_tiles_equal, prefixed, read_tiles
from tests.oracle import DEFAULT_FUTURE_MS
from tests.test_conformance_ir import CASES, assert_value

pytestmark = [pytest.mark.integration, pytest.mark.flink,
              pytest.mark.skipif(not CASES, reason="conformance vectors not found")]


@pytest.fixture
def conformance_run(conformance_pipeline):
    return conformance_pipeline  # one Flink run per session (tests/conftest.py)


def test_flink_tiles_equal_ir_update_tiles(stack, conformance_run):
    repo, defs, cases, offsets = conformance_run
    flink = read_tiles(stack, repo)
    for case in cases:
        vp = defs.plan.view(case["name"])
        ent = case["view"]["entity"]
        events = [{**e, ent: prefixed(case["name"], e[ent]), "amount": float(e["amount"]),
                   "offset": offsets[(case["name"], e["partition"], e["offset"])]} for e in case["events"]]
        assert_tiles_equal(vp, flink, events, entity_prefix=case["name"] + "|")


def _late_by_partition(case: dict, cases: list[dict]) -> dict[int, int]:
    """Brute force, from DESIGN's rule: late = appended more than allowed_lateness after its event
    time; and Headwater's: ahead = event time more than allowed_future after its append time. Every
    vector's events share one topic, so each view counts all of them by its own bounds."""
    lateness = int(case["view"]["allowed_lateness_ms"])
    future = int(case["view"].get("allowed_future_ms", DEFAULT_FUTURE_MS))
    out: dict[int, int] = {}
    for e in (e for c in cases for e in c["events"]):
        if e["append_time_ms"] - e["event_time_ms"] > lateness or e["event_time_ms"] - e["append_time_ms"] > future:
            out[int(e["partition"])] = out.get(int(e["partition"]), 0) + 1
    return out


def test_streaming_job_counts_the_events_it_drops_as_late(stack, conformance_run):
    """DESIGN: a late event is dropped *and counted*. The job's late-count records (resolution -1,
    one per view and source partition) equal the brute-force count; no record where none is late."""
    repo, defs, cases, _ = conformance_run
    flink = read_tiles(stack, repo)
    late_cases = 0
    for case in cases:
        got = {k[3]: rec["n_events"] for k, rec in flink.items() if k[0] == case["name"] and k[2] == -1}
        want = _late_by_partition(case, cases)
        assert got == want, case["name"]
        late_cases += bool(want)
    assert late_cases >= 1  # lateness_by_append_time's event at least: the test saw late events


def test_fetch_after_quiesce_reproduces_every_vector(stack, conformance_run):
    """Tiles topic -> online writer -> Redis -> fetch(at=t) for every query of every vector."""
    import redis as redis_lib
    from online_store import fetch, run_writer
    repo, defs, cases, _ = conformance_run
    client = redis_lib.Redis.from_url(stack.redis_url, decode_responses=False)
    from online_store.metrics import WriterMetrics
    metrics = WriterMetrics()
    stats = run_writer(stack, repo, defs.plan, group_id=f"w-conf-{repo.project}", idle_exit_s=3.0, redis_client=client,
                       history_ms=400 * 86_400_000, metrics=metrics)  # the vectors are months old; keep it all
    assert stats.written > 0 and stats.undecodable == 0 and stats.rejected_plan == 0 and stats.invalid == 0
    # the events topic uses CreateTime here (the vectors' timestamps): no idleness rule, so as_of
    # is the vectors' own newest append time of the quietest partition, not the writer's clock
    as_of = fetch(client, repo.project, defs.plan, ["nobody"]).as_of_ms
    assert as_of and all(a is not None and a < time.time() * 1000 - 86_400_000 for a in as_of.values()), as_of
    try:
        for case in cases:  # the writer's late gauge: the job's counts, summed over source partitions
            want = sum(_late_by_partition(case, cases).values())
            got = metrics.registry.get_sample_value("headwater_writer_events_late", {"view": case["name"]})
            assert (got or 0) == want, case["name"]
        for case in cases:
            vp = defs.plan.view(case["name"])
            ops = {f.name: f.op for f in vp.features}
            ent = case["view"]["entity"]
            for qry in case["queries"]:
                res = fetch(client, repo.project, defs.plan, [prefixed(case["name"], qry[ent])],
                            [f"{vp.name}:*"], at_ms=qry["t_ms"])
                got = res.rows()[0]
                for name, expected in qry["expected"].items():
                    assert_value(name, ops[name], expected, got[f"{vp.name}:{name}"] if f"{vp.name}:{name}" in got
                                 else got[name], f"{case['name']} {qry[ent]}@{qry['t_ms']}")
    finally:
        for key in client.scan_iter(match=f"*{repo.project}*".encode()):
            client.delete(key)
