"""Drive the real pipeline from a test: Kafka topic -> Flink SQL job -> tiles topic -> Redis -> fetch.

Record timestamps: production events topics use LogAppendTime, which a test cannot choose. Here
the events topic is created with CreateTime and each record carries the case's
``append_time_ms`` as its timestamp, so the lateness predicate sees exactly the vector's append
times. Partitions are the case's; offsets are assigned by the broker, but each partition is
produced in the case's offset order, so (event time, partition, offset) ties break the same way.
Several cases share one job: entities are prefixed with the case name so cases never mix.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from headwater.config import Connection, RepoConfig, load_repo
from headwater.topics import create_topics
from streamjobs.compiler import KafkaBounds
from streamjobs.dsl import FeatureView, Source
from streamjobs.plan import build_plan
from streamjobs.repo import Definitions

EVENT_FIELDS = {"card_id": "string", "amount": "double", "merchant_id": "string"}
EVENT_TIME = "event_time_ms"


def event_schema(entity_field: str = "card_id") -> dict:
    fields = [{"name": entity_field, "type": "string"}]
    fields += [{"name": n, "type": t} for n, t in EVENT_FIELDS.items() if n != entity_field]
    fields.append({"name": EVENT_TIME, "type": "long"})
    return {"type": "record", "name": "TestEvent", "namespace": "headwater.tests", "fields": fields}


def create_time_repo(repo_dir: Path) -> RepoConfig:
    """Switch the temp repo's events topic to CreateTime and infinite retention (old timestamps)."""
    cfg = yaml.safe_load((repo_dir / "headwater.yaml").read_text())
    cfg["topics"]["events"].update({"log_append_time": False, "retention_ms": -1})
    (repo_dir / "headwater.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_repo(repo_dir)


def prefixed(case_name: str, entity: Any) -> str:
    return f"{case_name}|{entity}"


def pipeline_view(view: FeatureView, topic: str, schema: dict) -> FeatureView:
    cols = {f["name"]: {"string": "string", "double": "double", "long": "long"}[f["type"]] for f in schema["fields"]}
    src = Source("events", topic, schema=schema, event_time_field=EVENT_TIME, columns=cols)
    return dataclasses.replace(view, source=src)


def _record(name: str, entity_field: str, e: Mapping) -> dict:
    """A conformance event as an events-topic record, its entity prefixed by the case's name."""
    rec = {"card_id": "", "amount": 0.0, "merchant_id": ""}
    rec.update({k: e[k] for k in EVENT_FIELDS if k in e and e[k] is not None})
    rec["amount"] = float(rec["amount"])
    rec[entity_field] = prefixed(name, e[entity_field])
    rec[EVENT_TIME] = int(e["event_time_ms"])
    return rec


def produce_cases(conn: Connection, repo: RepoConfig, schema: dict,
                  cases: Sequence[tuple[str, str, Sequence[Mapping]]]) -> dict[tuple[str, int, int], int]:
    """cases: (name, entity_field, events). Returns (case, partition, case offset) -> broker offset."""
    from confluent_kafka import Producer
    from headwater.repo_schemas import subject
    from schemas import AvroCodec, open_store

    topic = repo.topics.events.name
    codec = AvroCodec.for_subject(open_store(repo.resolve(repo.schema_store)), subject(topic), schema)
    p = Producer({"bootstrap.servers": conn.bootstrap_servers, "enable.idempotence": True, "linger.ms": 5})
    offsets: dict[tuple[str, int, int], int] = {}

    def delivered(key):
        def cb(err, msg):
            assert err is None, err
            offsets[key] = msg.offset()
        return cb

    for name, entity_field, events in cases:
        for e in sorted(events, key=lambda e: (e["partition"], e["offset"])):
            rec = _record(name, entity_field, e)
            p.produce(topic, codec.encode(rec), rec[entity_field].encode(), partition=int(e["partition"]),
                      timestamp=int(e["append_time_ms"]),
                      on_delivery=delivered((name, int(e["partition"]), int(e["offset"]))))
    assert p.flush(60) == 0
    return offsets


def produce_aborted(conn: Connection, repo: RepoConfig, schema: dict, name: str, entity_field: str,
                    events: Sequence[Mapping]) -> None:
    """The case's events once more, in one Kafka transaction that is aborted: every reader must skip
    them (producers upstream of Headwater may write events transactionally)."""
    from confluent_kafka import Producer
    from headwater.repo_schemas import subject
    from schemas import AvroCodec, open_store

    topic = repo.topics.events.name
    codec = AvroCodec.for_subject(open_store(repo.resolve(repo.schema_store)), subject(topic), schema)
    p = Producer({"bootstrap.servers": conn.bootstrap_servers, "transactional.id": f"hw-test-abort-{topic}"})
    p.init_transactions(30)
    p.begin_transaction()
    for e in events:
        rec = _record(name, entity_field, e)
        p.produce(topic, codec.encode(rec), rec[entity_field].encode(), partition=int(e["partition"]),
                  timestamp=int(e["append_time_ms"]))
    p.flush(60)
    p.abort_transaction(30)


def run_job(conn: Connection, repo: RepoConfig, views: Iterable[FeatureView], group: str) -> Definitions:
    """Compile and run the features job over everything in the topic, to its current end."""
    from streamjobs.job import compile_features, submit
    views = tuple(views)
    defs = Definitions(views, build_plan(views))
    job = compile_features(conn, repo, defs, bounds=KafkaBounds(startup="earliest-offset", bounded="latest-offset"),
                           group_id=group)
    submit(conn, job).wait(600_000)
    return defs


def setup(stack: Connection, temp_repo: Path) -> RepoConfig:
    repo = create_time_repo(temp_repo)
    create_topics(stack, repo.topics)
    return repo


def tiles_in_order(conn, repo) -> dict[int, list[tuple[dict, dict]]]:
    """Every (key, value) record of the tiles topic, decoded with the ids in their headers, per
    partition in offset order (tombstones left out)."""
    from headwater.topic_read import read_to_end
    from schemas import AvroCodec, open_store
    store = open_store(repo.resolve(repo.schema_store))
    codecs: dict = {}
    out: dict[int, list[tuple[dict, dict]]] = {}

    def decode(data: bytes) -> dict:
        sid = struct.unpack(">I", data[1:5])[0]
        return codecs.setdefault(sid, AvroCodec(store.get_by_id(sid), sid, store)).decode(data)

    for batch in read_to_end(conn.bootstrap_servers, repo.topics.tiles.name, timeout_s=120):
        for m in batch:
            part = out.setdefault(m.partition(), [])
            if m.value() is not None:
                part.append((decode(m.key()), decode(m.value())))
    return out


def read_tiles(conn, repo):
    """Latest tile record per key from the tiles topic. Every record's Kafka key must be the
    TileKey of its value (compaction keeps one per tile)."""
    latest = {}
    for recs in tiles_in_order(conn, repo).values():
        for key, r in recs:
            k = (r["view"], r["entity"], r["resolution_ms"], r["tile_start"])
            assert (key["view"], key["entity"], key["resolution_ms"], key["tile_start"]) == k, (key, k)
            latest[k] = r
    return latest


def assert_tiles_equal(view, flink_tiles, events, entity_prefix: str = "") -> None:
    """Tiles Flink wrote (``read_tiles``; markers aside) equal, field for field, what ``ir.update`` builds
    from ``events`` (MemoryTiler); events carry ``event_time_ms``, ``append_time_ms`` and the broker's partition/offset."""
    from online_store.tiles import is_marker, tile_ir
    from tests.oracle import MemoryTiler
    tiler = MemoryTiler(view)
    tiler.ingest(events)
    expected = {(view.name, e, r, s): t for e, st in tiler.tiles.items() for (r, s), t in st.items()}
    got = {k: tile_ir(view, rec) for k, rec in flink_tiles.items()
           if k[0] == view.name and k[2] > 0 and k[1].startswith(entity_prefix) and not is_marker(rec)}
    assert set(got) == set(expected), f"{view.name}: tile keys differ"
    for k, want in expected.items():
        for f in view.fields:
            a, b = got[k][f.name], want[f.name]
            if isinstance(b, float):
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9), (k, f.name, a, b)
            else:
                assert a == b, (k, f.name, a, b)
