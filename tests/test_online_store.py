"""Online store against the real redis-server: conformance through Redis, monotonic writes,
trimming and TTL, no-data defaults, one round trip per fetch, and compiled == scalar engines."""

from __future__ import annotations

import dataclasses

import json
import math
import random
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from online_store import TileWriter, fetch, keys, reader
from online_store.errors import FetchArgumentError
from online_store.metrics import WriterMetrics
from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source, build_plan, ir, windows
from streamjobs.plan import FeaturePlan, ViewPlan, build_view_plan

try:
    from conftest import CONFORMANCE_DIR
    from oracle import feature_view_from_case, oracle_values, view_spec_from_case
    from test_conformance_ir import CASES, assert_value
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.conftest import CONFORMANCE_DIR
    from tests.oracle import feature_view_from_case, oracle_values, view_spec_from_case
    from tests.test_conformance_ir import CASES, assert_value

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- helpers (also used by test_writer_kafka)

def tile_records(vp: ViewPlan, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Final tile records (tile topic value fields) of every ladder resolution, built with ``ir``."""
    kept = [e for e in events if windows.on_time(e["event_time_ms"], e["append_time_ms"], vp.allowed_lateness_ms,
                                                 vp.allowed_future_ms)]
    groups: dict[tuple[str, int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for e in kept:
        for r in vp.ladder:
            groups[(str(e[vp.entity_key]), r, windows.tile_start(e["event_time_ms"], r))].append(e)
    out = []
    for (entity, r, s), evs in sorted(groups.items()):
        cols = {f.column: np.array([e.get(f.column) for e in evs], dtype=object) for f in vp.fields}
        tile = ir.tile_from_events(vp.fields, cols, [e["event_time_ms"] for e in evs],
                                   [e["partition"] for e in evs], [e["offset"] for e in evs])
        out.append({"view": vp.name, "entity": entity, "resolution_ms": r, "tile_start": s,
                    "plan_hash": vp.plan_hash, "n_events": len(evs),
                    "max_append_ms": max(e["append_time_ms"] for e in evs), **ir.to_row(tile)})
    return out


def progress_record(vp: ViewPlan, partition: int, append_ms: int, n: int = 1) -> dict[str, Any]:
    rec = {"view": vp.name, "entity": "", "resolution_ms": 0, "tile_start": partition, "plan_hash": vp.plan_hash,
           "n_events": n, "max_append_ms": append_ms}
    rec.update({f.name: None for f in vp.fields})
    return rec


def drop_project(client: Any, project: str) -> None:
    ks = list(client.scan_iter(match=keys.project_pattern(project), count=1000))
    if ks:
        client.delete(*ks)


@pytest.fixture
def rds(stack) -> Any:
    client = redis_lib.Redis.from_url(stack.redis_url)
    yield client
    client.close()


@pytest.fixture
def project(rds: Any, unique: str) -> str:
    name = f"t{unique}"
    yield name
    drop_project(rds, name)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def small_view(name: str = "card", **kw: Any) -> FeatureView:
    """Every op over a few windows, one source; used by the monotonic, trim and engine tests."""
    src = Source("tx", "tx.none", event_time_field="event_time_ms",
                 columns={"card_id": "string", "amount": "double", "n": "long", "merchant": "string",
                          "event_time_ms": "long"})
    aggs = (Aggregation("count", "amount", ("1m", "10m")), Aggregation("sum", "amount", ("10m",)),
            Aggregation("mean", "amount", ("1h",)), Aggregation("stddev", "amount", ("1h",)),
            Aggregation("min", "amount", ("10m",)), Aggregation("max", "n", ("1h",)),
            Aggregation("last", "merchant", ("1h",)), Aggregation("distinct_count", "merchant", ("10m",)),
            LatestValue("merchant"), LatestValue("amount", ttl="30m"))
    return FeatureView(name, Entity("card", "card_id"), src, aggs, **kw)


# ---------------------------------------------------------------- conformance through Redis

needs_vectors = pytest.mark.skipif(not CASES, reason=f"conformance vectors not found at {CONFORMANCE_DIR}")


@needs_vectors
@pytest.mark.parametrize("engine,read", [("compiled", "hmget"), ("compiled", "hgetall"), ("scalar", "hmget"),
                                         ("auto", "hgetall"), ("auto", "auto")])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_conformance_vectors_through_redis(path: Path, engine: str, read: str, rds: Any, project: str) -> None:
    """Stream replayed in query-time order: before a query at t, every tile starting at or before t
    is in Redis (trimming on, anchored at <= t), then fetch(at=t) of the query entity and of all
    entities at once must give the vector's values (the others: the oracle's)."""
    case = _load(path)
    vp = build_view_plan(feature_view_from_case(case))
    plan = FeaturePlan((vp,), vp.plan_hash)
    spec = view_spec_from_case(case)
    ops = {f.name: f.op for f in spec.features}
    records = sorted(tile_records(vp, case["events"]), key=lambda r: r["tile_start"])
    writer = TileWriter(rds, project, plan)
    entities = sorted({str(e[spec.entity_field]) for e in case["events"]} | {str(q[spec.entity_field]) for q in case["queries"]})
    done = 0
    for q in sorted(case["queries"], key=lambda q: q["t_ms"]):
        t = q["t_ms"]
        upto = done
        while upto < len(records) and records[upto]["tile_start"] <= t:
            upto += 1
        writer.write(records[done:upto])
        done = upto
        where = f"{case['name']} {q[spec.entity_field]}@{t}"
        got = fetch(rds, project, plan, [str(q[spec.entity_field])], at_ms=t, engine=engine, read=read).rows()[0]
        for name, expected in q["expected"].items():
            assert_value(name, ops[name], expected, got[f"{vp.name}:{name}"], where)
            alone = fetch(rds, project, plan, [str(q[spec.entity_field])], refs=[f"{vp.name}:{name}"], at_ms=t,
                          engine=engine, read=read).rows()[0]  # its layout merges only its own IR fields
            assert_value(name, ops[name], expected, alone[f"{vp.name}:{name}"], f"{where} (alone)")
        everyone = fetch(rds, project, plan, entities + entities[:1], at_ms=t, engine=engine, read=read).rows()
        for row in everyone:
            exp = oracle_values(spec, case["events"], _orig(case, spec.entity_field, row["entity"]), t)
            for name, expected in exp.items():
                assert_value(name, ops[name], expected, row[f"{vp.name}:{name}"], f"{where} (batch, {row['entity']})")


def _orig(case: Mapping[str, Any], field: str, entity: str) -> Any:
    for e in list(case["events"]) + list(case["queries"]):
        if str(e[field]) == entity:
            return e[field]
    return entity


# ---------------------------------------------------------------- monotonic writes


def _tile(vp: ViewPlan, entity: str, r: int, s: int, n: int, a: int, amount: float) -> dict[str, Any]:
    events = [{"card_id": entity, "amount": amount, "n": 1, "merchant": f"m{i}", "event_time_ms": s,
               "append_time_ms": a, "partition": 0, "offset": i} for i in range(n)]
    rec = next(x for x in tile_records(vp, events) if x["resolution_ms"] == r)
    return rec


def _stored_version(rds: Any, project: str, vp: ViewPlan, entity: str, r: int, s: int) -> tuple[int, int] | None:
    v = rds.hget(keys.entity_key(project, vp, entity), keys.tile_field(r, s))
    return None if v is None else keys.VERSION.unpack_from(v)


@pytest.fixture
def card_plan() -> FeaturePlan:
    return build_plan(small_view())


def test_older_version_never_overwrites_newer(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    vp = card_plan.views[0]
    s = 1_704_067_200_000
    w = TileWriter(rds, project, card_plan)
    newer, older = _tile(vp, "c1", 1000, s, 3, s + 500, 2.0), _tile(vp, "c1", 1000, s, 2, s + 900, 1.0)
    assert w.write([newer]).written == 1
    st_ = w.write([older])
    assert (st_.written, st_.stale) == (0, 1)
    assert _stored_version(rds, project, vp, "c1", 1000, s) == (3, s + 500)
    again = w.write([newer])
    assert (again.written, again.stale) == (0, 1)  # equal version: a no-op
    same_n_later = _tile(vp, "c1", 1000, s, 3, s + 600, 5.0)
    assert w.write([same_n_later]).written == 1  # same n_events, newer append time wins
    assert _stored_version(rds, project, vp, "c1", 1000, s) == (3, s + 600)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(st.tuples(st.integers(1, 50), st.integers(0, 10_000)), min_size=1, max_size=12, unique=True),
       seed=st.integers(0, 2**32 - 1), batch=st.booleans())
def test_any_write_order_ends_with_max_version(rds: Any, card_plan: FeaturePlan, versions: list[tuple[int, int]],
                                               seed: int, batch: bool) -> None:
    vp = card_plan.views[0]
    project = f"thyp{seed % 100000}"
    try:
        s = 1_704_067_200_000
        recs = [_tile(vp, "c9", 10_000, s, n, s + a, float(n)) for n, a in versions]
        random.Random(seed).shuffle(recs)
        w = TileWriter(rds, project, card_plan)
        if batch:
            w.write(recs)
        else:
            for rec in recs:
                w.write([rec])
        assert _stored_version(rds, project, vp, "c9", 10_000, s) == (max(versions)[0], s + max(versions)[1])
    finally:
        drop_project(rds, project)


def test_other_plan_hash_is_rejected(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    vp = card_plan.views[0]
    good = _tile(vp, "c1", 1000, 1_704_067_200_000, 1, 1_704_067_200_100, 1.0)
    rec = dict(good, plan_hash="0" * 16)
    metrics = WriterMetrics()
    broken = {k: v for k, v in good.items() if k != "n_events"}
    stats = TileWriter(rds, project, card_plan, metrics=metrics).write([rec, dict(rec, view="nope"), broken])
    assert (stats.rejected_plan, stats.unknown_view, stats.invalid, stats.written) == (1, 1, 1, 0)
    rejected = {s.labels["reason"]: s.value for s in metrics.rejected.collect()[0].samples if s.name.endswith("_total")}
    assert rejected == {"other_plan": 1, "unknown_view": 1, "invalid": 1}
    assert list(rds.scan_iter(match=keys.project_pattern(project))) == [keys.progress_key(project, vp).encode()]
    assert rds.hgetall(keys.progress_key(project, vp)) == {b"history_ms": b"0"}  # what the writer keeps; no tile


# ---------------------------------------------------------------- trimming and TTL


def test_trim_on_advance_and_ttl(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    vp = card_plan.views[0]
    ret = keys.retention_ms(vp)
    assert ret[1000] == 60_000 + vp.allowed_lateness_ms + 1000  # 1 s is the hop of the 1 m count only
    assert ret[60_000] == 3_600_000 + vp.allowed_lateness_ms + 60_000  # 1 m is the hop of the 1 h windows
    s0 = 1_704_067_200_000
    w = TileWriter(rds, project, card_plan)
    key = keys.entity_key(project, vp, "c1")
    w.write([_tile(vp, "c1", 1000, s0, 1, s0, 1.0), _tile(vp, "c1", 60_000, s0, 1, s0, 1.0)])
    assert 0 < rds.pttl(key) <= keys.key_ttl_ms(vp)
    assert keys.key_ttl_ms(vp) >= vp.longest_window_ms + vp.allowed_lateness_ms + vp.allowed_future_ms + max(vp.ladder)
    # small advance (stepping path): still within retention of both
    w.write([_tile(vp, "c1", 1000, s0 + ret[1000], 1, s0 + ret[1000], 1.0)])
    assert rds.hexists(key, keys.tile_field(1000, s0))
    w.write([_tile(vp, "c1", 1000, s0 + ret[1000] + 1000, 1, s0 + ret[1000] + 1000, 1.0)])
    assert not rds.hexists(key, keys.tile_field(1000, s0))  # now 1 ms too old
    assert rds.hexists(key, keys.tile_field(60_000, s0))
    # big jump (HKEYS scan path): the 1 m tile falls out too
    far = s0 + ret[60_000] + 60_000
    stats = w.write([_tile(vp, "c1", 1000, far, 1, far, 1.0)])
    assert stats.deleted >= 2
    fields = {keys.parse_tile_field(f) for f in rds.hkeys(key)} - {None}
    assert fields == {(1000, far)}
    # a tile already beyond retention on arrival is not stored
    late = w.write([_tile(vp, "c1", 60_000, s0, 5, s0 + 1, 1.0)])
    assert (late.too_old, late.written) == (1, 0)


def test_future_tile_does_not_trim_the_present(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    import time
    vp = card_plan.views[0]
    now = windows.tile_start(int(time.time() * 1000), 1000)
    w = TileWriter(rds, project, card_plan)
    w.write([_tile(vp, "c1", 1000, now - 5000, 1, now - 5000, 1.0)])
    # a producer clock a day fast, in a view allowing that (allowed_future); the default drops it in the job
    ahead = dataclasses.replace(vp, allowed_future_ms=2 * 86_400_000)
    w.write([_tile(ahead, "c1", 1000, now + 86_400_000, 1, now, 1.0)])
    assert rds.hexists(keys.entity_key(project, vp, "c1"), keys.tile_field(1000, now - 5000))


# ---------------------------------------------------------------- reads


def test_unknown_entity_gets_no_data_defaults(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    res = fetch(rds, project, card_plan, ["nobody"], at_ms=1_704_067_200_000)
    row = res.rows()[0]
    for ref in res.features:
        op = card_plan.features_by_ref(ref)[0].feature.op
        assert row[ref] == (0 if op == "count" else 0.0 if op == "sum" else None), ref
        if op in ("count", "sum"):
            assert type(row[ref]) is (int if op == "count" else float)
    assert res.as_of_ms == {"card": None} and res.min_as_of_ms is None
    assert res.to_arrow().column_names == ["entity", *res.features]


def test_refs_select_and_order_features(rds: Any, project: str) -> None:
    plan = build_plan([small_view("card"), small_view("card2")])
    res = fetch(rds, project, plan, ["a", "b"], refs=["card2:amount_sum_10m", "card:*"], at_ms=1_704_067_200_000)
    assert res.features[0] == "card2:amount_sum_10m" and len(res.features) == 1 + len(plan.view("card").features)
    assert set(res.as_of_ms) == {"card2", "card"}


class CountingConnection(redis_lib.Connection):
    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def test_one_round_trip_per_fetch(stack, project: str) -> None:
    host, port = stack.redis_url.split("//")[1].split("/")[0].split(":")
    client = redis_lib.Redis(connection_pool=redis_lib.ConnectionPool(
        connection_class=CountingConnection, host=host, port=int(port)))
    plan = build_plan([small_view("card"), small_view("card2")])
    vp = plan.view("card")
    s = 1_704_067_200_000
    TileWriter(client, project, plan).write([_tile(vp, f"c{i}", 1000, s, 1, s, 1.0) for i in range(50)])
    client.ping()
    before = CountingConnection.sends
    res = fetch(client, project, plan, [f"c{i}" for i in range(50)], at_ms=s + 1500)
    assert CountingConnection.sends - before == 1
    assert res.values["card:amount_count_1m"].to_pylist() == [1] * 50
    client.close()


def test_read_auto_mixes_modes_in_one_round_trip(rds: Any, project: str, monkeypatch: Any) -> None:
    """A view whose entities look hot is read with HMGET, the other with HGETALL, in the same round
    trip, and the values are those of either mode alone."""
    plan = build_plan([small_view("card"), small_view("card2")])
    s = 1_704_067_200_000
    for v in ("card", "card2"):
        TileWriter(rds, project, plan).write([_tile(plan.view(v), f"c{i}", 1000, s, 1, s, 1.0 + i) for i in range(5)])
    ents = [f"c{i}" for i in range(6)]  # c5: no data
    want = fetch(rds, project, plan, ents, at_ms=s + 1500, read="hgetall").rows()
    assert fetch(rds, project, plan, ents, at_ms=s + 1500, read="hmget").rows() == want
    _, by_view = reader._resolve(plan, None)
    reader._policy(project, plan.view("card"), by_view["card"]).observe(10_000.0)  # as if its hashes were huge
    seen: list[list[str]] = []
    real = reader._round_trip
    monkeypatch.setattr(reader, "_round_trip", lambda *a: seen.append(list(a[4])) or real(*a))
    assert fetch(rds, project, plan, ents, at_ms=s + 1500).rows() == want
    assert seen == [["hmget", "hgetall"]]
    card2 = reader._policy(project, plan.view("card2"), by_view["card2"])
    assert card2.stored == pytest.approx(5 * 2 / 6)  # two fields (the tile and _n) for 5 of 6 entities
    card = reader._policy(project, plan.view("card"), by_view["card"])
    card.fetches = reader._ReadPolicy._PROBE - 1  # the next fetch probes: HMGET plus HLEN, same values
    assert fetch(rds, project, plan, ents, at_ms=s + 1500).rows() == want
    assert seen[-1] == ["hmget+hlen", "hgetall"]
    assert card.stored == pytest.approx(0.875 * 10_000 + 0.125 * 5 * 2 / 6)  # HLEN of all 6 (c5: 0)
    with pytest.raises(FetchArgumentError, match="read='hscan'"):
        fetch(rds, project, plan, ents, at_ms=s + 1500, read="hscan")  # type: ignore[arg-type]


class _PipelineOnly:
    """A client without ``connection_pool`` (like Redis Cluster's): fetch goes through ``pipeline()``."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pipeline(self, transaction: bool = False) -> Any:
        return self._client.pipeline(transaction=transaction)


def _probing_next(project: str, plan: Any, view: str) -> Any:
    """The view's read policy, set as if its hashes were huge (HMGET) with an HLEN probe due on the
    next fetch."""
    _, by_view = reader._resolve(plan, None)
    pol = reader._policy(project, plan.view(view), by_view[view])
    pol.observe(10_000.0)
    pol.fetches = reader._ReadPolicy._PROBE - 1
    return pol


def test_pipeline_round_trip_gives_the_same_values(rds: Any, project: str) -> None:
    plan = build_plan([small_view("card"), small_view("card2")])
    s = 1_704_067_200_000
    for v in ("card", "card2"):
        TileWriter(rds, project, plan).write([_tile(plan.view(v), f"c{i}", 1000, s, 1, s, 1.0 + i) for i in range(5)])
    ents = [f"c{i}" for i in range(6)]
    want = fetch(rds, project, plan, ents, at_ms=s + 1500, read="hgetall").rows()
    other = _PipelineOnly(rds)
    for read in ("hgetall", "hmget"):
        assert fetch(other, project, plan, ents, at_ms=s + 1500, read=read).rows() == want
    pol = _probing_next(project, plan, "card")  # HMGET + HLEN probe through the pipeline
    assert fetch(other, project, plan, ents, at_ms=s + 1500).rows() == want
    assert pol.stored == pytest.approx(0.875 * 10_000 + 0.125 * 5 * 2 / 6)


def test_read_policy_rule() -> None:
    pol = reader._ReadPolicy()
    assert pol.choose(100) == "hgetall"  # nothing seen yet
    pol.observe(60.0)
    assert [pol.choose(100) for _ in range(15)] == ["hmget"] * 14 + ["hmget+hlen"]  # fetch 16 probes
    for _ in range(20):
        pol.observe(20.0)  # entities got colder: the mean follows
    assert pol.stored < 50 and pol.choose(100) == "hgetall"


def test_as_of_is_min_over_partitions(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    vp = card_plan.views[0]
    w = TileWriter(rds, project, card_plan, source_partitions={"card": 3})
    w.write([progress_record(vp, 0, 5000), progress_record(vp, 1, 7000)])
    assert fetch(rds, project, card_plan, ["x"]).as_of_ms["card"] is None  # partition 2 never reported
    w.write([progress_record(vp, 2, 6000), progress_record(vp, 0, 4000)])  # an older progress is ignored
    assert fetch(rds, project, card_plan, ["x"]).as_of_ms["card"] == 5000
    w.write([progress_record(vp, 0, 9000)])
    assert fetch(rds, project, card_plan, ["x"]).min_as_of_ms == 6000


def test_idle_source_partitions_raise_as_of(rds: Any, project: str, card_plan: FeaturePlan) -> None:
    vp = card_plan.views[0]
    w = TileWriter(rds, project, card_plan, source_partitions={"card": 3})
    w.write([progress_record(vp, 0, 5000, n=10), progress_record(vp, 1, 7000, n=4)])
    ends = {0: (0, 12), 1: (0, 4), 2: (3, 3)}  # 0 has records past its progress; 1 caught up; 2 empty, unreported
    assert w.publish_idle({"card": ends}, 9000) == {"card": 5000}
    w.write([progress_record(vp, 0, 8000, n=12)])  # partition 0 caught up too
    assert fetch(rds, project, card_plan, ["x"]).as_of_ms["card"] == 8000
    assert w.publish_idle({"card": ends}, 9500) == {"card": 9500}
    assert w.publish_idle({"card": ends}, 9100) == {"card": 9500}  # never backwards
    assert w.publish_idle({"card": {**ends, 0: (0, 13), 2: (3, 4)}}, 9900) == {"card": 9500}  # new records: held
    raw = rds.hgetall(keys.progress_key(project, vp))
    assert (int(raw[b"p:1"]), int(raw[b"p:2"]), int(raw[b"o:0"])) == (9900, 9500, 12)


# ---------------------------------------------------------------- compiled engine == ir.merge_many + finalize

_FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, 0.1, 1 / 3]),
                    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                    st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def _events(draw: Any) -> list[dict[str, Any]]:
    t0 = 1_704_067_200_000
    n = draw(st.integers(0, 60))
    out = []
    for i in range(n):
        ts = t0 + draw(st.integers(0, 7_200_000))
        out.append({"card_id": draw(st.sampled_from(["a", "b", "c"])), "amount": draw(st.one_of(st.none(), _FLOATS)),
                    "n": draw(st.one_of(st.none(), st.integers(-5, 5))), "merchant": draw(st.sampled_from(["x", "y", "z", None])),
                    "event_time_ms": ts, "append_time_ms": ts + draw(st.integers(0, 400_000)),
                    "partition": draw(st.integers(0, 2)), "offset": i})
    return out


