"""Produce and read-back throughput of Avro-encoded (Confluent-framed) transactions.

    python bench/produce.py [--events 1000000] [--repo examples/fraud]

Needs a running stack (`headwater stack up`). Each run writes a fresh 3-partition topic with
the events topic's configs. Generation is done up front and not timed. Two encoders:
fastavro per record (AvroCodec) and the vectorised ColumnarCodec; the producer is
confluent-kafka with the batching settings of `headwater produce` (headwater.produce).
Prints a Markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer  # noqa: E402

from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.generator import GeneratorConfig, generate_table  # noqa: E402
from headwater.produce import producer_config  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from schemas import AvroCodec  # noqa: E402
from schemas.columnar import ColumnarCodec  # noqa: E402
from headwater.topic_read import FETCH_QUEUE_BACKOFF_MS  # noqa: E402


def _topic(conn, repo, name: str) -> str:
    spec = repo.topics.events.copy_with(name=name)
    topics = repo.topics.copy_with(events=spec.model_dump(by_alias=True))
    create_topics(conn, topics)
    return name


def produce(conn, topic: str, table, encode) -> tuple[float, float]:
    """(seconds to encode, seconds to encode+produce+flush)."""
    p = Producer(producer_config(conn.bootstrap_servers))
    keys = [k.encode() for k in table.column("card_id").to_pylist()]
    t0 = time.perf_counter()
    values = encode(table)
    t_enc = time.perf_counter() - t0
    for k, v in zip(keys, values):
        while True:
            try:
                p.produce(topic, v, k)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(120) == 0
    return t_enc, time.perf_counter() - t0


def read_back(conn, topic: str, n: int, decode) -> float:
    c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                  "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS})  # librdkafka's 1 s default idles a fast reader
    c.subscribe([topic])
    seen, t0 = 0, None
    while seen < n:
        msgs = c.consume(20_000, timeout=1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        good = [m.value() for m in msgs if m.error() is None]
        decode(good)
        seen += len(good)
    dt = time.perf_counter() - t0
    c.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repo", default="examples/fraud")
    args = ap.parse_args()
    conn, repo = load_connection(), load_repo(args.repo)
    from headwater.repo_schemas import codec_for
    codec: AvroCodec = codec_for(repo, "events")
    col = ColumnarCodec.from_codec(codec)
    rate = 100_000.0
    t0 = time.perf_counter()
    table, _ = generate_table(GeneratorConfig(rate=rate, entities=100_000, duration_s=args.events / rate, seed=1))
    gen_s = time.perf_counter() - t0
    n = table.num_rows
    rows = [("generate (not Kafka)", n, gen_s)]
    print(f"generated {n:,} events in {gen_s:.1f}s", file=sys.stderr)

    for label, enc, dec in (
        ("fastavro per record", lambda t: codec.encode_many(t.to_pylist()),
         lambda vs: [codec.decode(v) for v in vs]),
        ("columnar (vectorised)", col.encode_table, col.decode_batch),
    ):
        topic = _topic(conn, repo, f"bench.produce.{uuid.uuid4().hex[:6]}")
        t_enc, t_all = produce(conn, topic, table, enc)
        rows.append((f"encode only, {label}", n, t_enc))
        rows.append((f"encode + produce + flush, {label}", n, t_all))
        print(f"{label}: produce {n / t_all:,.0f}/s", file=sys.stderr)
        t_read = read_back(conn, topic, n, dec)
        rows.append((f"consume + decode, {label}", n, t_read))

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Kafka single broker on loopback; date {date.today().isoformat()}\n")
    print("| stage | events | seconds | events/s |")
    print("|---|---:|---:|---:|")
    for label, cnt, secs in rows:
        print(f"| {label} | {cnt:,} | {secs:.2f} | {cnt / secs:,.0f} |")


if __name__ == "__main__":
    main()
