"""Feast's side of bench/fetch.py: ``get_online_features`` from Feast's Redis online store.

    .stack/feast-venv/bin/python bench/feast_side.py --redis 127.0.0.1:6379 --db 8 \
        --views '{"card_velocity": ["card_id", 14], "merchant_activity": ["merchant_id", 4]}' \
        --cards 20000 --merchants 2000

Runs in its own virtual environment (Feast's pins conflict with PyFlink's), so it imports nothing
from Headwater. Same shape as Headwater's fetch: the same views with the same number of features
(float64 values, one row per entity, written with ``write_to_online_store``), entity rows holding
a card and a merchant, 1 / 100 / 1,000 rows per call, on the same redis-server but in a private
database index (flushed first; nothing else uses it). Prints one JSON object: per size p50/p99/mean ms.
Feast serves precomputed values; Headwater merges tiles at read time (its values are windows
exact to the tick), so this compares the serving paths, not equal work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="127.0.0.1:6379")
    ap.add_argument("--db", type=int, default=8)
    ap.add_argument("--views", required=True, help='JSON {view: [entity key, number of features]}')
    ap.add_argument("--entities", type=int, default=20_000, help="entities per view")
    ap.add_argument("--sizes", default="1:2000,100:200,1000:40", help="rows:iterations,...")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import redis
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64
    from feast.value_type import ValueType

    host, port = args.redis.rsplit(":", 1)
    redis.Redis(host=host, port=int(port), db=args.db).flushdb()  # the private index only
    views = {v: (k, int(n)) for v, (k, n) in json.loads(args.views).items()}
    root = Path(tempfile.mkdtemp(prefix="feast-bench-"))
    (root / "feature_store.yaml").write_text(
        "project: hwbench\nprovider: local\nregistry: registry.db\n"
        f"online_store:\n  type: redis\n  connection_string: \"{args.redis},db={args.db}\"\n"
        "entity_key_serialization_version: 3\n")
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(3)
    objs, frames, refs = [], {}, []
    for view, (key, n) in views.items():
        ent = Entity(name=key.removesuffix("_id"), join_keys=[key], value_type=ValueType.STRING)
        names = [f"{view}_f{i}" for i in range(n)]
        df = pd.DataFrame({key: [f"{key[0]}{i}" for i in range(args.entities)],
                           **{c: rng.random(args.entities) for c in names},
                           "event_timestamp": now - timedelta(seconds=1)})
        path = root / f"{view}.parquet"
        df.to_parquet(path)
        src = FileSource(path=str(path), timestamp_field="event_timestamp")
        fv = FeatureView(name=view, entities=[ent], ttl=timedelta(days=1),
                         schema=[Field(name=c, dtype=Float64) for c in names], source=src, online=True)
        objs += [ent, fv]
        frames[view] = df
        refs += [f"{view}:{c}" for c in names]
    store = FeatureStore(repo_path=str(root))
    store.apply(objs)
    t0 = time.perf_counter()
    for view, df in frames.items():
        store.write_to_online_store(view, df)
    print(f"feast: wrote {sum(len(d) for d in frames.values()):,} rows in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    keys = [k for k, _ in views.values()]
    import gc  # the Headwater side freezes its start-up heap before timing (headwater/heap.py): so does this one
    gc.collect()
    gc.freeze()
    out = {"feast_version": __import__("feast").__version__, "features": len(refs), "sizes": {}}
    for part in args.sizes.split(","):
        rows, iters = (int(x) for x in part.split(":"))

        draws = []  # drawn before the clock starts (bench/fetch.py does the same)
        for _ in range(iters + 1):
            picks = rng.integers(0, args.entities, (rows, len(keys)))
            draws.append([{k: f"{k[0]}{p[j]}" for j, k in enumerate(keys)} for p in picks])
        next_rows = iter(draws).__next__

        def one() -> None:
            res = store.get_online_features(features=refs, entity_rows=next_rows()).to_dict()
            assert len(res[refs[0].split(":")[1]]) == rows

        one()  # warm the registry cache and the connection
        xs = []
        for _ in range(iters):
            t = time.perf_counter()
            one()
            xs.append(time.perf_counter() - t)
        a = np.array(xs) * 1000
        out["sizes"][str(rows)] = {"iters": iters, "p50": float(np.percentile(a, 50)),
                                   "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}
        print(f"feast {rows} rows: p50 {out['sizes'][str(rows)]['p50']:.3f} ms, "
              f"p99 {out['sizes'][str(rows)]['p99']:.3f} ms", file=sys.stderr)
    redis.Redis(host=host, port=int(port), db=args.db).flushdb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