def _bits(v: Any) -> Any:
    """Floats bit for bit (-0.0 != 0.0); every NaN alike (their sign bits depend on the CPU op)."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else struct.pack("<d", v)
    return v


def _py(col: tuple[np.ndarray, np.ndarray]) -> list[Any]:
    values, null = col
    return [None if n else v for v, n in zip(values.tolist(), null.tolist())]


def _stored_tiles(events: list[dict[str, Any]], dt: int) -> tuple[Any, dict[str, dict[bytes, bytes]], int]:
    """The small view's tiles of ``events`` as Redis would hold them (field -> value per entity),
    and the read layout at ``t``."""
    vp = build_view_plan(small_view())
    codec = keys.codec_for(vp)
    by_entity: dict[str, dict[bytes, bytes]] = defaultdict(dict)
    for rec in tile_records(vp, events):
        value = codec.encode((rec["n_events"], rec["max_append_ms"]), ir.from_row(vp.fields, rec))
        by_entity[rec["entity"]][keys.tile_field(rec["resolution_ms"], rec["tile_start"]).encode()] = value
    t = 1_704_067_200_000 + dt
    return reader._layout("p", vp, tuple(f.name for f in vp.features), t), by_entity, t


@settings(max_examples=150, deadline=None)
@given(events=_events(), dt=st.integers(0, 7_500_000))
def test_compiled_engine_matches_ir(events: list[dict[str, Any]], dt: int) -> None:
    """Every feature of every entity, bit for bit, JSON-form tiles (separators in strings) included."""
    lay, by_entity, t = _stored_tiles(events, dt)
    ents = ["a", "b", "c", "none"]
    rows = [[by_entity[e].get(f) for f in lay.fields] for e in ents]
    tiles = reader._sparse(lay, rows, "hmget")
    hg = [[x for f in lay.fields if f in by_entity[e] for x in (f, by_entity[e][f])] + [b"_n", b"1"] for e in ents]
    tiles_hg = reader._sparse(lay, hg, "hgetall")
    assert sorted(zip(tiles.ent.tolist(), tiles.pos.tolist(), tiles.vals)) == \
        sorted(zip(tiles_hg.ent.tolist(), tiles_hg.pos.tolist(), tiles_hg.vals))
    vec = reader._merge_compiled(lay, tiles_hg, len(ents), t)  # HGETALL order: not by position
    ref = reader._merge_scalar(lay, tiles, len(ents), t)
    for name in ref:
        a, b = [_bits(x) for x in _py(vec[name])], [_bits(x) for x in _py(ref[name])]
        assert a == b, name
        assert vec[name][0].dtype == ref[name][0].dtype, name  # engine="auto" mixes them per view
    assert vec.keys() == ref.keys()


def _resp(reply: Any) -> bytes:
    """RESP2 encoding of a reply as redis-server writes it (arrays of bulk strings, ints, nil)."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(map(_resp, reply))


