"""The writer loop against the real broker and redis-server: Avro tile records and progress on a
temp tiles topic -> run_writer -> fetch; bad records counted, as_of held back by the settle rule."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis as redis_lib
from confluent_kafka import Producer

from headwater.config import load_repo
from headwater.topics import create_topics
from online_store import fetch, keys, rebuild, run_writer
from online_store.errors import StoreUnavailableError
from online_store.metrics import WriterMetrics
from online_store.tiles import TILE_KEY_SCHEMA, key_subject, tile_subject, tile_value_schema
from schemas import AvroCodec, open_store
from streamjobs.plan import FeaturePlan, build_view_plan

try:
    from conftest import CONFORMANCE_DIR
    from oracle import feature_view_from_case, oracle_values, view_spec_from_case
    from test_conformance_ir import assert_value
    from test_online_store import drop_project, progress_record, tile_records
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.conftest import CONFORMANCE_DIR
    from tests.oracle import feature_view_from_case, oracle_values, view_spec_from_case
    from tests.test_conformance_ir import assert_value
    from tests.test_online_store import drop_project, progress_record, tile_records

pytestmark = pytest.mark.integration
CASE = CONFORMANCE_DIR / "randomized_small.json"


@pytest.fixture
def setup(stack, temp_repo) -> Any:
    if not CASE.exists():
        pytest.skip(f"conformance vector {CASE} not found")
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    case = json.loads(CASE.read_text())
    vp = build_view_plan(feature_view_from_case(case))
    plan = FeaturePlan((vp,), vp.plan_hash)
    store = open_store(repo.resolve(repo.schema_store), repo.schema_registry_url)
    topic = repo.topics.tiles.name
    value_codec = AvroCodec.for_subject(store, tile_subject(topic, vp.name), tile_value_schema(vp))
    key_codec = AvroCodec.for_subject(store, key_subject(topic), TILE_KEY_SCHEMA)
    client = redis_lib.Redis.from_url(stack.redis_url)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})
    # the source topic holds 5 records per partition (the writer never reads them, only their end
    # offsets): progress records below that next offset leave a partition busy, not idle
    source = {role: spec.name for role, spec in repo.topics.all().items()}.get(vp.topic, vp.topic)
    for part in range(3):
        for i in range(5):
            producer.produce(source, b"event", partition=part)
    assert producer.flush(30) == 0

    def send(records: list[dict[str, Any]], raw: list[tuple[bytes, bytes | None]] = ()) -> None:
        for r in records:
            key = key_codec.encode({k: r[k] for k in ("view", "resolution_ms", "entity", "tile_start")})
            producer.produce(topic, value_codec.encode(r), key)
        for k, v in raw:
            producer.produce(topic, v, k)
        assert producer.flush(30) == 0

    send.source = source  # type: ignore[attr-defined]
    send.producer = producer  # type: ignore[attr-defined]
    yield repo, case, vp, plan, client, send
    drop_project(client, repo.project)
    client.close()


def test_run_writer_stores_tiles_then_rebuild_matches(stack, setup, unique) -> None:
    repo, case, vp, plan, client, send = setup
    spec = view_spec_from_case(case)
    records = sorted(tile_records(vp, case["events"]), key=lambda r: r["tile_start"])
    bad_plan = dict(records[0], plan_hash="f" * 16)
    gone_view = dict(records[0], view="not_in_the_plan")
    # the view's source is the "events" topic role: 3 partitions, so as_of waits for all three
    store = open_store(repo.resolve(repo.schema_store), repo.schema_registry_url)
    other = AvroCodec.for_subject(store, f"other-{unique}", {"type": "record", "name": "Other",
                                                          "fields": [{"name": "x", "type": "long"}]})
    send(records + [bad_plan, gone_view, progress_record(vp, 0, 1000), progress_record(vp, 1, 1500)],
         raw=[(b"k1", b"not avro at all"), (b"k2", None), (b"k3", b"\x00\x00\x00\x7f\xff\x02"),
              (b"k4", other.encode({"x": 5}))])  # valid Avro of another shape: counted, not a crash loop
    metrics = WriterMetrics()
    stats = run_writer(stack, repo, plan, group_id=f"w-{unique}", idle_exit_s=3, settle_ms=300, metrics=metrics)
    assert stats.written > 0 and stats.rejected_plan == 1 and stats.unknown_view == 1 and stats.progress == 2
    assert stats.undecodable == 3 and stats.tombstones == 1
    rejected = {s.labels["reason"]: s.value for s in metrics.rejected.collect()[0].samples if s.name.endswith("_total")}
    assert rejected == {"other_plan": 1, "unknown_view": 1, "undecodable": 3}  # every reason reaches the metric
    assert stats.transcoded >= len(records) - 1  # only a schema id's first value takes the full path
    assert fetch(client, repo.project, plan, ["x"]).as_of_ms[vp.name] is None  # partition 2 never reported
    send([progress_record(vp, 2, 1200)])
    run_writer(stack, repo, plan, group_id=f"w-{unique}", idle_exit_s=2, settle_ms=300)
    end = max(e["event_time_ms"] for e in case["events"])
    t = end + 60_000
    entities = sorted({str(e[spec.entity_field]) for e in case["events"]})

    def check() -> None:
        res = fetch(client, repo.project, plan, entities, at_ms=t)
        assert res.as_of_ms[vp.name] == 999  # min over partitions, a ms below (a producer batch shares its time)
        for row in res.rows():
            for name, expected in oracle_values(spec, case["events"], row["entity"], t).items():
                assert_value(name, next(f.op for f in spec.features if f.name == name), expected,
                             row[f"{vp.name}:{name}"], f"{row['entity']}@{t}")

    check()
    again = run_writer(stack, repo, plan, group_id=f"w-{unique}", idle_exit_s=2, settle_ms=300)
    assert again.records == 0  # offsets were committed after the Redis writes
    before = snapshot(client, repo.project)
    drop_project(client, repo.project)
    rebuilt = rebuild(stack, repo, plan, settle_ms=300, timeout_s=60)
    assert rebuilt.records == stats.records
    # another interleaving of the 3 partitions, the same store: trimming and monotonic writes commute
    assert snapshot(client, repo.project) == before
    check()


def test_a_schema_store_outage_stops_the_writer_before_the_record(stack, setup, unique) -> None:
    """A store that cannot answer is not bad data: the writer stops at the first record it cannot
    decode, writes and commits nothing past it, and a restart once the store answers loses nothing."""
    repo, case, vp, plan, client, send = setup
    records = sorted(tile_records(vp, case["events"]), key=lambda r: r["tile_start"])
    send(records)
    path = repo.resolve(repo.schema_store)
    path = path if path.suffix == ".json" else path / "schema_registry.json"
    good = path.read_bytes()
    path.write_text("{ half-written")  # the writer's own store: a fresh instance reads it on the first id
    try:
        with pytest.raises(StoreUnavailableError, match="schema store unavailable.*nothing past it committed"):
            run_writer(stack, repo, plan, group_id=f"o-{unique}", idle_exit_s=3, settle_ms=300)
    finally:
        path.write_bytes(good)
    assert snapshot(client, repo.project) == {keys.progress_key(repo.project, vp).encode(): {b"history_ms": b"0"}}
    stats = run_writer(stack, repo, plan, group_id=f"o-{unique}", idle_exit_s=3, settle_ms=300)
    assert stats.records == len(records) and stats.undecodable == 0  # all read again: none committed, none dropped
    assert stats.written > 0


def snapshot(client: Any, project: str) -> dict[bytes, dict[bytes, bytes]]:
    return {k: client.hgetall(k) for k in client.scan_iter(match=keys.project_pattern(project), count=1000)}


@contextmanager
def writer_thread(stack, repo, plan, group_id: str, settle_ms: int) -> Iterator[dict[str, Any]]:
    """``run_writer`` in a thread until the block ends; its WriteStats land in the dict as "stats"."""
    stop = threading.Event()
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(stats=run_writer(
        stack, repo, plan, group_id=group_id, stop_event=stop, settle_ms=settle_ms)))
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(30)


def test_as_of_waits_for_the_settle_rule(stack, setup, unique) -> None:
    repo, case, vp, plan, client, send = setup
    tile = sorted(tile_records(vp, case["events"]), key=lambda r: r["tile_start"])[-1]
    with writer_thread(stack, repo, plan, f"s-{unique}", 2000) as out:
        time.sleep(6)  # let the group form: the writer must already be consuming
        t0 = time.monotonic()
        # progress (all 3 source partitions) overtakes a tile of its mini-batch
        send([progress_record(vp, p, tile["max_append_ms"]) for p in range(3)])
        time.sleep(0.8)
        send([tile])
        key = keys.entity_key(repo.project, vp, tile["entity"])
        progress = keys.progress_key(repo.project, vp)
        while client.hget(progress, keys.AS_OF_FIELD) is None:
            assert time.monotonic() - t0 < 30, "as_of never published"
            assert client.hget(progress, "o:0") is None  # next offsets too are stored only once settled
            time.sleep(0.02)
        waited = time.monotonic() - t0
        assert client.hexists(key, keys.tile_field(tile["resolution_ms"], tile["tile_start"]))
        assert waited >= 2.0 - 0.1  # settle_ms after the progress record was read
        assert fetch(client, repo.project, plan, [tile["entity"]]).as_of_ms[vp.name] == tile["max_append_ms"] - 1
    assert out["stats"].written >= 1 and out["stats"].progress == 3


def test_idle_source_partitions_raise_as_of(stack, setup, unique) -> None:
    """A source partition whose settled progress reached its end offset holds as_of no longer:
    as_of rises to a time taken before the writer read the end offsets; a record appended to a
    partition after its progress keeps it where it was."""
    repo, case, vp, plan, client, send = setup
    send([progress_record(vp, 0, 1000, n=5), progress_record(vp, 1, 1500, n=4), progress_record(vp, 2, 1200, n=5)])
    before = int(time.time() * 1000) - 1000  # the writer's idle margin
    run_writer(stack, repo, plan, group_id=f"i-{unique}", idle_exit_s=3, settle_ms=300)
    assert fetch(client, repo.project, plan, ["x"]).as_of_ms[vp.name] == 1499  # partition 1 has a 5th record
    send([progress_record(vp, 1, 1600, n=5)])
    run_writer(stack, repo, plan, group_id=f"i-{unique}", idle_exit_s=3, settle_ms=300)
    caught_up = fetch(client, repo.project, plan, ["x"]).as_of_ms[vp.name]
    assert caught_up is not None and before <= caught_up <= int(time.time() * 1000)
    send.producer.produce(send.source, b"late", partition=2)  # type: ignore[attr-defined]
    assert send.producer.flush(30) == 0  # type: ignore[attr-defined]
    run_writer(stack, repo, plan, group_id=f"i-{unique}", idle_exit_s=3, settle_ms=300)
    raised = client.hgetall(keys.progress_key(repo.project, vp))
    assert int(raised[b"p:2"]) < int(raised[b"p:0"]) and int(raised[b"as_of"]) == int(raised[b"p:2"])
    assert int(raised[b"p:2"]) >= caught_up


def test_a_writer_stopped_while_progress_settles_reads_it_again(stack, setup, unique) -> None:
    """Offsets are committed only below a progress record still settling: a writer stopped in
    between reads it again after a restart (else an idle partition's next offset would never be
    stored and it would hold as_of for good)."""
    repo, case, vp, plan, client, send = setup
    send([progress_record(vp, p, 1000 + p, n=5) for p in range(3)])  # every partition caught up
    with writer_thread(stack, repo, plan, f"r-{unique}", 60_000) as out:
        time.sleep(8)  # the group forms and the writer reads the three records, which then settle for a minute
    assert out["stats"].progress == 3  # read, and stopped before they settled
    assert client.hget(keys.progress_key(repo.project, vp), "o:0") is None
    run_writer(stack, repo, plan, group_id=f"r-{unique}", idle_exit_s=3, settle_ms=300)
    raw = client.hgetall(keys.progress_key(repo.project, vp))
    assert [int(raw[b"o:%d" % p]) for p in range(3)] == [5, 5, 5]
    assert int(raw[b"as_of"]) > 10_000  # all three idle: raised to the writer's clock


def test_end_offsets_equal_the_brokers_watermarks(stack, setup, unique) -> None:
    """The settle rule's end offsets (an AdminClient's ListOffsets, not the consumer's) equal the
    consumer's own watermark query per partition, empty partitions included; an unknown topic is
    None (as_of waits), not an exception."""
    from confluent_kafka import Consumer
    from headwater.kafka_offsets import watermarks
    from online_store.writer import _EndOffsets
    repo, case, vp, plan, client, send = setup
    send(tile_records(vp, case["events"])[:7])
    topic = repo.topics.tiles.name
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"eo-{unique}"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        want = watermarks(c, topic, parts)
    finally:
        c.close()
    got = _EndOffsets(stack, topic)(parts)
    assert got == want and sum(hi - lo for lo, hi in got.values()) == 7
    assert _EndOffsets(stack, f"no-such-topic-{unique}")([0]) is None
