"""``headwater demo``: the main job, end to end as far as it is built.

Today: stack up (Redis persistence on), topics, N generated transactions produced to Kafka and
read back and checked. Later stages (features, training, scoring) extend this same command.
"""

from __future__ import annotations

import time
from pathlib import Path

from headwater import produce, stack
from headwater.config import StackSettings, load_connection, load_repo
from headwater.errors import HeadwaterError
from headwater.generator import GeneratorConfig
from headwater.topics import create_topics

__all__ = ["run"]


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run(repo_path: str | Path, events: int = 20_000) -> int:
    repo = load_repo(repo_path)
    _step("1/4 stack up (Kafka KRaft + Redis with AOF persistence)")
    stack.up(StackSettings(redis_persistence=True))
    conn = load_connection()

    _step(f"2/4 topics for project {repo.project!r}")
    for r in create_topics(conn, repo.topics):
        print(f"  {r.action:8} {r.name} ({r.partitions} partitions)")

    _step(f"3/4 produce {events:,} generated card transactions (Zipf cards, card-testing bursts, "
          f"out-of-order and late arrivals)")
    rate = 20_000.0
    cfg = GeneratorConfig(rate=rate, entities=max(100, events // 20), duration_s=events / rate,
                          seed=int(time.time()), disorder_ms=2_000, late_fraction=0.01, labels=True)
    out = produce.to_kafka(repo.path, cfg, pace=False)

    _step("4/4 read the events back from Kafka")
    t0 = time.perf_counter()
    ids_seen = 0
    sample = []
    total = _total_events(conn, repo.topics.events.name)  # earlier demo runs' events included
    for rec in produce.read_back(repo.path, "events", total, timeout_s=60):
        ids_seen += 1
        if len(sample) < 3:
            sample.append(rec)
    dt = time.perf_counter() - t0
    for rec in sample:
        print(f"  {rec['event_id']:>14}  card={rec['card_id']:<8} merchant={rec['merchant_id']:<8} "
              f"amount={rec['amount']:>9.2f} {rec['country']}  event_time={rec['event_time']}  "
              f"append_time={rec['_timestamp_ms']}")
    print(f"  read back all {ids_seen:,} events in the topic (this run produced {out['events']:,}) "
          f"in {dt:.1f}s ({ids_seen / dt:,.0f}/s)")
    if ids_seen < out["events"]:
        raise HeadwaterError(f"read back {ids_seen} of {out['events']} events just produced: "
                             f"see `headwater stack logs kafka`")
    print("\ndemo ok: stack up, topics created, events produced and read back. "
          "Stop with `headwater stack down`.")
    return 0


def _total_events(conn, topic: str) -> int:
    """Messages currently in the topic (sum of high watermarks); earlier demo runs included."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": "headwater-demo-wm", "log_level": 3})
    try:
        md = c.list_topics(topic, timeout=10)
        total = 0
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += hi - lo
        return total
    finally:
        c.close()