@settings(max_examples=100, deadline=None)
@given(events=_events(), dt=st.integers(0, 7_500_000), cuts=st.lists(st.integers(1, 400), max_size=12))
def test_raw_replies_give_the_parsed_tiles(events: list[dict[str, Any]], dt: int, cuts: list[int]) -> None:
    """The raw RESP path (``online_store.resp``) finds exactly the tiles the parsed-reply path
    does, for HMGET and HGETALL replies (meta and unnamed fields skipped) arriving in any chunks."""
    from online_store import resp
    lay, by_entity, t = _stored_tiles(events, dt)
    ents = ["a", "b", "c", "none"]
    hm = [[by_entity[e].get(f) for f in lay.fields] for e in ents]
    hg = [[x for f, v in by_entity[e].items() for x in (f, v)] + [b"_n", b"1", b"99:-5", b"x"] for e in ents]
    for rows, mode in ((hm, "hmget"), (hg, "hgetall")):
        want = reader._sparse(lay, rows, mode)
        data = b"".join(map(_resp, rows)) + _resp(7) + _resp(b"1704067200000")
        buf = np.zeros(len(data) + 16, np.uint8)
        pos = size = done = 0
        for c in sorted(set(cuts)) + [len(data)]:  # bytes arrive in chunks; replies complete in between
            c = min(c, len(data))
            buf[size:c] = np.frombuffer(data[size:c], np.uint8)
            size = max(size, c)
            pos, k = resp.complete(buf, pos, size, len(rows) + 2 - done)
            done += k
        assert done == len(rows) + 2 and pos == len(data)
        end, ent, p, s, e, elements, status = resp.tiles(buf, 0, size, len(rows), mode == "hgetall",
                                                          lay.key_res, lay.key_start)
        assert status == 0 and elements == sum(map(len, rows))
        got = reader._Sparse(ent, p, buf, s, e)
        assert sorted(zip(got.ent.tolist(), got.pos.tolist(), got.vals)) == \
            sorted(zip(want.ent.tolist(), want.pos.tolist(), want.vals))
        assert resp.scalar(buf, end, size) == (end + 4, 7)
        assert resp.scalar(buf, end + 4, size)[1] == b"1704067200000"


