"""Flink features job throughput at saturation (events/s), example fraud plan.

    python bench/flink_job.py [--events 1000000] [--modes streaming,batch] [--set KEY=VALUE ...]

Produces N generated events to a fresh events topic as fast as possible, then runs the compiled
features job over the whole topic (earliest -> latest offset) in streaming mode (mini-batch,
what `features run` uses) and in batch mode (what replay uses), writing tiles to a fresh tiles
topic. Reports wall time including and excluding MiniCluster start-up (measured with an empty
job on the same session), and what the job wrote to the tiles topic: records (values and
tombstones) per event. ``--set`` overrides a Flink option for the run (to compare configurations).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headwater import produce  # noqa: E402
from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.teardown import scratch_repo  # noqa: E402
from headwater.topics import delete_topics  # noqa: E402
from headwater.generator import GeneratorConfig  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from streamjobs.compiler import KafkaBounds  # noqa: E402
from streamjobs.job import compile_features, default_parallelism, submit  # noqa: E402
from streamjobs.repo import load_definitions  # noqa: E402


def temp_repo(src: Path, suffix: str):
    """A suffixed copy of ``src`` whose topics, keys and Flink state go when the block ends."""
    return scratch_repo(src, Path(tempfile.mkdtemp()) / "repo", suffix)


def topic_counts(conn, topic: str) -> tuple[int, int]:
    """(values, tombstones) in ``topic``, read from the beginning to its end offsets."""
    from headwater.topic_read import read_to_end
    values = tombstones = 0
    for batch in read_to_end(conn.bootstrap_servers, topic, timeout_s=600):
        nulls = sum(m.value() is None for m in batch)
        tombstones += nulls
        values += len(batch) - nulls
    return values, tombstones


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repo", default="examples/fraud")
    ap.add_argument("--modes", default="streaming,batch")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Flink option override")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    conn = load_connection()
    suffix = uuid.uuid4().hex[:6]
    with temp_repo(Path(args.repo), suffix) as repo_dir:
        repo = load_repo(repo_dir)
        create_topics(conn, repo.topics)
        rate = 100_000.0
        cfg = GeneratorConfig(rate=rate, entities=50_000, duration_s=args.events / rate, seed=9)
        out = produce.to_kafka(repo_dir, cfg, pace=False, quiet=True)
        n = out["events"]
        defs = load_definitions(repo)
        rows = []
        for mode in args.modes.split(","):
            tiles_name = f"bench.tiles.{mode}.{suffix}"
            r2 = repo.copy_with(topics={**repo.topics.model_dump(by_alias=True),
                                        "tiles": {**repo.topics.tiles.model_dump(by_alias=True), "name": tiles_name}})
            create_topics(conn, r2.topics)
            job = compile_features(conn, r2, defs, mode=mode, group_id=f"bench-{mode}-{suffix}",
                                   bounds=KafkaBounds(startup="earliest-offset", bounded="latest-offset"))
            job = dataclasses.replace(job, config={**job.config, **overrides})
            t0 = time.perf_counter()
            res = submit(conn, job, mode=mode)
            t_submit = time.perf_counter() - t0
            res.wait()
            total = time.perf_counter() - t0
            values, tombstones = topic_counts(conn, tiles_name)
            rows.append((mode, n, total, t_submit, values, tombstones))
            print(f"{mode}: {n:,} events in {total:.1f}s (submit {t_submit:.1f}s); tiles topic: {values:,} values, "
                  f"{tombstones:,} tombstones", file=sys.stderr)
            delete_topics(conn, [tiles_name])  # not one of the repository's topics: teardown would miss it
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; Flink 2.2.1 MiniCluster, parallelism {default_parallelism()}; "
          f"plan: {len(defs.plan.views)} views, "
          f"{sum(len(v.ladder) + 1 for v in defs.plan.views)} aggregations per event; overrides {overrides or 'none'}; "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; date {date.today()}\n")
    print("| mode | events | wall s (incl. planning + start) | events/s | events/s excl. planning/submit "
          "| tile values / event | tombstones / event |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, cnt, total, t_submit, values, tombstones in rows:
        print(f"| {mode} | {cnt:,} | {total:.1f} | {cnt / total:,.0f} | {cnt / (total - t_submit):,.0f} "
              f"| {values / cnt:.2f} | {tombstones / cnt:.2f} |")


if __name__ == "__main__":
    main()
