"""Feature log: records from a FetchResult (hand-built and from a real Redis fetch), sampling,
files, and a round trip through a real Kafka topic in framed Avro."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from headwater.config import load_repo
from online_store import TileWriter, fetch, feature_log
from online_store.reader import FetchResult
from streamjobs.repo import load_definitions

try:
    from conftest import EXAMPLE_REPO
except ModuleNotFoundError:
    from tests.conftest import EXAMPLE_REPO


@pytest.fixture(scope="module")
def plan():
    return load_definitions(load_repo(EXAMPLE_REPO)).plan


def _col(vals, null, dtype=None):
    arr = np.empty(len(vals), dtype=object) if dtype is None else np.array(vals, dtype=dtype)
    if dtype is None:
        arr[:] = vals
    return arr, np.array(null, dtype=bool)


def _result(plan, t=1_700_000_000_500, as_of=None):
    refs = ("card_velocity:txn_count_1m", "card_velocity:amount_mean_1h", "card_velocity:last_country",
            "merchant_activity:merchant_txn_count_10m")
    cols = {refs[0]: _col([3, 0], [False, False], np.int64),
            refs[1]: _col([12.5, 0.0], [False, True], np.float64),
            refs[2]: _col(["FR", None], [False, True]),
            refs[3]: _col([7, 1], [False, False], np.int64)}
    types = {refs[0]: pa.int64(), refs[1]: pa.float64(), refs[2]: pa.string(), refs[3]: pa.int64()}
    as_of = as_of or {"card_velocity": t - 800, "merchant_activity": None}
    return FetchResult(refs, ("c1", "c2"), cols, types, as_of, t,
                       {"card": ("c1", "c2"), "merchant": ("m1", "m1")})


def test_one_record_per_row_and_view(plan):
    res = _result(plan)
    recs = feature_log.records(res, plan, event_ids=["e1", "e2"])
    assert [(r["event_id"], r["entity_key"], r["entity"]) for r in recs] == [
        ("e1", "card_id", "c1"), ("e1", "merchant_id", "m1"), ("e2", "card_id", "c2"), ("e2", "merchant_id", "m1")]
    first = recs[0]
    assert first["t_ms"] == res.t_ms and first["as_of_ms"] == res.t_ms - 800
    assert first["features"] == ["card_velocity:txn_count_1m", "card_velocity:amount_mean_1h",
                                 "card_velocity:last_country"]
    assert first["values"] == {"card_velocity:txn_count_1m": 3, "card_velocity:amount_mean_1h": 12.5,
                               "card_velocity:last_country": "FR"}
    assert type(first["values"]["card_velocity:txn_count_1m"]) is int  # numpy scalars become Python
    assert recs[2]["values"]["card_velocity:amount_mean_1h"] is None  # null mask wins over the 0.0 under it
    assert recs[2]["values"]["card_velocity:txn_count_1m"] == 0  # count of no data is 0, not null
    assert recs[1]["as_of_ms"] == 0  # no as_of published: nothing proven complete
    assert first["plan_hash"] == plan.view("card_velocity").plan_hash != recs[1]["plan_hash"]


def test_event_ids_must_align(plan):
    with pytest.raises(feature_log.FeatureLogError, match="one per row"):
        feature_log.records(_result(plan), plan, event_ids=["only-one"])


def test_sampling_is_per_row_deterministic_and_near_rate(plan):
    n = 4000
    ids = tuple(f"c{i}" for i in range(n))
    refs = ("card_velocity:txn_count_1m",)
    res = FetchResult(refs, ids, {refs[0]: _col([1] * n, [False] * n, np.int64)}, {refs[0]: pa.int64()},
                      {"card_velocity": 5}, 10_000)
    a = feature_log.records(res, plan, sample_rate=0.25, seed=7)
    b = feature_log.records(res, plan, sample_rate=0.25, seed=7)
    c = feature_log.records(res, plan, sample_rate=0.25, seed=8)
    assert a == b and a != c
    assert 0.2 * n < len(a) < 0.3 * n
    assert feature_log.records(res, plan, sample_rate=0.0) == []
    # a sampled row keeps all its views
    both = feature_log.records(_result(plan), plan, event_ids=[f"e{i}" for i in range(2)], sample_rate=0.5, seed=3)
    assert len(both) % 2 == 0


def test_records_encode_with_the_topic_schema_and_files_round_trip(plan, tmp_path: Path):
    from schemas import AvroCodec, load_schema
    codec = AvroCodec(load_schema("feature_log"), 1)
    recs = feature_log.records(_result(plan), plan)
    assert [codec.decode(codec.encode(r)) for r in recs] == recs
    path = feature_log.write_file(recs, tmp_path / "log.jsonl")
    table = feature_log.read(path)
    assert table.num_rows == 4
    assert table.column_names[:7] == list(feature_log.META_COLUMNS)
    assert table["card_velocity:amount_mean_1h"].to_pylist() == [12.5, None, None, None]
    assert table["merchant_activity:merchant_txn_count_10m"].to_pylist() == [None, 7, None, 1]
    pq = feature_log.write_file(recs, tmp_path / "log.parquet")
    assert feature_log.read(pq).equals(table)
    with pytest.raises(feature_log.FeatureLogError, match="not found"):
        feature_log.read(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(feature_log.FeatureLogError, match="bad.jsonl:1"):
        feature_log.read(tmp_path / "bad.jsonl")


@pytest.mark.integration
def test_real_fetch_to_topic_and_back(stack, temp_repo: Path, unique: str):
    """Tiles written to Redis, a real fetch, its records produced to a real topic and read back
    equal the fetch's values."""
    import redis as redis_lib
    from confluent_kafka import Producer
    from headwater.topics import create_topics
    from streamjobs import ir, windows

    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    plan = load_definitions(repo).plan
    vp = plan.view("card_velocity")
    rds = redis_lib.Redis.from_url(stack.redis_url)
    s = 1_704_067_200_000
    recs = []
    for r in vp.ladder:
        cols = {f.column: np.array([10.0, 30.0] if f.column == "amount" else (["m1", "m2"] if f.column == "merchant_id"
                                                                                 else ["DE", "FR"]), dtype=object)
                for f in vp.fields}
        tile = ir.tile_from_events(vp.fields, cols, [s + 100, s + 200], [0, 0], [1, 2])
        recs.append({"view": vp.name, "entity": "c1", "resolution_ms": r, "tile_start": windows.tile_start(s, r),
                     "plan_hash": vp.plan_hash, "n_events": 2, "max_append_ms": s + 300, **ir.to_row(tile)})
    try:
        TileWriter(rds, repo.project, plan).write(recs)
        res = fetch(rds, repo.project, plan, {"card": ["c1", "c9"]}, ["card_velocity:*"], at_ms=s + 5_000)
        logged = feature_log.records(res, plan, event_ids=["e1", None])
        w = feature_log.FeatureLogWriter.for_repo(stack, repo, Producer({"bootstrap.servers": stack.bootstrap_servers}))
        assert w.write(logged) == 2
        w.flush()
        table = feature_log.read("topic", connection=stack, repo=repo)
        assert table.num_rows == 2
        rows = sorted(table.to_pylist(), key=lambda r: r["entity"])
        want = res.rows()
        assert rows[0]["card_velocity:txn_count_1m"] == 2 and rows[0]["card_velocity:last_country"] == "FR"
        for row, exp in zip(rows, want):
            assert row["entity"] == exp["card"]
            for ref in res.features:
                assert row[ref] == exp[ref], ref
        assert rows[0]["event_id"] == "e1" and rows[1]["event_id"] is None
    finally:
        from online_store import keys
        ks = list(rds.scan_iter(match=keys.project_pattern(repo.project), count=1000))
        if ks:
            rds.delete(*ks)
        rds.close()
    with pytest.raises(feature_log.FeatureLogError, match="does not exist"):
        feature_log.read(f"no.such.topic.{unique}", connection=stack, timeout_s=5)