def test_error_reply_fails_the_fetch_and_leaves_the_connection_usable(rds: Any, project: str) -> None:
    """A key of the wrong type gives Redis's error as StoreUnavailableError, not a crash or a
    misread; the next fetch on the same (held) connection is right."""
    from online_store.errors import StoreUnavailableError
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    s = 1_704_067_200_000
    TileWriter(rds, project, plan).write([_tile(vp, "c1", 1000, s, 1, s, 2.0)])
    rds.set(keys.entity_key(project, vp, "bad"), b"not a hash")
    for read in ("hmget", "hgetall"):
        with pytest.raises(StoreUnavailableError, match="WRONGTYPE"):
            fetch(rds, project, plan, ["c1", "bad"], at_ms=s + 1500, read=read)
        assert fetch(rds, project, plan, ["c1"], at_ms=s + 1500, read=read).values["card:amount_count_1m"].to_pylist() == [1]


def test_raw_read_grows_its_buffer(rds: Any, project: str) -> None:
    """Replies larger than the thread's receive buffer (here 16 bytes) grow it; same values as
    the parsed-reply path."""
    plan = build_plan([small_view("card")])
    s = 1_704_067_200_000
    TileWriter(rds, project, plan).write([_tile(plan.view("card"), f"c{i}", 1000, s, 1, s, 1.0 + i) for i in range(40)])
    ents = [f"c{i}" for i in range(42)]
    want = fetch(_PipelineOnly(rds), project, plan, ents, at_ms=s + 1500).rows()
    reader._HELD.buf = np.empty(16, np.uint8)
    assert fetch(rds, project, plan, ents, at_ms=s + 1500).rows() == want
    assert len(reader._HELD.buf) > 1024


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_merge_gives_the_same_values(rds: Any, project: str, monkeypatch: Any, chunk: int) -> None:
    """The raw path merges each view's replies ``_chunk(n)`` entities at a time as they arrive, reusing
    the receive buffer for what is merged: same values as the parsed path whole, for both read
    modes and the HLEN probe, with chunks not dividing the entities and a buffer smaller than one
    reply; an error reply in a later chunk still fails the fetch cleanly."""
    from online_store.errors import StoreUnavailableError
    plan = build_plan([small_view("card"), small_view("card2")])
    s = 1_704_067_200_000
    for v in ("card", "card2"):
        TileWriter(rds, project, plan).write(
            [_tile(plan.view(v), f"c{i}", 1000, s - 1000 * (i % 3), 1 + i % 4, s, 1.0 + i) for i in range(20)])
    ents = [f"c{i}" for i in range(23)] + ["c4", "c4"]  # c20-c22: no data; c4 repeated
    monkeypatch.setattr(reader, "_chunk", lambda n: chunk)
    for read in ("hgetall", "hmget"):
        want = fetch(_PipelineOnly(rds), project, plan, ents, at_ms=s + 1500, read=read).rows()
        reader._HELD.buf = np.empty(16, np.uint8)
        assert fetch(rds, project, plan, ents, at_ms=s + 1500, read=read).rows() == want
    pol = _probing_next(project, plan, "card")  # HMGET + HLEN probes after the chunks
    assert fetch(rds, project, plan, ents, at_ms=s + 1500).rows() == want
    assert pol.stored < 10_000.0
    rds.set(keys.entity_key(project, plan.view("card2"), "c9"), b"not a hash")
    with pytest.raises(StoreUnavailableError, match="WRONGTYPE"):
        fetch(rds, project, plan, ents, at_ms=s + 1500, read="hgetall")
    assert fetch(rds, project, plan, ["c1"], at_ms=s + 1500, read="hgetall").rows() == \
        [r for r in want if r["entity"] == "c1"][:1]


