"""``headwater demo``: the main job, the whole loop.

Stack up (Redis persistence on) -> topics -> the streaming features job and the online writer ->
generated card transactions produced live (paced, with disorder and late arrivals) -> read back
-> fetched features for the busiest cards with their freshness -> (``demo_loop``) replay into
Parquet tiles -> point-in-time training set -> train a champion and a challenger -> score live
with the challenger as a shadow -> parity of the scorer's feature log against a fresh replay.
Each run uses its own copy of the example repository with suffixed topic names, so runs never
see each other's events.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from headwater import produce, stack
from headwater.config import StackSettings, clone_repo, load_connection, load_repo, stack_dir
from headwater.errors import HeadwaterError
from headwater.generator import GeneratorConfig
from headwater.topics import create_topics

__all__ = ["run"]


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM (the job and the scorer finish their batch and close), SIGKILL if that hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def _demo_repo(src: Path, run_id: str) -> Path:
    return clone_repo(src, stack_dir() / "demo" / run_id, run_id)


def run(repo_path: str | Path, events: int = 20_000, rate: float = 1_000.0, score_events: int = 5_000) -> int:
    src = load_repo(repo_path)
    _step("1/11 stack up (Kafka KRaft + Redis with AOF persistence)")
    stack.up(StackSettings(redis_persistence=True))
    conn = load_connection()
    run_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
    repo_dir = _demo_repo(src.path, run_id)
    repo = load_repo(repo_dir)

    _step(f"2/11 topics for project {repo.project!r}")
    for r in create_topics(conn, repo.topics):
        print(f"  {r.action:8} {r.name} ({r.partitions} partitions)")

    _step("3/11 start the streaming features job (Flink MiniCluster) and the online writer")
    log_path = stack_dir() / "logs" / f"demo-features-{run_id}.log"
    job = subprocess.Popen([sys.executable, "-m", "headwater.cli", "features", "run", "--repo", str(repo_dir)],
                           stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        recs, n_labels = _live(conn, repo, repo_dir, job, log_path, events, rate)
        from headwater.demo_loop import train_score_parity
        train_score_parity(conn, repo, repo_dir, recs, n_labels, stack_dir() / "demo" / run_id, score_events,
                           rate, stack_dir() / "logs")
        print("\ndemo ok: events produced live, aggregated by Flink SQL, served from Redis, replayed into a "
              "training set, scored by a champion with a shadow, and online == offline by the parity check.")
        return 0
    finally:
        stop(job)
        print(f"\nfeatures job stopped (log: {log_path}). Its copy of the repository, {repo_dir}, keeps its topics, "
              f"keys and models for you to inspect: remove them with `headwater teardown --repo {repo_dir} --yes`; "
              f"stop the stack with `headwater stack down`.")


def _live(conn, repo, repo_dir, job, log_path, events, rate) -> tuple[list[dict], int]:
    from online_store import fetch_repo
    from streamjobs.repo import load_definitions
    plan = load_definitions(repo).plan
    deadline = time.monotonic() + 120  # MiniCluster start, SQL planning, job submission
    while b"features job:" not in log_path.read_bytes():
        if job.poll() is not None or time.monotonic() > deadline:
            raise HeadwaterError(f"the features job did not start: see {log_path}")
        time.sleep(0.5)
    time.sleep(8)  # task deployment after submission
    print("  features job running")

    duration = events / rate
    _step(f"4/11 produce {events:,} card transactions live at {rate:,.0f}/s (Zipf cards, card-testing "
          f"bursts, 2 s disorder, 0.5% beyond the 5 m lateness)")
    cfg = GeneratorConfig(rate=rate, entities=max(200, events // 20), duration_s=duration,
                          seed=int(time.time()) % 100_000, disorder_ms=2_000, late_fraction=0.005, labels=True)
    out = produce.to_kafka(repo_dir, cfg, pace=True)

    _step("5/11 read the events back from Kafka")
    t0 = time.perf_counter()
    recs = list(produce.read_back(repo_dir, "events", out["events"], timeout_s=60))
    print(f"  read back {len(recs):,}/{out['events']:,} events in {time.perf_counter() - t0:.1f}s")
    if len(recs) < out["events"]:
        raise HeadwaterError(f"read back only {len(recs)} of {out['events']} events: see `headwater stack logs kafka`")
    newest: dict[int, int] = {}
    for r in recs:
        newest[r["_partition"]] = max(newest.get(r["_partition"], 0), r["_timestamp_ms"])
    last_append = min(newest.values())  # as_of is a min over partitions too

    _step("6/11 fetch features of the busiest cards from Redis (one round trip)")
    busiest = [c for c, _ in collections.Counter(r["card_id"] for r in recs).most_common(3)]
    deadline = time.monotonic() + 120
    while True:
        res = fetch_repo(repo, {"card_id": busiest}, ["card_velocity:*"], plan=plan)
        as_of = res.min_as_of_ms
        if as_of is not None and as_of >= last_append:
            break
        if job.poll() is not None or time.monotonic() > deadline:
            raise HeadwaterError(f"features did not catch up with the produced events (as_of={as_of}, "
                                 f"last append={last_append}): see {log_path}")
        time.sleep(0.5)
    now = int(time.time() * 1000)
    for row in res.rows():
        print(f"  card {row['card']}")
        for k in ("txn_count_1m", "txn_count_10m", "amount_sum_1h", "amount_mean_1h", "amount_max_1h",
                  "amount_stddev_1h", "merchant_id_distinct_count_10m", "last_country"):
            v = row[f"card_velocity:{k}"]
            print(f"    {k:32} {round(v, 2) if isinstance(v, float) else v}")
    print(f"  as_of {as_of}: Redis holds every event appended up to then; it caught up at most "
          f"{now - last_append} ms after the last append of the slowest partition (polled after read-back)")
    return recs, out["labels"]
