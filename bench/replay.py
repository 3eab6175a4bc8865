"""Replay throughput (events/s): Kafka -> the features SQL in batch mode -> Parquet tiles.

    flock /tmp/headwater-bench.lock python bench/replay.py [--events 1000000] [--parallelism N] [--runs 1] [--scan-only]

Produces N generated events of the example fraud repository to a fresh events topic with the
columnar producer (unpaced), then replays the whole topic with ``replay.run_replay`` into a
temporary directory and prints a Markdown table: events, seconds (including MiniCluster start
and planning), events/s, tiles written, late events. ``--keep`` keeps the output directory and the topics;
``--scan-only`` adds a row for a bare scan of the same topic (the floor for any tile plan).
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
from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.teardown import KEEP_ENV, scratch_repo  # noqa: E402
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
    ap.add_argument("--scan-only", action="store_true",
                    help="also time a bare scan of the topic (COUNT(*) into a blackhole): the floor for any plan")
    args = ap.parse_args()
    conn = load_connection()
    suffix = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="hw-bench-replay-"))
    if args.keep:
        os.environ[KEEP_ENV] = "1"  # the topics too
    with scratch_repo(Path(args.repo), tmp / "repo", suffix) as repo_dir:
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
        if args.scan_only:
            rows.append(scan(repo, n, args.parallelism))
        print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores (shared); Flink 2.2.1 MiniCluster, batch mode; "
              f"fraud plan ({', '.join(views) if views else 'all views'}); {repo.topics.partitions} partitions; "
              f"options {' '.join(args.set) or '(replay defaults)'}; "
              f"date {date.today()}\n")
        print("| run | events | seconds (incl. start + planning) | events/s | tiles | late | parallelism |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for i, (cnt, sec, _startup, tiles, late, par) in enumerate(rows):
            label = "scan only" if tiles is None else str(i + 1)
            print(f"| {label} | {cnt:,} | {sec:.1f} | {cnt / sec:,.0f} | {'—' if tiles is None else f'{tiles:,}'} | "
                  f"{'—' if late is None else f'{late:,}'} | {par} |")
    if args.keep:
        print(f"\noutput kept under {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def scan(repo, n: int, parallelism: int | None):
    """The same source table, earliest -> latest offset, counted per partition into a blackhole."""
    from streamjobs import compiler
    from streamjobs.job import bindings, table_env
    from streamjobs.repo import load_definitions
    conn = load_connection()
    sources, _, _ = bindings(repo, load_definitions(repo))
    src = next(iter(sources.values()))
    par = parallelism or repo.topics.partitions
    t0 = time.perf_counter()
    env = table_env(conn, mode="batch", parallelism=par, extra=compiler.job_config("batch"))
    env.execute_sql(compiler.source_ddl(src, conn.bootstrap_servers, "bench-scan",
                                        compiler.KafkaBounds(startup="earliest-offset", bounded="latest-offset")))
    env.execute_sql("CREATE TEMPORARY TABLE hw_scan (p INT, c BIGINT) WITH ('connector' = 'blackhole')")
    env.execute_sql(f"INSERT INTO hw_scan SELECT {compiler.q(compiler.PARTITION)}, COUNT(*) "
                    f"FROM {compiler.q(src.table)} GROUP BY {compiler.q(compiler.PARTITION)}").wait()
    return (n, time.perf_counter() - t0, 0.0, None, None, par)


if __name__ == "__main__":
    main()