def test_chunk_is_a_quarter_of_the_view_within_bounds() -> None:
    assert [reader._chunk(n) for n in (0, 1, 100, 128, 200, 1000, 1024, 5000)] == [32, 32, 32, 32, 50, 250, 256, 256]


def test_resp3_client_gives_the_same_values(stack, rds: Any, project: str) -> None:
    """A RESP3 connection (HGETALL answers maps) takes the parsed-reply path: same values."""
    plan = build_plan([small_view("card")])
    s = 1_704_067_200_000
    TileWriter(rds, project, plan).write([_tile(plan.view("card"), f"c{i}", 1000, s, 1, s, 1.0 + i) for i in range(5)])
    ents = [f"c{i}" for i in range(6)]
    want = fetch(rds, project, plan, ents, at_ms=s + 1500, read="hgetall").rows()
    r3 = redis_lib.Redis.from_url(stack.redis_url, protocol=3)
    try:
        for read in ("hgetall", "hmget"):
            assert fetch(r3, project, plan, ents, at_ms=s + 1500, read=read).rows() == want
    finally:
        r3.close()


# ---------------------------------------------------------------- tile codec


_STRINGS = st.sampled_from(["x", "y", "é中", "", "a\x1fb", "c\x1ed", None])


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), _FLOATS), st.one_of(st.none(), st.integers(-5, 5)), _STRINGS,
                               st.integers(0, 10**6)), max_size=8),
       version=st.tuples(st.integers(0, 2**40), st.integers(0, 2**50)))
