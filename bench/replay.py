"""Replay throughput (events/s): Kafka -> the features SQL in batch mode -> Parquet tiles.

    flock /tmp/headwater-bench.lock python bench/replay.py [--events 1000000] [--parallelism N] [--runs 1]

Produces N generated events of the example fraud repository to a fresh events topic with the
columnar producer (unpaced), then replays the whole topic with ``replay.run_replay`` into a
temporary directory and prints a Markdown table: events, seconds (including MiniCluster start
and planning), events/s, tiles written, late events. ``--keep`` keeps the output directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headwater import produce  # noqa: E402
from headwater.config import clone_repo, load_connection, load_repo  # noqa: E402
from headwater.generator import GeneratorConfig  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from replay import run_replay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repo", default="examples/fraud")
    ap.add_argument("--parallelism", type=int, default=None, help="default: one per topic partition")
    ap.add_argument("--runs", type=int, default=1, help="replays of the same topic (the first warms caches)")
    ap.add_argument("--views", default=None, help="comma-separated view names (default all)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Flink option (repeatable)")
    args = ap.parse_args()
    conn = load_connection()
    suffix = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="hw-bench-replay-"))
    repo_dir = clone_repo(Path(args.repo), tmp / "repo", suffix)
    repo = load_repo(repo_dir)
    create_topics(conn, repo.topics)
    rate = 100_000.0
    cfg = GeneratorConfig(rate=rate, entities=50_000, duration_s=args.events / rate, seed=9)
    t0 = time.perf_counter()
    n = produce.to_kafka(repo_dir, cfg, pace=False, quiet=True)["events"]
    print(f"produced {n:,} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rows = []
    views = args.views.split(",") if args.views else None
    for i in range(args.runs):
        out = tmp / f"tiles-{i}"
        st = run_replay(repo, out, views=views, parallelism=args.parallelism,
                        flink_config=dict(kv.split("=", 1) for kv in args.set),
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
        tiles = sum(v.tiles_written for v in st.views)
        late = max((v.events_late for v in st.views), default=0)
        rows.append((st.events_read, st.seconds, st.startup_seconds, tiles, late, st.parallelism))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores (shared); Flink 2.2.1 MiniCluster, batch mode; "
          f"fraud plan ({', '.join(views) if views else 'all views'}); {repo.topics.partitions} partitions; "
          f"options {' '.join(args.set) or '(replay defaults)'}; "
          f"date {date.today()}\n")
    print("| run | events | seconds (incl. start + planning) | events/s | tiles | late | parallelism |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i, (cnt, sec, _startup, tiles, late, par) in enumerate(rows):
        print(f"| {i + 1} | {cnt:,} | {sec:.1f} | {cnt / sec:,.0f} | {tiles:,} | {late:,} | {par} |")
    if args.keep:
        print(f"\noutput kept under {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
