"""``headwater produce``: generated transactions into Kafka (Avro, Confluent framing) or Parquet.

The events topic uses LogAppendTime, so the broker stamps arrival. To make the generator's
disorder and lateness real on the wire, a paced run (the default) sets each event's
``event_time`` to *its produce time minus its intended delay*: an event meant to be 7 minutes
late really reaches the broker 7 minutes after its event time. ``--no-pace`` (benchmarks, bulk
loads) keeps the generated event-time spacing, shifted so the stream ends about now; the
broker-measured delay is then up to the stream's duration, not the generator's.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from headwater.config import load_connection, load_repo
from headwater.errors import StackError
from headwater.generator import GeneratorConfig, generate, write_parquet
from headwater.repo_schemas import codec_for
from schemas import ColumnarCodec, ColumnarUnsupported

__all__ = ["producer_config", "to_kafka", "to_parquet", "read_back"]


def producer_config(bootstrap: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,     # no duplicates from internal retries
        "acks": "all",                  # required by idempotence
        "linger.ms": 20,                # fill batches: throughput over a few ms of latency
        "batch.size": 1_000_000,
        "compression.type": "lz4",      # cheap CPU, ~2x smaller transaction records
        "queue.buffering.max.messages": 500_000,
        "log_level": 3,
    }


def to_parquet(cfg: GeneratorConfig, path: Path) -> None:
    t0 = time.perf_counter()
    write_parquet(cfg, path)
    n = int(cfg.rate * cfg.duration_s)
    print(f"wrote ~{n:,} events to {path} in {time.perf_counter() - t0:.1f}s")


def to_kafka(repo_path, cfg: GeneratorConfig, pace: bool = True, quiet: bool = False) -> dict:
    """Produce the generated stream; returns counts and the achieved rate."""
    from confluent_kafka import Producer

    repo = load_repo(repo_path)
    conn = load_connection()
    events_codec = codec_for(repo, "events")
    labels_codec = codec_for(repo, "labels") if cfg.labels else None
    try:  # vectorised encoding for flat schemas (the example's); per-record fastavro otherwise
        columnar = ColumnarCodec.from_codec(events_codec)
    except ColumnarUnsupported:
        columnar = None
    topic, labels_topic = repo.topics.events.name, repo.topics.labels.name
    # paced: events reach the broker about when they are due (scoring latency is measured from append)
    producer = Producer({**producer_config(conn.bootstrap_servers), **({"linger.ms": 5} if pace else {})})
    failures: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    n_events = n_labels = 0
    expected = int(cfg.rate * cfg.duration_s)  # background events; card-testing bursts come on top
    t0 = time.perf_counter()
    wall0 = int(time.time() * 1000)
    last_report = t0
    shift_ms = wall0 - int(cfg.duration_s * 1000)
    chunk_rows = max(1, int(cfg.rate * 0.01)) if pace else 65536  # pace in ~10 ms steps
    for batch in generate(cfg):
        shifts = []  # new - generated event time, per event row, so labels keep their delay
        for lo in range(0, batch.events.num_rows, chunk_rows):
            ev = batch.events.slice(lo, chunk_rows)
            arrival = np.asarray(batch.arrival_ms[lo:lo + chunk_rows], dtype=np.int64)
            rel = ev.column("event_time").to_numpy() - cfg.origin_ms
            if pace:  # a chunk goes out when its last event is due; a late event need not be
                # held back for minutes: its event time is set below so the broker sees its delay
                _sleep_until(t0 + float(np.minimum(arrival, rel + cfg.disorder_ms).max()) / 1000.0)
            if pace:
                new_time = int(time.time() * 1000) - (arrival - rel)  # broker sees the intended delay
            else:
                new_time = shift_ms + rel  # generated spacing kept; the stream ends about now
            shifts.append(new_time - ev.column("event_time").to_numpy())
            ev = ev.set_column(ev.schema.get_field_index("event_time"), "event_time",
                               pa.array(new_time, pa.int64()))
            values = columnar.encode_table(ev) if columnar else events_codec.encode_many(ev.to_pylist())
            for key, value in zip(ev.column("card_id").to_pylist(), values):
                _produce(producer, topic, key.encode(), value, on_delivery)
            n_events += ev.num_rows
            producer.poll(0)
            if not quiet and time.perf_counter() - last_report > 2:
                last_report = time.perf_counter()
                print(f"  produced {n_events:,} events of ~{expected:,} "
                      f"({n_events / (last_report - t0):,.0f}/s)", flush=True)
        if labels_codec is not None and batch.labels is not None and batch.labels.num_rows:
            labels = _shift_labels(batch.labels, batch.events, np.concatenate(shifts))
            for rec in labels.to_pylist():
                _produce(producer, labels_topic, rec["event_id"].encode(), labels_codec.encode(rec), on_delivery)
            n_labels += batch.labels.num_rows
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - t0
    if remaining or failures:
        raise StackError(f"{remaining} events undelivered, {len(failures)} failed "
                         f"({failures[:1]}): check `headwater stack status`")
    out = {"events": n_events, "labels": n_labels, "seconds": elapsed,
           "rate": n_events / elapsed if elapsed else 0.0, "start_ms": wall0}
    if not quiet:
        print(f"produced {n_events:,} events and {n_labels:,} labels to {topic} in {elapsed:.1f}s "
              f"({out['rate']:,.0f} events/s)")
    return out


def _shift_labels(labels: pa.Table, events: pa.Table, shift: np.ndarray) -> pa.Table:
    """Move each label's time by its event's shift (vectorised join on event_id)."""
    import pyarrow.compute as pc
    idx = pc.index_in(labels.column("event_id"), value_set=events.column("event_id")).to_numpy()
    new = labels.column("label_time").to_numpy() + shift[idx]
    return labels.set_column(labels.schema.get_field_index("label_time"), "label_time", pa.array(new, pa.int64()))


def _produce(producer, topic: str, key: bytes, value: bytes, on_delivery) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:  # local queue full: serve delivery reports, then retry (backpressure)
            producer.poll(0.05)


def _sleep_until(deadline: float) -> None:
    delta = deadline - time.perf_counter()
    if delta > 0:
        time.sleep(delta)


def read_back(repo_path, role: str, max_records: int, timeout_s: float = 10.0) -> Iterator[dict]:
    """Read a topic from the beginning with a throwaway group; decode with the role's codec."""
    from confluent_kafka import Consumer

    repo = load_repo(repo_path)
    conn = load_connection()
    topics = repo.topics.all()
    if role not in topics:
        raise StackError(f"unknown topic role {role!r}: choose one of {', '.join(topics)}")
    codec = codec_for(repo, role)
    consumer = Consumer({
        "bootstrap.servers": conn.bootstrap_servers,
        "group.id": f"headwater-read-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,  # a read-back must not move anybody's offsets
        "log_level": 3,
    })
    try:
        consumer.subscribe([topics[role].name])
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < max_records and time.monotonic() < deadline:
            msgs = consumer.consume(min(10_000, max_records - seen), timeout=0.5)
            for m in msgs:
                if m.error():
                    continue
                rec = codec.decode(m.value())
                rec["_partition"], rec["_offset"] = m.partition(), m.offset()
                rec["_timestamp_ms"] = m.timestamp()[1]
                seen += 1
                yield rec
    finally:
        consumer.close()