@pytest.mark.integration
def test_cli_fetch_log_to_file_and_topic(stack, temp_repo: Path, tmp_path: Path, capsys):
    from headwater.cli import main
    from headwater.topics import create_topics
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    out = tmp_path / "fetch.jsonl"
    args = ["fetch", "--repo", str(temp_repo), "--entity", "card_id=c1", "--entity", "merchant_id=m1",
            "--at", "1704067205000", "--json"]
    assert main(args + ["--log", str(out)]) == 0
    assert main(args + ["--log"]) == 0
    assert "logged 2 feature-log records" in capsys.readouterr().err
    from_file = feature_log.read(out).to_pylist()
    from_topic = feature_log.read("topic", connection=stack, repo=repo).to_pylist()
    assert from_file == sorted(from_topic, key=lambda r: r["entity_key"])  # keyed by entity: two partitions
    assert [(r["entity_key"], r["entity"], r["t_ms"]) for r in from_file] == [
        ("card_id", "c1", 1704067205000), ("merchant_id", "m1", 1704067205000)]
    assert from_file[0]["card_velocity:txn_count_1m"] == 0  # no data: count 0
    assert main(args + ["--log", str(tmp_path / "x.csv")]) == 2  # one-line error, exit 2


@pytest.mark.integration
def test_cli_fetch_of_the_past_says_so_instead_of_a_negative_freshness(stack, temp_repo: Path, capsys):
    import redis as redis_lib
    from headwater.cli import main
    from online_store import keys
    from streamjobs.repo import load_definitions as defs_of
    repo = load_repo(temp_repo)
    plan = defs_of(repo).plan
    rds = redis_lib.Redis.from_url(stack.redis_url)
    try:
        for vp in plan.views:
            rds.hset(keys.progress_key(repo.project, vp), keys.AS_OF_FIELD, 1_704_067_260_000)
        base = ["fetch", "--repo", str(temp_repo), "--entity", "card_id=c1", "--features", "card_velocity:txn_count_1m"]
        assert main(base + ["--at", "1704067205000"]) == 0
        assert "freshness=n/a (a read of the past: as_of is 55,000 ms after t)" in capsys.readouterr().out
        assert main(base + ["--at", "1704067265000"]) == 0
        assert "freshness=5000 ms" in capsys.readouterr().out
    finally:
        for vp in plan.views:
            rds.delete(keys.progress_key(repo.project, vp))
        rds.close()