def test_tile_codec_round_trip(rows: list[tuple[Any, ...]], version: tuple[int, int]) -> None:
    """decode(encode(tile)) is the tile, its keys in ``view.fields`` order, in both var-part forms
    (0x01 split and 0x02 JSON when a string holds a separator or is empty)."""
    vp = build_view_plan(small_view())
    codec = keys.codec_for(vp)
    amount, n, merchant, ts = zip(*rows) if rows else ((), (), (), ())
    cols = {"amount": np.array(amount, dtype=object), "n": np.array(n, dtype=object),
            "merchant": np.array(merchant, dtype=object)}
    tile = ir.tile_from_events(vp.fields, cols, ts, [0] * len(rows), list(range(len(rows))))
    got_version, got = codec.decode(codec.encode(version, tile))
    assert got_version == version
    assert list(got) == [f.name for f in vp.fields]
    assert {k: _bits(v) for k, v in got.items()} == {k: _bits(v) for k, v in tile.items()}


@settings(max_examples=100, deadline=None)
@given(tiles=st.lists(st.lists(st.tuples(st.one_of(st.none(), _FLOATS), st.one_of(st.none(), st.integers(-5, 5)),
                                         _STRINGS, st.integers(0, 10**6)), max_size=4), max_size=6))
def test_decode_columns_equals_decode(tiles: list[list[tuple[Any, ...]]]) -> None:
    """The reader's column decode gives, per field, what ``decode`` gives per value (both var forms mixed)."""
    vp = build_view_plan(small_view())
    codec = keys.codec_for(vp)
    values = []
    for i, rows in enumerate(tiles):
        amount, n, merchant, ts = zip(*rows) if rows else ((), (), (), ())
        cols = {"amount": np.array(amount, dtype=object), "n": np.array(n, dtype=object),
                "merchant": np.array(merchant, dtype=object)}
        values.append(codec.encode((i, i), ir.tile_from_events(vp.fields, cols, ts, [0] * len(rows), list(range(len(rows))))))
    got = codec.decode_columns(values)
    assert list(got) == [f.name for f in vp.fields]
    for name, col in got.items():
        assert [_bits(v) for v in col] == [_bits(codec.decode(v)[1][name]) for v in values], name
    raw = codec.decode_columns(values, raw_distinct=True)  # what the scalar fetch path merges from
    assert [codec.distinct_items(x) for x in raw["merchant__distinct"]] == got["merchant__distinct"]


