"""Scoring consumer throughput and consume->produce latency, against a bare Kafka ceiling.

    flock /tmp/headwater-bench.lock python bench/score.py [--events 100000] [--duration 10]

Setup (not timed): a fresh copy of examples/fraud (suffixed topics and project), Redis tiles for
the generator's cards and merchants built with ``ir`` from a generated history (the test
helper ``tile_records``: the same tiles the Flink job writes, without running Flink), a logistic
regression production model and one shadow (5 features, card + merchant views) in the registry.

1. ceiling: ``--events`` pre-produced events, a bare confluent-kafka loop (consume a batch,
   produce each value unchanged, flush, store offsets): no decode, no features, no model. It runs
   with the start-up heap frozen, as the scoring loop does (``headwater/heap.py``).
2. saturation: the scoring consumer on the same events (fresh group), at-least-once, one shadow,
   feature log off (it is sampled in production; see --feature-log-rate).
3. offered rates: ``headwater produce`` paced at fractions of the saturation rate in a separate
   process while the consumer runs; per-event latency = event append time (LogAppendTime) ->
   the batch's outputs acknowledged by Kafka (flush returned). Batches settled in the first
   ``--warmup`` seconds (1 s) of each rate are not counted: the consumer's first batches pay cold
   caches (read layouts, first Arrow/NumPy calls) while its batch target adapts, 60-100 ms once
   per process, which at 10 % of max would otherwise be the whole p99. Per rate it also prints the
   mean stage times per batch and append -> batch start (the consumer's fetch, and waiting for the
   batch before to finish), the part of the latency outside the stages. ``--rates 10000,40000``
   offers fixed rates instead: A/B runs of a change compare at the same rates, whatever each run's
   saturation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

REFS = ("card_velocity:txn_count_10m", "card_velocity:amount_sum_1h", "card_velocity:amount_mean_1h",
        "card_velocity:amount_max_1h", "merchant_activity:merchant_txn_count_1h")


def setup(path: Path, entities: int):
    """Tiles and models for ``path``, a scratch copy of examples/fraud."""
    from online_store.repo_fetch import redis_client
    from headwater.config import load_connection, load_repo
    from headwater.generator import GeneratorConfig, generate_table
    from headwater.topics import create_topics
    from online_store import TileWriter
    from scoring.models.dense import DenseModel
    from scoring.registry import Registry, feature_hashes
    from streamjobs.repo import load_definitions
    from test_online_store import progress_record, tile_records

    repo, conn = load_repo(path), load_connection()
    create_topics(conn, repo.topics)
    plan = load_definitions(repo).plan
    rds = redis_client(conn.redis_url)
    now = int(time.time() * 1000)
    hist, _ = generate_table(GeneratorConfig(rate=20, entities=entities, duration_s=3000, seed=3,
                                             start_ms=now - 3_000_000))
    events = hist.to_pylist()
    for i, e in enumerate(events):
        e.update(event_time_ms=e["event_time"], append_time_ms=e["event_time"], partition=i % 3, offset=i)
    w = TileWriter(rds, repo.project, plan, source_partitions={v.name: 3 for v in plan.views})
    for vp in plan.views:
        recs = tile_records(vp, events)
        for lo in range(0, len(recs), 5000):
            w.write(recs[lo:lo + 5000])
        w.write([progress_record(vp, p, now) for p in range(3)])
    reg = Registry.for_repo(repo)
    rng = np.random.default_rng(0)
    for name in ("fraud", "fraud_shadow"):
        k = len(REFS)
        model = DenseModel(np.zeros(k), np.zeros(k), np.full(k, 100.0), ((rng.normal(size=(k, 1)), np.zeros(1)),))
        reg.register(name, "logreg", REFS, model.save, feature_hashes=feature_hashes(plan, REFS), threshold=0.5)
    print(f"setup: {len(events):,} history events -> tiles for {entities:,} cards in Redis; models registered",
          flush=True)
    return path, repo, conn, rds


def produce_fast(path: Path, n: int, entities: int) -> None:
    from headwater import produce
    from headwater.generator import GeneratorConfig
    produce.to_kafka(path, GeneratorConfig(rate=n / 10, entities=entities, duration_s=10, seed=11),
                     pace=False, quiet=True)


def ceiling(repo, conn, n: int, batch: int) -> float:
    from headwater.heap import frozen_heap
    with frozen_heap():  # the same treatment as the scoring loop: its GC savings are not counted as a gain
        return _ceiling(repo, conn, n, batch)


def _ceiling(repo, conn, n: int, batch: int) -> float:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from headwater.topic_read import FETCH_QUEUE_BACKOFF_MS
    c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": f"ceiling-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.offset.store": False,
                  # as the scorer: librdkafka's default (1000 ms) idled this loop 0.5-1 s per run, the
                  # cause of the ceiling's two modes (135k-141k or 215k-234k events/s)
                  "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS})
    p = Producer({"bootstrap.servers": conn.bootstrap_servers, "enable.idempotence": True, "linger.ms": 2,
                  "batch.size": 1_000_000, "compression.type": "lz4", "queue.buffering.max.messages": 200_000})
    out = repo.topics.shadow.name + ".ceiling"
    # the output topic exists before the clock starts, like the scorer's (created in setup), and the
    # producer has its metadata and id: the ceiling times the loop, not topic auto-creation
    from confluent_kafka.admin import AdminClient, NewTopic
    adm = AdminClient({"bootstrap.servers": conn.bootstrap_servers})
    shadow = repo.topics.shadow.name
    parts = len(adm.list_topics(shadow, timeout=10).topics[shadow].partitions)
    for fut in adm.create_topics([NewTopic(out, parts, 1)]).values():
        fut.result(30)
    p.produce(out, b"warm-up")  # metadata and producer id, before the clock starts
    p.flush(30)
    c.subscribe([repo.topics.events.name])
    done, t0 = 0, None
    while done < n:
        msgs = c.consume(batch, 1.0)
        if not msgs:
            continue
        t0 = t0 or time.perf_counter()
        last: dict[int, int] = {}
        for m in msgs:
            p.produce(out, m.value(), m.key())
            last[m.partition()] = m.offset()
        p.flush(30)
        c.store_offsets(offsets=[TopicPartition(m.topic(), q, o + 1) for q, o in last.items()])
        done += len(msgs)
    dt = time.perf_counter() - t0
    c.close()
    from headwater.topics import delete_topics
    delete_topics(conn, [out])  # not one of the repository's topics: its teardown would miss it
    return done / dt


def headwater_loop(path: Path, rds, group: str, lat: list | None = None, batches: list | None = None,
                   warmup_s: float = 0.0, waits: list | None = None):
    from scoring.service import ScoreOptions, build
    first: list[float] = []

    def on_batch(out):
        first[:] = first or [time.monotonic()]
        if lat is not None and out.e2e_ms is not None and time.monotonic() - first[0] >= warmup_s:
            lat.append(out.e2e_ms)
            if waits is not None:  # append -> the batch's start: the consumer's fetch and a busy loop
                waits.append(out.e2e_ms - out.latency_ms["batch"])
        if batches is not None:
            batches.append(len(out.e2e_ms) if out.e2e_ms is not None else 0)

    opts = ScoreOptions(model="fraud", shadows=("fraud_shadow",), device="cpu", feature_log_rate=0.0,
                        group_id=group, reload_s=3600)
    loop, _ = build(path, opts, redis=rds, on_batch=on_batch)
    return loop


def saturation(path: Path, rds, n: int) -> float:
    sizes: list[int] = []
    loop = headwater_loop(path, rds, f"sat-{uuid.uuid4().hex}", batches=sizes)
    t = {"t0": None}
    inner = loop.on_batch

    def first(out):
        t["t0"] = t["t0"] or time.perf_counter() - out.latency_ms.get("batch", 0) / 1e3
        inner(out)

    loop.on_batch = first
    loop.run(max_events=n, idle_timeout_s=10)
    rate = loop.stats.events / (time.perf_counter() - t["t0"])
    print(f"  saturation: {loop.stats.events:,} events in {len(sizes)} batches (median {np.median(sizes):.0f})",
          flush=True)
    share = {}
    for metric in loop.metrics.stage.collect():
        for smp in metric.samples:
            if smp.name.endswith("_sum"):
                share[smp.labels["stage"]] = smp.value
    total = sum(share.values()) or 1.0
    print("  time per stage: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(share.items(), key=lambda kv: -kv[1])),
          flush=True)
    return rate


def offered(path: Path, rds, rate: float, duration: float, entities: int,
            warmup_s: float) -> tuple[float, float, int]:
    lat: list[np.ndarray] = []
    waits: list[np.ndarray] = []
    loop = headwater_loop(path, rds, f"rate-{uuid.uuid4().hex}", lat=lat, warmup_s=warmup_s, waits=waits)
    # start at the end of the topic: only the paced events count
    loop.s = type(loop.s)(**{**loop.s.__dict__, "auto_offset_reset": "latest"})
    from confluent_kafka import Consumer
    loop.consumer.close()
    loop.consumer = Consumer(loop.s.consumer_conf())
    th = threading.Thread(target=loop.run, kwargs={"idle_timeout_s": 15}, daemon=True)
    th.start()
    loop.assigned.wait(30)  # joined the group (consumer methods are not called from this thread)
    time.sleep(1)
    subprocess.run([sys.executable, "-m", "headwater.cli", "produce", "--repo", str(path), "--rate", str(rate),
                    "--duration", str(duration), "--entities", str(entities), "--seed", "5"], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    th.join(120)
    allv = np.concatenate(lat) if lat else np.zeros(1)
    stages = {}
    for metric in loop.metrics.stage.collect():
        for smp in metric.samples:
            if smp.name.endswith("_sum"):
                stages[smp.labels["stage"]] = smp.value * 1e3 / max(1, loop.stats.batches)
    wait = np.concatenate(waits) if waits else np.zeros(1)
    print(f"    {loop.stats.batches} batches, mean {allv.size / max(1, loop.stats.batches):.0f} events; mean ms per "
          "batch: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
          + f"; append -> batch start p50 {np.percentile(wait, 50):.1f}, p99 {np.percentile(wait, 99):.1f} ms",
          flush=True)
    return float(np.percentile(allv, 50)), float(np.percentile(allv, 99)), int(allv.size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--entities", type=int, default=20_000)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per offered rate")
    ap.add_argument("--fractions", default="0.1,0.25,0.5", help="offered rates as fractions of saturation")
    ap.add_argument("--rates", default="", help="offered rates in events/s instead of --fractions (A/B runs: the same "
                                                "rates whatever each run's saturation)")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="seconds of each offered rate not counted in its percentiles (first batches: cold caches, "
                         "the batch target adapting)")
    args = ap.parse_args()
    from headwater.teardown import scratch_repo
    with tempfile.TemporaryDirectory() as d, \
            scratch_repo(ROOT / "examples" / "fraud", Path(d) / "repo", uuid.uuid4().hex[:8]) as path:
        path, repo, conn, rds = setup(path, args.entities)
        produce_fast(path, args.events, args.entities)
        ceil = ceiling(repo, conn, args.events, 4096)
        print(f"ceiling (bare consume->produce): {ceil:,.0f} events/s", flush=True)
        sat = saturation(path, rds, args.events)
        print(f"headwater (decode + fetch + model + 1 shadow + produce): {sat:,.0f} events/s", flush=True)
        rows = []
        fractions = ([float(x) / sat for x in args.rates.split(",") if x] if args.rates else
                     [float(x) for x in args.fractions.split(",") if x])
        for f in fractions:
            p50, p99, n = offered(path, rds, sat * f, args.duration, args.entities, args.warmup)
            rows.append((f, sat * f, p50, p99, n))
            print(f"  offered {sat * f:,.0f}/s ({f:.0%} of max): p50 {p50:.1f} ms, p99 {p99:.1f} ms over {n:,} events",
                  flush=True)
    print(f"\nheadwater / ceiling = {sat / ceil:.2f} (target >= 0.45); events/s per process {sat:,.0f} "
          f"(target >= 50,000)")
    half = [r for r in rows if abs(r[0] - 0.5) < 1e-9]
    if half:
        print(f"p99 at half the max rate: {half[0][3]:.1f} ms (target <= 25 ms)")
    print("machine: 2 shared cores, single local broker; Kafka, Redis and the producer share them (noisy)")


if __name__ == "__main__":
    main()
