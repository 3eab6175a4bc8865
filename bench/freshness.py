"""Append -> visible-in-fetch latency of the streaming features pipeline, at several rates.

    python bench/freshness.py [--rates 1000,5000,10000] [--seconds 30]

For each rate: a fresh copy of the example repository (own topics), `headwater features run`
(Flink job + online writer) in a subprocess, then events produced live at that rate. Every
event's broker append time comes from its delivery report. A prober fetches from Redis every
20 ms (one `fetch_repo` round trip, which returns the published `as_of`); an event is visible
at the first probe whose as_of covers its append time (as_of is only published once the tiles
up to it are in Redis). Latency = visible wall time - append time. Prints a Markdown table.

``--shape generated`` (default) paces events as the generator spaces them: its card-testing
bursts (about one a minute, ~6 s at 4x the normal intensity, normalised so the mean is the rate)
make a 10k events/s run peak near 30k events/s for a few seconds. ``--shape steady`` paces the
same events at exactly the rate. ``--warmup-load S`` produces S seconds at the rate first and
leaves those events out of the percentiles (the job's JIT-compiled code paths and the writer's
caches are cold when the first events arrive); the table reports the whole run either way as
well as the measured part.

``--breakdown`` (a separate run: its decoding shares the cores and the GIL with the producer and
the prober, so its latencies read high) adds two columns: a second consumer reads the tiles topic and
notes, per progress record, its Kafka timestamp - the newest append time it vouches for (the
Flink side: mini-batch + sink), and per tile record the same gap (tiles lag progress; the online
writer's settle rule waits for them before it publishes as_of).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flink_job import temp_repo  # noqa: E402
from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.generator import GeneratorConfig, generate  # noqa: E402
from headwater.repo_schemas import codec_for  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from online_store import fetch_repo  # noqa: E402
from online_store.repo_fetch import redis_client  # noqa: E402
from schemas import ColumnarCodec  # noqa: E402
from streamjobs.repo import load_definitions  # noqa: E402


def one_rate(rate: float, seconds: float, warmup_s: float = 25.0, breakdown: bool = False,
             shape: str = "generated", warmup_load_s: float = 0.0, per_second: bool = False) -> dict:
    with temp_repo(Path("examples/fraud"), f"fr{int(rate)}{os.getpid()}") as repo_dir:
        return _one_rate(repo_dir, rate, seconds, warmup_s, breakdown, shape, warmup_load_s, per_second)


def _one_rate(repo_dir: Path, rate: float, seconds: float, warmup_s: float, breakdown: bool,
              shape: str, warmup_load_s: float, per_second: bool) -> dict:
    conn = load_connection()
    repo = load_repo(repo_dir)
    create_topics(conn, repo.topics)
    plan = load_definitions(repo).plan
    job = subprocess.Popen([sys.executable, "-m", "headwater.cli", "features", "run", "--repo", str(repo_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from confluent_kafka import Producer
    from headwater.produce import producer_config
    appends: list[int] = []
    p = Producer({**producer_config(conn.bootstrap_servers), "linger.ms": 5})

    def on_delivery(err, msg):
        if err is None:
            appends.append(msg.timestamp()[1])

    probes: list[tuple[float, int]] = []
    stop = threading.Event()
    lags: dict[str, list[int]] = {"progress": [], "tile": []}

    def tiles_reader():
        """Kafka timestamp - max_append_ms of every tile and progress record the job writes."""
        from confluent_kafka import Consumer

        from online_store.tiles import is_marker, is_progress
        from online_store.writer import _open
        _, dec = _open(conn, repo, r)
        c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": f"fresh-{os.getpid()}-{rate:.0f}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([repo.topics.tiles.name])
        while not stop.is_set():
            for m in c.consume(1000, 0.1):
                if m.error() is None and m.value() is not None:
                    rec = dec.decode(m.value())
                    if not is_marker(rec) and rec["resolution_ms"] >= 0:  # late counts are no tiles
                        lags["progress" if is_progress(rec) else "tile"].append(m.timestamp()[1] - rec["max_append_ms"])
        c.close()

    r = redis_client(conn.redis_url)

    def prober():
        while not stop.is_set():
            res = fetch_repo(repo, {"card_id": ["c0"]}, ["card_velocity:txn_count_1m"], redis=r, plan=plan)
            if res.min_as_of_ms is not None:
                probes.append((time.time() * 1000, res.min_as_of_ms))
            time.sleep(0.02)

    try:
        time.sleep(warmup_s)  # MiniCluster start + job deployment
        codec = ColumnarCodec.from_codec(codec_for(repo, "events"))
        topic = repo.topics.events.name
        cfg = GeneratorConfig(rate=rate, entities=20_000, duration_s=warmup_load_s + seconds, seed=5,
                              start_ms=int(time.time() * 1000))
        th = threading.Thread(target=prober, daemon=True)
        th.start()
        tr = threading.Thread(target=tiles_reader, daemon=True) if breakdown else None
        if tr is not None:
            tr.start()
        t0 = time.perf_counter()
        measured_from_ms = time.time() * 1000 + warmup_load_s * 1000
        chunk = max(1, int(rate * 0.02))
        sent = 0
        for batch in generate(cfg):
            for lo in range(0, batch.events.num_rows, chunk):
                ev = batch.events.slice(lo, chunk)
                sent += ev.num_rows
                due = t0 + (sent / rate if shape == "steady"
                            else float(batch.arrival_ms[min(lo + chunk, batch.events.num_rows) - 1]) / 1000)
                while time.perf_counter() < due:
                    p.poll(0.001)
                now = int(time.time() * 1000)
                ev = ev.set_column(ev.schema.get_field_index("event_time"), "event_time",
                                   pa.array(np.full(ev.num_rows, now), pa.int64()))
                for key, val in zip(ev.column("card_id").to_pylist(), codec.encode_table(ev)):
                    p.produce(topic, val, key.encode(), on_delivery=on_delivery)
                p.poll(0)
        p.flush(30)
        achieved = len(appends) / (time.perf_counter() - t0)
        deadline = time.time() + 120
        while (not probes or probes[-1][1] < max(appends)) and time.time() < deadline:
            time.sleep(0.2)
        stop.set()
        th.join()
        if tr is not None:
            tr.join(10)
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
    pw = np.array([t for t, _ in probes])
    asof = np.maximum.accumulate(np.array([a for _, a in probes]))
    ap = np.array(appends)
    idx = np.searchsorted(asof, ap)  # first probe whose as_of >= append
    seen = idx < len(pw)
    lat = (pw[idx[seen]] - ap[seen]) / 1000.0
    late = lat[ap[seen] >= measured_from_ms]  # the measured part: appended after the warm-up load
    per_s = np.bincount(((ap - ap.min()) // 1000).astype(np.int64)) if len(ap) else np.zeros(1)

    def pct(x, q):
        return float(np.percentile(x, q)) if len(x) else float("nan")

    if per_second:  # where the tail is: bursts, warm-up, stalls
        sec = (ap[seen] - ap.min()) // 1000
        for i in range(int(sec.max()) + 1 if len(sec) else 0):
            x = lat[sec == i]
            print(f"  second {i:3d}: {len(x):6,} events, latency p50 {pct(x, 50):5.2f} max "
                  f"{x.max() if len(x) else float('nan'):5.2f} s", file=sys.stderr)

    return {"rate": rate, "shape": shape, "warmup_load_s": warmup_load_s, "achieved": achieved, "events": len(ap),
            "visible": int(seen.sum()), "peak": int(per_s.max()),
            "p50": pct(late, 50), "p99": pct(late, 99), "all_p50": pct(lat, 50), "all_p99": pct(lat, 99),
            **{f"{k}_{q}": pct(np.array(v) / 1000.0, q) for k, v in lags.items() for q in (50, 99)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--breakdown", action="store_true", help="also time progress and tile records on the tiles topic")
    ap.add_argument("--shape", choices=("generated", "steady"), default="generated",
                    help="pace events as generated (card-testing bursts) or at exactly the rate")
    ap.add_argument("--warmup-load", type=float, default=0.0, metavar="S",
                    help="seconds produced at the rate first, left out of p50 / p99 (default 0)")
    ap.add_argument("--per-second", action="store_true", help="print each second's event count and latency")
    args = ap.parse_args()
    rows = []
    for rate in [float(x) for x in args.rates.split(",")]:
        rows.append(one_rate(rate, args.seconds, breakdown=args.breakdown, shape=args.shape,
                             warmup_load_s=args.warmup_load, per_second=args.per_second))
        print(rows[-1], file=sys.stderr)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; Kafka, Redis, Flink MiniCluster and the "
          f"producer on the same machine; {args.shape} pacing; {args.warmup_load:.0f} s of warm-up load, then "
          f"{args.seconds:.0f} s measured per rate; date {date.today()}\n")
    extra = " progress record lag p50 / p99 s | tile record lag p50 / p99 s |" if args.breakdown else ""
    print("| offered events/s | achieved | peak events in 1 s | events | visible within 120 s | p50 s | p99 s "
          "| whole run p50 / p99 s |" + extra)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.breakdown else ""))
    for r in rows:
        cells = (f" {r['progress_50']:.2f} / {r['progress_99']:.2f} | {r['tile_50']:.2f} / {r['tile_99']:.2f} |"
                 if args.breakdown else "")
        print(f"| {r['rate']:,.0f} | {r['achieved']:,.0f} | {r['peak']:,} | {r['events']:,} | {r['visible']:,} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} | {r['all_p50']:.2f} / {r['all_p99']:.2f} |" + cells)


if __name__ == "__main__":
    main()