@pytest.mark.integration
def test_cli_fetch_warns_when_t_is_older_than_the_store_keeps_exact(stack, temp_repo: Path, capsys):
    """Tiles are trimmed behind each entity's newest: a read further back than allowed_lateness plus
    the writer's history_ms may lack some, and must say so (it used to be silently too small)."""
    import json
    import time

    import redis as redis_lib
    from headwater.cli import main
    from online_store import TileWriter, keys
    from streamjobs.repo import load_definitions as defs_of
    repo = load_repo(temp_repo)
    plan = defs_of(repo).plan
    rds = redis_lib.Redis.from_url(stack.redis_url)
    base = ["fetch", "--repo", str(temp_repo), "--entity", "card_id=c1", "--features", "card_velocity:txn_count_1m",
            "--json"]
    hour = 3_600_000
    try:
        TileWriter(rds, repo.project, plan)  # history_ms 0: exact from now - 5 min (the view's lateness)
        now = int(time.time() * 1000)
        assert main(base + ["--at", str(now - hour)]) == 0
        out = capsys.readouterr()
        doc = json.loads(out.out)
        assert doc["complete"] is False and "older than the online store keeps exact for card_velocity" in out.err
        assert now - 5 * 60_000 - 1000 <= doc["exact_since_ms"]["card_velocity"] <= now - 5 * 60_000 + 60_000
        assert main(base + ["--at", str(now - 60_000)]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["complete"] is True and "warning" not in out.err
        TileWriter(rds, repo.project, plan, history_ms=2 * hour)  # a writer keeping two hours more
        assert main(base + ["--at", str(now - hour)]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["complete"] is True and "warning" not in out.err
        assert main(base) == 0  # now: never a read of the past
        assert json.loads(capsys.readouterr().out)["exact_since_ms"] is None
    finally:
        for vp in plan.views:
            rds.delete(keys.progress_key(repo.project, vp))
        rds.close()
