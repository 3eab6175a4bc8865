"""Markers and the exact as_of rule (``online_store.markers``): the tracker's logic, then the
real streaming job (Kafka -> Flink MiniCluster -> tiles topic) and the writer against Redis.

The integration test reads the tiles topic the way the writer may (each partition in order) and
checks the claim the rule rests on: once a query's next marker is read, every tile of the
events up to the previous marker has been read, with at least those events in it."""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections import defaultdict

import pytest
import yaml

from online_store.markers import MarkerTracker
from tests.pipeline import tiles_in_order
from online_store.tiles import MARKER_PREFIX
from streamjobs.dsl import Aggregation, Entity, FeatureView, Source
from streamjobs.plan import build_plan

# ---------------------------------------------------------------- the tracker (pure logic)


def _plan():
    schema = {"type": "record", "name": "E", "fields": [
        {"name": "k", "type": "string"}, {"name": "x", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    src = Source("events", "t", schema=schema, event_time_field="ts", key_fields=("k",))
    view = FeatureView("v", Entity("k", "k"), src, (Aggregation("sum", "x", ("1m", "10m")),))
    return build_plan((view,))


def test_a_marker_confirms_the_one_before_it_for_every_resolution() -> None:
    plan = _plan()
    vp = plan.views[0]
    low, rest = vp.ladder[0], vp.ladder[1:]
    assert rest
    t = MarkerTracker(plan)
    t.add("v", low, 0, "a", 33, 1000)
    t.add("v", low, 0, "a", 65, 2000)
    assert t.confirmed() == []  # the other resolutions have no pair yet
    for r in rest:
        t.add("v", r, 0, "a", 97, 3000)
    assert t.confirmed() == []
    for r in rest[:-1]:
        t.add("v", r, 0, "a", 129, 4000)
    assert t.confirmed() == []  # one resolution still without a pair
    t.add("v", rest[-1], 0, "a", 129, 4000)
    [rec] = t.confirmed()  # low confirms (33, 1000), the others (97, 3000): the smaller holds
    assert (rec["tile_start"], rec["n_events"], rec["max_append_ms"], rec["resolution_ms"]) == (0, 33, 999, 0)
    assert rec["plan_hash"] == vp.plan_hash and rec["view"] == "v"
    assert t.confirmed() == []  # nothing new
    t.add("v", low, 0, "a", 161, 5000)
    [rec] = t.confirmed()
    assert (rec["n_events"], rec["max_append_ms"]) == (65, 1999)  # a ms below: its batch may go on


def test_only_markers_of_one_reader_pair_up_and_a_reread_is_not_a_newer_one() -> None:
    plan = _plan()
    vp = plan.views[0]
    t = MarkerTracker(plan)
    for r in vp.ladder:
        t.add("v", r, 1, "a", 33, 1000)
        t.add("v", r, 1, "a", 33, 1000)  # the same marker read again (a writer restart)
    assert t.confirmed() == []
    for r in vp.ladder:
        t.add("v", r, 1, "b", 70, 2500)  # a restored job: another reader, its first marker
    assert t.confirmed() == []  # never confirms reader a's last marker (its flush may have been cut short)
    for r in vp.ladder:
        t.add("v", r, 1, "b", 90, 2600)
    assert [x["n_events"] for x in t.confirmed()] == [70]
    for r in vp.ladder:
        t.add("v", r, 1, "a", 99, 2700)  # reader a's pair confirms 33: below what holds already
    assert t.confirmed() == []
    t.add("other", vp.ladder[0], 1, "a", 99, 1)  # unknown view, unknown resolution: ignored
    t.add("v", 7, 1, "a", 99, 1)
    assert t.confirmed() == []


def test_the_settle_rule_forgets_partitions_a_rebalance_took_away() -> None:
    """The fallback rule waits until every tiles partition reaches the end offsets taken after a
    progress record settled; a partition revoked meanwhile never would (this writer no longer
    reads it), so it leaves the wait, and the progress records read from it are dropped: their
    new owner reads them again."""
    from online_store.writer import _AT, _Settler

    s = _Settler(1000)
    s.add([{"p": "a", _AT: (0, 3)}, {"p": "b", _AT: (1, 4)}, {"p": "c", _AT: (2, 7)}], now=0.0)
    assert s.held() == {0: 3, 1: 4, 2: 7}
    ends = {0: (0, 5), 1: (0, 6), 2: (0, 9)}
    assert s.poll(0.5, {0: 5, 1: 6, 2: 0}, lambda: ends) == []  # not yet settled
    assert s.poll(1.0, {0: 5, 1: 6, 2: 8}, lambda: ends) == []  # partition 2 is behind its end offset
    assert s.poll(5.0, {0: 5, 1: 6, 2: 8}, lambda: ends) == []  # ... and would stay so once revoked
    s.drop({2})
    assert [r["p"] for r in s.poll(5.1, {0: 5, 1: 6, 2: 8}, lambda: ends)] == ["a", "b"]
    assert not s.busy and s.held() == {}
    s.add([{"p": "d", _AT: (1, 9)}, {"p": "e", _AT: (0, 8)}], now=6.0)
    s.drop({1})  # still pending: a record read from a revoked partition is forgotten
    assert s.held() == {0: 8}


# ---------------------------------------------------------------- the real job


def _two_partition_repo(temp_repo):
    from headwater.config import load_repo
    cfg = yaml.safe_load((temp_repo / "headwater.yaml").read_text())
    cfg["topics"]["events"].update({"log_append_time": False, "partitions": 2})
    (temp_repo / "headwater.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_repo(temp_repo)


@pytest.mark.integration
@pytest.mark.flink
def test_markers_prove_what_the_writer_has_read(stack, temp_repo, unique) -> None:
    import redis as redis_lib
    from confluent_kafka import Producer
    from headwater.generator import GeneratorConfig, generate_table
    from headwater.repo_schemas import codec_for
    from headwater.topics import create_topics
    from online_store import fetch, keys, run_writer
    from online_store.metrics import WriterMetrics
    from streamjobs.compiler import KafkaBounds
    from streamjobs.job import compile_features, submit
    from streamjobs.repo import load_definitions

    repo = _two_partition_repo(temp_repo)
    create_topics(stack, repo.topics)
    defs = load_definitions(repo)
    now = int(time.time() * 1000)
    table, _ = generate_table(GeneratorConfig(rate=400, entities=300, duration_s=60, seed=9, start_ms=now - 120_000))
    events = table.to_pylist()
    codec = codec_for(repo, "events")
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True, "linger.ms": 5})
    topic = repo.topics.events.name
    where: list[tuple[int, int]] = []  # (partition, offset) per event
    appends: dict[tuple[int, int], int] = {}
    count = [0, 0]
    for i, e in enumerate(events):
        part = i % 3 % 2  # uneven: two of three events to partition 0
        where.append((part, count[part]))
        appends[(part, count[part])] = now - 60_000 + i  # CreateTime: the append time is ours
        p.produce(topic, codec.encode(e), e["card_id"].encode(), partition=part, timestamp=now - 60_000 + i)
        count[part] += 1
    assert p.flush(60) == 0
    job = compile_features(stack, repo, defs, bounds=KafkaBounds(startup="earliest-offset", bounded="latest-offset"),
                           group_id=f"markers-{unique}")
    assert job.markers
    # many flushes (the size trigger counts rows per aggregate): many marker pairs to check, and
    # flushes in the middle of a mini-batch, which a two-phase aggregation would reorder
    submit(stack, dataclasses.replace(job, config={**job.config, "table.exec.mini-batch.size": "256"})).wait(600_000)

    by_part = {p: [v for _, v in recs] for p, recs in tiles_in_order(stack, repo).items()}
    lateness = {v.name: v.allowed_lateness_ms for v in defs.plan.views}
    key_field = {v.name: v.entity_key for v in defs.plan.views}
    et = {v.name: v.event_time_field for v in defs.plan.views}
    # per query and source partition: offsets of its on-time events per tile key, sorted
    expected: dict[tuple[str, int, int], dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
    for vp in defs.plan.views:
        for i, e in enumerate(events):
            part, off = where[i]
            if appends[(part, off)] - e[et[vp.name]] > lateness[vp.name]:
                continue
            for r in vp.ladder:
                tile = (str(e[key_field[vp.name]]), e[et[vp.name]] - e[et[vp.name]] % r)
                expected[(vp.name, r, part)][tile].append(off)
    home: dict[tuple[str, int], int] = {}
    checked = 0
    for tiles_part, recs in by_part.items():
        seen: dict[tuple[str, int], dict[tuple[str, int], int]] = defaultdict(dict)
        last_marker: dict[tuple[str, int, int, str], int] = {}
        for rec in recs:
            q = (rec["view"], rec["resolution_ms"])
            assert home.setdefault(q, tiles_part) == tiles_part, f"query {q} writes more than one tiles partition"
            if q[1] == 0:
                continue  # progress
            if not rec["entity"].startswith(MARKER_PREFIX):
                seen[q][(rec["entity"], rec["tile_start"])] = rec["n_events"]
                continue
            part = -1 - rec["tile_start"]
            assert part in (0, 1)
            assert rec["max_append_ms"] == appends[(part, rec["n_events"] - 1)]  # the copied record's append time
            mk = (*q, part, rec["entity"])
            before = last_marker.get(mk)
            assert before is None or rec["n_events"] > before
            last_marker[mk] = rec["n_events"]
            if before is None:
                continue
            # every tile holds at least the events of this partition before `before` (its other
            # events come from the other partition: a tile may hold more, never fewer)
            for tile, offs in expected[(*q, part)].items():
                need = bisect.bisect_left(offs, before)
                if need:
                    assert seen[q].get(tile, 0) >= need, (q, part, tile, before, seen[q].get(tile), need)
            checked += 1
    ladder = sum(len(v.ladder) for v in defs.plan.views)
    assert len([q for q in home if q[1] != 0]) == ladder
    assert len(set(home.values())) > 1  # the queries spread over the tiles partitions
    assert checked >= 20 * ladder, f"too few marker pairs to check ({checked}): the job made too few flushes"

    # the writer, with a settle rule that never fires (10 min) and a CreateTime topic (no
    # idleness rule): whatever as_of it publishes comes from the markers alone
    client = redis_lib.Redis.from_url(stack.redis_url)
    stop, out, metrics = threading.Event(), {}, WriterMetrics()
    th = threading.Thread(target=lambda: out.update(stats=run_writer(
        stack, repo, defs.plan, group_id=f"w-{unique}", stop_event=stop, settle_ms=600_000, redis_client=client,
        metrics=metrics)))
    th.start()
    try:
        deadline = time.monotonic() + 60
        as_of = None
        while time.monotonic() < deadline:
            as_of = fetch(client, repo.project, defs.plan, ["nobody"]).as_of_ms
            if as_of and all(a is not None for a in as_of.values()):
                break
            time.sleep(0.2)
        assert as_of and all(a is not None for a in as_of.values()), f"no as_of from markers: {as_of}"
        for vp in defs.plan.views:  # confirmed = a marker's event, at most the last one's
            assert as_of[vp.name] + 1 in set(appends.values()) and as_of[vp.name] < max(appends.values())
            assert client.hget(keys.progress_key(repo.project, vp), "p:1") is not None
    finally:
        stop.set()
        th.join(30)
    assert out["stats"].markers > 0 and out["stats"].written > 0
    published = {smp.labels["rule"]: smp.value for metric in metrics.progress.collect() for smp in metric.samples
                 if smp.name.endswith("_total")}
    assert published.get("markers", 0) > 0 and published.get("settle", 0) == 0, published
    for k in client.scan_iter(match=keys.project_pattern(repo.project)):
        client.delete(k)
