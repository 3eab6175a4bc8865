"""Online fetch latency: 1, 100 and 1,000 entities x all views, from the real redis-server.

    python bench/fetch.py [--rate 10] [--cards 20000] [--hours 25] [--engine auto]

Needs a running redis-server (`headwater stack up`). Builds a fraud-like plan (a card view and a
merchant view, below; ``examples/fraud/features.py`` when it defines ``VIEWS``), generates
``--hours`` of transactions with ``headwater.generator`` ending now, tiles them with
``ir.tile_from_events`` for every ladder resolution (only tiles within the store's retention, as
the writer would keep), writes them with ``TileWriter``, then times ``fetch`` for entities drawn
from the last ten minutes: "traffic" = the card and merchant of random recent transactions (what a
scorer asks for; hot entities repeat), "uniform" = any active card / merchant. Then, in the same
run, Feast's Redis online store side by side (``bench/feast_side.py`` in ``.stack/feast-venv``, same
redis-server, private db index 8, same views and number of features, uniform entity rows; skipped
with ``--no-feast`` or when that venv is missing). Prints a Markdown table, with Redis's own time
per fetch (its CPU, and of that the commands alone): the floor a fetch cannot go under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from headwater.config import load_connection  # noqa: E402
from headwater.generator import GeneratorConfig, generate_table  # noqa: E402
from headwater.heap import freeze_startup_heap  # noqa: E402
from online_store.repo_fetch import redis_client  # noqa: E402
from online_store import TileWriter, fetch, keys  # noqa: E402
from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source, build_plan, ir, windows  # noqa: E402
from streamjobs.plan import FeaturePlan, ViewPlan  # noqa: E402

SCHEMA = Path(__file__).resolve().parent.parent / "examples" / "fraud" / "schemas" / "transaction.avsc"


def fraud_views() -> list[FeatureView]:
    src = Source("transactions", "fraud.transactions", schema=SCHEMA, event_time_field="event_time")
    card = FeatureView("card", Entity("card", "card_id"), src, (
        Aggregation("count", "amount", ("1m", "10m", "1h")),
        Aggregation("sum", "amount", ("1h", "24h")), Aggregation("mean", "amount", ("1h", "24h")),
        Aggregation("max", "amount", ("1h", "24h")), Aggregation("stddev", "amount", ("1h", "24h")),
        Aggregation("distinct_count", "merchant_id", ("10m", "1h")),
        LatestValue("country"),
    ))
    merchant = FeatureView("merchant", Entity("merchant", "merchant_id"), src, (
        Aggregation("count", "amount", ("10m", "1h", "24h")), Aggregation("mean", "amount", ("1h", "24h")),
        Aggregation("distinct_count", "card_id", ("1h",)),
    ))
    return [card, merchant]


def load_views() -> list[FeatureView]:
    path = SCHEMA.parent.parent / "features.py"
    if path.exists():
        import runpy
        ns = runpy.run_path(str(path))
        if "VIEWS" in ns:
            return list(ns["VIEWS"])
    return fraud_views()


def tile_records(vp: ViewPlan, ev: dict[str, np.ndarray], end_ms: int) -> list[dict]:
    """Final tiles of every resolution, only those the writer would keep at ``end_ms``."""
    ret = keys.retention_ms(vp)
    out = []
    for r in vp.ladder:
        keep = ev["event_time"] >= end_ms - ret[r] - r
        ent = ev[vp.entity_key][keep]
        start = windows.tile_start(ev["event_time"][keep], r)
        order = np.lexsort((start, ent))
        ent, start = ent[order], start[order]
        cols = {c: ev[c][keep][order] for c in vp.columns}
        ts, part, off = (ev[c][keep][order] for c in ("event_time", "partition", "offset"))
        app = ev["append"][keep][order]
        cut = np.flatnonzero((ent[1:] != ent[:-1]) | (start[1:] != start[:-1])) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(ent)]):
            tile = ir.tile_from_events(vp.fields, {c: v[a:b] for c, v in cols.items()}, ts[a:b], part[a:b], off[a:b])
            out.append({"view": vp.name, "entity": str(ent[a]), "resolution_ms": r, "tile_start": int(start[a]),
                        "plan_hash": vp.plan_hash, "n_events": int(b - a), "max_append_ms": int(app[a:b].max()),
                        **ir.to_row(tile)})
    out.sort(key=lambda x: x["tile_start"])
    return out


def events(rate: float, cards: int, hours: float, end_ms: int) -> dict[str, np.ndarray]:
    cfg = GeneratorConfig(rate=rate, entities=cards, duration_s=hours * 3600, seed=11,
                          start_ms=end_ms - int(hours * 3_600_000))
    table, _ = generate_table(cfg)
    ev = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    for c in ("card_id", "merchant_id", "country", "device_id", "currency"):
        ev[c] = ev[c].astype(object)
    ev["event_time"] = ev["event_time"].astype(np.int64)
    ev["partition"] = np.array([hash(c) % 3 for c in ev["card_id"]], dtype=np.int64)
    ev["offset"] = np.arange(len(ev["event_time"]), dtype=np.int64)
    ev["append"] = ev["event_time"] + 50
    return ev


def timings(fn, n: int) -> tuple[float, float, float]:
    fn()  # warm the layout cache and the connection
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    a = np.array(xs) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0, help="events/s of event time")
    ap.add_argument("--cards", type=int, default=20_000)
    ap.add_argument("--hours", type=float, default=25.0)
    ap.add_argument("--engine", default="auto", choices=["auto", "compiled", "scalar"])
    ap.add_argument("--read", default="auto", choices=["auto", "hgetall", "hmget"])
    ap.add_argument("--keep", action="store_true", help="leave the keys in Redis")
    ap.add_argument("--no-feast", action="store_true", help="skip the Feast side-by-side")
    ap.add_argument("--fetches", default="1:2000,100:200,1000:40", metavar="ROWS:N,...",
                    help="fetches timed per batch size (at 1,000 rows the default 40 makes p99 about the slowest one)")
    ap.add_argument("--feast-python", default=str(FEAST_PYTHON))
    args = ap.parse_args(argv)
    try:
        sizes = [tuple(int(x) for x in part.split(":")) for part in args.fetches.split(",") if part]
        if not sizes or any(len(t) != 2 or t[0] not in (1, 100, 1000) or t[1] < 1 for t in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"--fetches {args.fetches!r}: give ROWS:N pairs with ROWS 1, 100 or 1000, e.g. 1:2000,100:200,1000:200")
    conn = load_connection()
    client = redis_client(conn.redis_url)
    plan: FeaturePlan = build_plan(load_views())
    project = f"bench{uuid.uuid4().hex[:6]}"
    end = windows.tile_start(int(time.time() * 1000), 1000)
    t0 = time.perf_counter()
    ev = events(args.rate, args.cards, args.hours, end)
    print(f"generated {len(ev['offset']):,} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    writer = TileWriter(client, project, plan)
    n_tiles = 0
    for vp in plan.views:
        t0 = time.perf_counter()
        recs = tile_records(vp, ev, end)
        t1 = time.perf_counter()
        for i in range(0, len(recs), 5000):
            writer.write(recs[i:i + 5000])
        n_tiles += len(recs)
        print(f"view {vp.name}: {len(recs):,} tiles built in {t1 - t0:.1f}s, written in "
              f"{time.perf_counter() - t1:.1f}s ({len(recs) / (time.perf_counter() - t1):,.0f}/s)", file=sys.stderr)
    recent = ev["event_time"] >= end - 600_000
    rng = np.random.default_rng(5)
    cards, merchants = ev["card_id"][recent], ev["merchant_id"][recent]
    ucards, umerchants = np.unique(cards), np.unique(merchants)
    t_ms = end + 500
    rows = []
    freeze_startup_heap()  # as a serving process would after loading (the scorer does): see headwater/heap.py
    fields_per_entity = sum(len(reader_fields(vp, t_ms)) for vp in plan.views)
    for sampling in ("traffic", "uniform"):
        for n, iters in sizes:
            draws = []  # drawn before the clock starts (bench/feast_side.py does the same)
            for _ in range(iters + 1):
                if sampling == "traffic":  # recent transactions: their card and their merchant
                    pick = rng.integers(0, len(cards), n)
                    draws.append({"card": cards[pick].tolist(), "merchant": merchants[pick].tolist()})
                else:  # any card / merchant active in the last 10 minutes, uniformly
                    draws.append({"card": rng.choice(ucards, n).tolist(), "merchant": rng.choice(umerchants, n).tolist()})
            next_ids = iter(draws).__next__

            def one() -> None:
                fetch(client, project, plan, next_ids(), at_ms=t_ms, engine=args.engine, read=args.read)
            before = redis_time(client)
            p50, p99, mean = timings(one, iters)
            after = redis_time(client)
            srv = tuple((b - a) / (iters + 1) for a, b in zip(before, after))  # timings() fetches iters + 1 times
            rows.append((sampling, n, iters, p50, p99, mean, *srv))
            print(f"{sampling} {n} entities: p50 {p50:.3f} ms, p99 {p99:.3f} ms", file=sys.stderr)
    feast = None if args.no_feast else feast_side(args.feast_python, conn.redis_url, plan, args.cards)
    info = client.info("memory")
    views = ", ".join(f"{v.name} ({len(v.features)} features, {len(v.groups)} window groups)" for v in plan.views)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores (load average {load}), Python {platform.python_version()}, "
          f"redis-server {client.info('server')['redis_version']} on loopback (redis-py {redis.__version__}, hiredis); "
          f"date {date.today().isoformat()}. Plan: {views}; {fields_per_entity} tile fields per entity row "
          f"across views; {len(ev['offset']):,} events, {n_tiles:,} tiles stored "
          f"({info['used_memory_human']} Redis); engine {args.engine}, read {args.read}.\n")
    print("Redis ms per fetch: the server's CPU (INFO cpu: commands, parsing the requests, socket I/O) and, of it, "
          "the commands alone (INFO commandstats); the floor a fetch cannot go under with this layout.\n")
    print("| sampling | entity rows (card + merchant) | fetches | p50 ms | p99 ms | mean ms | Redis CPU ms | of which commands ms | target p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    targets = {1: "1 ms", 100: "5 ms", 1000: "25 ms"}
    for sampling, n, iters, p50, p99, mean, cpu_ms, cmd_ms in rows:
        print(f"| {sampling} | {n:,} | {iters} | {p50:.3f} | {p99:.3f} | {mean:.3f} | {cpu_ms:.3f} | {cmd_ms:.3f} | {targets[n]} |")
    if feast is not None:
        for n, r in feast["sizes"].items():
            print(f"| Feast {feast['feast_version']} get_online_features, uniform ({feast['features']} features) "
                  f"| {int(n):,} | {r['iters']} | {r['p50']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} | — | — | — |")
    if not args.keep:
        ks = list(client.scan_iter(match=keys.project_pattern(project), count=5000))
        for i in range(0, len(ks), 5000):
            client.delete(*ks[i:i + 5000])


FEAST_PYTHON = Path(__file__).resolve().parent.parent / ".stack" / "feast-venv" / "bin" / "python"


def feast_side(python: str, redis_url: str, plan: FeaturePlan, entities: int) -> dict | None:
    """Run bench/feast_side.py in Feast's own venv: same views and feature counts, Redis db 8."""
    if not Path(python).exists():
        print(f"feast: {python} not found; side-by-side skipped", file=sys.stderr)
        return None
    hostport = redis_url.split("//", 1)[1].split("/", 1)[0]
    views = {v.name: [v.entity_key, len(v.features)] for v in plan.views}
    cmd = [python, str(Path(__file__).resolve().parent / "feast_side.py"), "--redis", hostport, "--db", "8",
           "--views", json.dumps(views), "--entities", str(entities)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)  # stderr: its progress
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_time(client: redis.Redis) -> tuple[float, float]:
    """(server CPU, time in commands) so far, ms: ``INFO cpu`` (user + sys of the main thread's
    process) and the sum of ``INFO commandstats`` usec (the INFO calls themselves are a few us)."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    return ((cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1000,
            sum(v["usec"] for k, v in stats.items() if not k.startswith("cmdstat_info")) / 1000)


def reader_fields(vp: ViewPlan, t_ms: int) -> tuple[bytes, ...]:
    from online_store import reader
    return reader._layout("bench", vp, tuple(f.name for f in vp.features), t_ms).fields


if __name__ == "__main__":
    main()
