"""Parity checker throughput: logged fetches checked per second, by feature-log size.

Input: a generated event stream (fraud example, 500 cards, 20 min of event time) whose tiles are
built with ``ir`` straight into the Parquet layout (the Flink replay is measured by
bench/replay.py; here only the check is timed), and feature logs of N fetches at random t whose
values come from the same tiles, so every value must compare equal. Timed: ``backfill.parity.check``
on an in-memory log (training-set recompute, late-event lookup, comparison).

    python bench/parity.py [--sizes 2000,10000,40000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.test_online_store.tile_records builds ir tiles from rows

from backfill import layout, training_set  # noqa: E402
from backfill.parity import check  # noqa: E402
from headwater.config import load_connection, load_repo  # noqa: E402
from headwater.teardown import scratch_repo  # noqa: E402
from headwater.generator import GeneratorConfig, generate_table  # noqa: E402
from headwater.topics import create_topics  # noqa: E402
from online_store import feature_log  # noqa: E402
from streamjobs.repo import load_definitions  # noqa: E402
from tests.test_online_store import tile_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,10000,40000", help="logged fetches (feature-log records) per run: comma-separated")
    args = ap.parse_args()
    conn = load_connection()
    d = Path(tempfile.mkdtemp(prefix="hw-bench-parity-"))
    with scratch_repo(ROOT / "examples" / "fraud", d / "repo", uuid.uuid4().hex[:8]) as repo_dir:
        repo = load_repo(repo_dir)
        create_topics(conn, repo.topics)
        plan = load_definitions(repo).plan
        cfg = GeneratorConfig(rate=20, entities=500, duration_s=1200, seed=1)
        ev, _ = generate_table(cfg, with_arrival=True)
        rows = ev.to_pylist()
        for i, r in enumerate(rows):
            r.update(event_time_ms=r["event_time"], append_time_ms=cfg.origin_ms + r["arrival_ms"],
                     partition=i % 3, offset=i // 3)
        for v in plan.views:
            n = layout.write_tiles(d / "tiles", v, layout.tiles_table(v, tile_records(v, rows)))
            layout.write_manifest(d / "tiles", {"view": v.name, "plan_hash": v.plan_hash, "tick_ms": v.tick_ms,
                                                "range": {}, "events_read": len(rows), "events_late": 0,
                                                "tiles_written": n, "finished_ms": 0})
        cards = sorted({r["card_id"] for r in rows})
        merchants = sorted({r["merchant_id"] for r in rows})
        rng = random.Random(0)
        end = cfg.origin_ms + 1_200_000
        print(f"{len(rows):,} events, {len(cards)} cards; tiles in {d / 'tiles'}\n")
        print(f"| {'fetches':>8} | {'values':>8} | {'exact':>8} | {'seconds':>7} | {'fetches/s':>10} | offline s | compare s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for size in (int(s) for s in args.sizes.split(",")):
            n = size // 2
            ts = [rng.randrange(cfg.origin_ms + 60_000, end) for _ in range(n)]
            recs = []
            for view, key, pool in (("card_velocity", "card_id", cards), ("merchant_activity", "merchant_id", merchants)):
                ids = [rng.choice(pool) for _ in range(n)]
                refs = [f.ref for f in plan.features_by_ref(f"{view}:*")]
                got = training_set(repo, pa.table({key: ids, "ts": pa.array(ts, pa.int64())}), refs,
                                   tiles=d / "tiles").to_pylist()
                for e, t, g in zip(ids, ts, got):
                    recs.append({"event_id": None, "entity_key": key, "entity": e, "t_ms": t, "as_of_ms": end + 10**6,
                                 "values": {r: g[r] for r in refs}, "features": refs,
                                 "plan_hash": plan.view(view).plan_hash})
            table = feature_log.to_table(recs)
            t0 = time.perf_counter()
            rep = check(repo, feature_log=table, tiles=d / "tiles", conn=conn, say=lambda m: None)
            secs = time.perf_counter() - t0
            exact = sum(f.exact for f in rep.features)
            if not rep.ok:
                raise SystemExit(f"parity found {len(rep.unexplained)} unexplained mismatches on identical data")
            print(f"| {rep.n_fetches:>8,} | {len(rep.checks):>8,} | {exact:>8,} | {secs:>7.2f} | "
                  f"{rep.n_fetches / secs:>10,.0f} | {rep.timing.offline_s:>9.2f} | {rep.timing.compare_s:>9.2f} |")


if __name__ == "__main__":
    main()
