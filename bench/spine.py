"""`headwater spine` throughput: events and labels topics -> labelled spine.

    python bench/spine.py [--events 1000000] [--repeat 3]

Needs a running stack (`headwater stack up`). Produces the generator's transactions with labels
(unpaced, not timed) into a scratch copy of the example repository, then times
``backfill.labelled_spine`` reading both topics to their ends, decoding and joining. Prints a
Markdown table with the machine and date; the scratch topics are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backfill.labelled import labelled_spine  # noqa: E402
from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.generator import GeneratorConfig  # noqa: E402
from headwater.produce import to_kafka  # noqa: E402
from headwater.teardown import scratch_repo  # noqa: E402
from headwater.topics import create_topics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    conn = load_connection()
    with scratch_repo(ROOT / "examples" / "fraud", Path(tempfile.mkdtemp()) / "repo", uuid.uuid4().hex[:6]) as path:
        repo = load_repo(path)
        create_topics(conn, repo.topics)
        cfg = GeneratorConfig(rate=10_000, entities=max(200, args.events // 50), duration_s=args.events / 10_000,
                              seed=5, labels=True)
        print(f"producing ~{args.events:,} events with labels (not timed) ...", file=sys.stderr, flush=True)
        out = to_kafka(path, cfg, pace=False, quiet=True)
        rows = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            res = labelled_spine(repo, conn)
            s = time.perf_counter() - t0
            rows.append((res.events_read, res.labels_read, res.table.num_rows, s))
            print(f"run {i + 1}: {s:.2f} s", file=sys.stderr, flush=True)
    print(f"\n`bench/spine.py --events {args.events}` on {platform.machine()}, {os.cpu_count()} cores, "
          f"{date.today().isoformat()} ({out['events']:,} events, {out['labels']:,} labels produced)\n")
    print("| run | events read | labels read | spine rows | seconds | events/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, (ev, lab, n, s) in enumerate(rows, 1):
        print(f"| {i} | {ev:,} | {lab:,} | {n:,} | {s:.2f} | {ev / s:,.0f} |")


if __name__ == "__main__":
    main()
