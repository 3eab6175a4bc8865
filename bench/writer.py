"""Online writer throughput: a filled tiles topic into Redis, generated path vs full path.

    python bench/writer.py [--events 200000] [--rounds 3] [--repo DIR]

Produces N generated events (20,000 Zipf-skewed cards, as `bench/freshness.py`) to a fresh copy
of the example repository and runs the streaming features job over them (bounded: it stops at
the end), so the tiles topic holds what the live job writes: every mini-batch's upserts, ~2
tile records per event. ``--repo`` reuses a repository whose tiles topic is already filled
(e.g. one a freshness run left behind). Then, per round and in alternating order, the writer
loop (`online_store.rebuild`) writes the whole topic into an empty Redis project, once with the
generated path (`online_store/transcode.py`) and once with every record on the full path
(decode, `ir.from_row`, `TileCodec.encode`). Reports wall time, the writer process's CPU
seconds (all its threads) and Redis's (INFO cpu), per million records. Prints a Markdown table.
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

from headwater import produce  # noqa: E402
from headwater.config import clone_repo, load_connection, load_repo  # noqa: E402
from headwater.generator import GeneratorConfig  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from online_store.repo_fetch import redis_client  # noqa: E402
from online_store.writer import rebuild  # noqa: E402
from streamjobs.compiler import KafkaBounds  # noqa: E402
from streamjobs.job import compile_features, submit  # noqa: E402
from streamjobs.repo import load_definitions  # noqa: E402


def fill(events: int) -> Path:
    """A fresh repository copy whose tiles topic holds the streaming job's output over ``events``."""
    conn = load_connection()
    suffix = uuid.uuid4().hex[:6]
    repo_dir = clone_repo(Path("examples/fraud"), Path(tempfile.mkdtemp()) / "repo", f"wr{suffix}")  # kept for --repo
    repo = load_repo(repo_dir)
    create_topics(conn, repo.topics)
    rate = 10_000.0
    cfg = GeneratorConfig(rate=rate, entities=20_000, duration_s=events / rate, seed=5)
    produce.to_kafka(repo_dir, cfg, pace=False, quiet=True)
    print(f"produced {events:,} events; running the streaming job over them ...", file=sys.stderr, flush=True)
    job = compile_features(conn, repo, load_definitions(repo), mode="streaming", group_id=f"bench-writer-{suffix}",
                           bounds=KafkaBounds(startup="earliest-offset", bounded="latest-offset"))
    submit(conn, job, mode="streaming").wait()
    return repo_dir


def _redis_cpu(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def one(repo_dir: Path, generated: bool) -> dict:
    conn = load_connection()
    repo = load_repo(repo_dir)
    project = f"benchwr{uuid.uuid4().hex[:6]}"
    r = redis_client(conn.redis_url)
    rc0, c0, t0 = _redis_cpu(r), time.process_time(), time.perf_counter()
    st = rebuild(conn, repo.model_copy(update={"project": project}), load_definitions(repo).plan, settle_ms=0,
                 redis_client=r, generated=generated)
    wall, cpu, rcpu = time.perf_counter() - t0, time.process_time() - c0, _redis_cpu(r) - rc0
    keys = list(r.scan_iter(f"*:{project}:*", count=10_000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i:i + 1000])
    return {"generated": generated, "records": st.records, "written": st.written, "transcoded": st.transcoded,
            "wall": wall, "cpu": cpu, "redis": rcpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repo", help="a repository whose tiles topic is already filled")
    args = ap.parse_args()
    repo_dir = Path(args.repo) if args.repo else fill(args.events)
    rows = []
    for i in range(args.rounds):
        for generated in ((True, False) if i % 2 == 0 else (False, True)):
            rows.append(one(repo_dir, generated))
            x = rows[-1]
            print(f"round {i + 1}, {'generated' if generated else 'full'} path: {x['records']:,} records in "
                  f"{x['wall']:.1f} s (writer CPU {x['cpu']:.1f} s, Redis {x['redis']:.1f} s)", file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; Kafka and Redis on the same machine; "
          f"tiles topic of {repo_dir} (reuse it with --repo; remove it with `headwater teardown --repo {repo_dir} --yes`); "
          f"date {date.today()}\n")
    print("| path | records | through the generated path | wall s | records/s | writer CPU s per 1M records "
          "| Redis CPU s per 1M records |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        m = x["records"] / 1e6
        print(f"| {'generated' if x['generated'] else 'full'} | {x['records']:,} | {x['transcoded']:,} | {x['wall']:.1f} "
              f"| {x['records'] / x['wall']:,.0f} | {x['cpu'] / m:.1f} | {x['redis'] / m:.1f} |")


if __name__ == "__main__":
    main()