def test_corrupt_tile_names_the_fix() -> None:
    vp = build_view_plan(small_view())
    codec = keys.codec_for(vp)
    good = codec.encode((1, 2), ir.tile_from_events(vp.fields, {"amount": np.array([1.0], dtype=object),
                                                               "n": np.array([1], dtype=object),
                                                               "merchant": np.array(["x"], dtype=object)}, [5], [0], [0]))
    for bad in (good[:10], good[:codec.fixed_size] + b"\x01only-one-part", good[:-1] + b"\xff",
                good[:codec.fixed_size] + b"\x02[not json"):
        with pytest.raises(keys.CorruptTileError, match="headwater online rebuild"):
            codec.decode(bad)
        with pytest.raises(keys.CorruptTileError, match="headwater online rebuild"):
            codec.decode_columns([good, bad])


def test_compiled_engine_falls_back_for_json_form_tiles(rds: Any, project: str, monkeypatch: Any) -> None:
    """A tile whose strings hold a separator is stored in the JSON form: the compiled engine then
    merges that chunk of the view with the scalar path, same values."""
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    s = 1_704_067_200_000
    events = [{"card_id": f"c{i % 40}", "amount": float(i), "n": i % 5, "merchant": "m\x1fx" if i == 7 else f"m{i % 3}",
               "event_time_ms": s + i * 1000, "append_time_ms": s + i * 1000, "partition": 0, "offset": i}
              for i in range(200)]
    recs = sorted(tile_records(vp, events), key=lambda r: r["tile_start"])
    TileWriter(rds, project, plan).write(recs)
    ents = [f"c{i}" for i in range(41)]
    want = fetch(rds, project, plan, ents, at_ms=s + 200_500, engine="scalar").rows()
    fell_back: list[int] = []
    scalar = reader._merge_scalar
    monkeypatch.setattr(reader, "_merge_scalar", lambda *a: fell_back.append(a[2]) or scalar(*a))
    assert fetch(rds, project, plan, ents, at_ms=s + 200_500, engine="compiled").rows() == want
    assert fell_back == [reader._chunk(41)]  # only the chunk holding c7's JSON-form tile: the first
    with pytest.raises(FetchArgumentError, match="engine='vector'"):
        fetch(rds, project, plan, ents, at_ms=s + 200_500, engine="vector")  # type: ignore[arg-type]


def test_held_connection_reconnects_after_the_server_drops_it(rds: Any, project: str) -> None:
    """fetch keeps one connection per thread and pool; when Redis closes it, the next fetch
    reconnects (one retry) instead of failing."""
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    s = 1_704_067_200_000
    TileWriter(rds, project, plan).write([_tile(vp, "c1", 1000, s, 1, s, 1.0)])
    want = fetch(rds, project, plan, ["c1"], at_ms=s + 1500).rows()
    conn, held = reader._connection(rds.connection_pool)
    assert held and reader._connection(rds.connection_pool)[0] is conn
    rds.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # every other client: the held one too
    assert fetch(rds, project, plan, ["c1"], at_ms=s + 1500).rows() == want
