"""``headwater`` command line: argument parsing only; every subcommand calls a package function.

A :class:`~headwater.errors.HeadwaterError` prints as one line (``headwater: error: ...``) and
exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from headwater.errors import HeadwaterError

__all__ = ["main", "build_parser"]


def _stack_settings(args):
    from headwater.config import StackSettings
    kw = {}
    for name in ("kafka_port", "redis_port"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "redis_persistence", False):
        kw["redis_persistence"] = True
    if getattr(args, "docker", False):
        kw["mode"] = "docker"
    if getattr(args, "action", None) == "up":  # a bare `stack up` restarts the stack on the ports it had
        from headwater.stack import saved_ports
        kw = {**saved_ports(StackSettings()), **kw}
    return StackSettings(**kw)


def cmd_stack(args) -> int:
    from headwater import stack
    settings = _stack_settings(args)
    if args.action == "up":
        stack.up(settings)
    elif args.action == "down":
        stack.down(settings)
    elif args.action == "status":
        rows = stack.status(settings)
        for r in rows:
            state = "healthy" if r.healthy else ("unhealthy" if r.running else "down")
            print(f"{r.name:6} {state:9} {r.address:16} pid={r.pid or '-':<8} {r.detail}")
        return 0 if all(r.healthy for r in rows) else 1
    elif args.action == "logs":
        print(stack.logs(settings, args.service, args.lines))
    return 0


def cmd_topics(args) -> int:
    from headwater.config import load_connection, load_repo
    from headwater.topics import create_topics
    repo = load_repo(args.repo)
    for r in create_topics(load_connection(), repo.topics):
        extra = f"  ({r.detail})" if r.detail else ""
        print(f"{r.action:8} {r.role:12} {r.name:28} partitions={r.partitions}{extra}")
    return 0


def cmd_teardown(args) -> int:
    from headwater.config import load_connection, load_repo
    from headwater.teardown import find, remove
    conn = load_connection()
    left = find(load_repo(args.repo), conn)
    if left.empty:
        print(f"nothing to remove for project {left.project}")
        return 0
    for t in left.topics:
        print(f"topic          {t}")
    for g in left.groups:
        print(f"consumer group {g}")
    print(f"redis keys     {left.redis_keys}")
    if left.flink_dir:
        print(f"flink state    {left.flink_dir}")
    if not args.yes:
        print("nothing removed: run again with --yes to delete these (stop the project's jobs first)")
        return 0
    problems = remove(left, conn)
    for problem in problems:
        print(problem)
    print(f"removed: {left.summary()}" if not problems else "some parts were left: see above")
    return 1 if problems else 0


def cmd_schemas(args) -> int:
    from headwater import repo_schemas
    problems = repo_schemas.check_or_register(args.repo, register=args.action == "register")
    for subject, issues in problems.items():
        for issue in issues:
            print(f"INCOMPATIBLE {subject}: {issue}")
    if any(problems.values()):
        print("schemas check failed: make the change backward compatible "
              "(add a default to new fields), or register it under a new subject")
        return 1
    return 0


def cmd_produce(args) -> int:
    from headwater import produce
    from headwater.generator import GeneratorConfig
    cfg = GeneratorConfig(rate=args.rate, entities=args.entities, duration_s=args.duration,
                          seed=args.seed, late_fraction=args.late_fraction,
                          disorder_ms=args.disorder_ms, labels=args.labels)
    if args.parquet:
        produce.to_parquet(cfg, Path(args.parquet))
    else:
        produce.to_kafka(args.repo, cfg, pace=not args.no_pace)
    return 0


def cmd_consume(args) -> int:
    from headwater import produce
    for rec in produce.read_back(args.repo, args.topic, args.max, timeout_s=args.timeout):
        print(json.dumps(rec, default=str))
    return 0


def _definitions(repo_path):
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    repo = load_repo(repo_path)
    return repo, load_definitions(repo)


def cmd_features(args) -> int:
    from headwater.config import load_connection
    repo, defs = _definitions(args.repo)
    if args.action == "plan":
        from streamjobs.describe import describe_plan
        print(describe_plan(defs.plan))
        if not args.no_sql:
            from streamjobs.job import compile_features
            print("\n-- generated Flink SQL (streaming mode, with markers at parallelism 1; replay runs the same "
                  "SELECTs without markers in batch mode)\n")
            print(compile_features(load_connection(), repo, defs).text())
        return 0
    from headwater import features_service
    return features_service.run(repo, defs, with_writer=not args.no_writer, fresh=args.fresh,
                                metrics_port=args.metrics_port)


def cmd_online(args) -> int:
    from headwater import features_service
    repo, defs = _definitions(args.repo)
    if args.action == "write":
        return features_service.write(repo, defs, metrics_port=args.metrics_port)
    return features_service.rebuild(repo, defs)


def cmd_fetch(args) -> int:
    from headwater import features_service
    return features_service.fetch_cli(args.repo, args.entity, args.features, args.at, args.json,
                                      log=args.log)


def cmd_replay(args) -> int:
    from replay import run_replay
    views = [v.strip() for v in args.views.split(",") if v.strip()] if args.views else None
    run_replay(args.repo, args.out, start=args.start, end=args.end, offsets=args.offsets, views=views,
               parallelism=args.parallelism, replace=args.replace)
    return 0


def cmd_parity(args) -> int:
    from backfill.parity_cli import run_cli
    return run_cli(args.repo, feature_log=args.feature_log, tiles=args.tiles, sample=args.sample,
                   json_path=args.json, report_path=args.report, now=args.now, seed=args.seed)


def cmd_score(args) -> int:
    from scoring.service import ScoreOptions, run
    opts = ScoreOptions(model=args.model, shadows=tuple(args.shadow or ()), device=args.device,
                        exactly_once=args.exactly_once, metrics_port=args.metrics_port, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, canary_percent=args.canary_percent, canary=args.canary,
                        group_id=args.group, instance_id=args.instance_id, feature_log_rate=args.feature_log_rate)
    return run(args.repo, opts, idle_timeout_s=args.idle_exit)


def cmd_spine(args) -> int:
    import pyarrow.parquet as pq
    from backfill.labelled import labelled_spine
    from headwater.config import load_connection, load_repo
    res = labelled_spine(load_repo(args.repo), load_connection(), join=args.join, timeout_s=args.timeout,
                         progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # never half a spine under the final name
    pq.write_table(res.table, tmp)
    tmp.replace(out)
    print(f"wrote {res.summary()} to {args.out}")
    return 0


def cmd_training_set(args) -> int:
    from backfill import write_training_set
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    bad = [s for s in args.source or [] if "=" not in s or not s.split("=", 1)[1]]
    if bad:
        raise HeadwaterError(f"--source {bad[0]!r}: use NAME=PATH (a source name of the definitions and a "
                             "Parquet/CSV file of its raw rows)")
    sources = dict(s.split("=", 1) for s in args.source or [])
    rows = write_training_set(args.out, args.repo, args.spine, features, tiles=args.tiles,
                              timestamp_column=args.timestamp_column, sources=sources or None,
                              allow_partial=args.allow_partial)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def cmd_train(args) -> int:
    from scoring.models.cli import train_command
    return train_command(args.repo, args.training_set, args.model, args.kind, label=args.label,
                         features=args.features, timestamp_column=args.timestamp_column, holdout=args.holdout,
                         k=args.k, seed=args.seed, library=args.library, trees=args.trees, depth=args.depth,
                         onnx=args.onnx, models_dir=args.models_dir, alias=args.alias)


def cmd_models(args) -> int:
    from scoring.models.cli import models_command
    return models_command(args.repo, args.action, args.args, models_dir=args.models_dir, as_json=args.json)


def cmd_demo(args) -> int:
    from headwater import demo
    return demo.run(args.repo, events=args.events, rate=args.rate, score_events=args.score_events)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headwater", description="Streaming feature and scoring engine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("stack", help="local Kafka (KRaft) + Redis: up | down | status | logs")
    s.add_argument("action", choices=["up", "down", "status", "logs"])
    s.add_argument("service", nargs="?", help="logs: kafka or redis (default both)")
    s.add_argument("--kafka-port", type=int, help="broker port (default 9092; controller uses port+1)")
    s.add_argument("--redis-port", type=int, help="redis port (default 6379)")
    s.add_argument("--redis-persistence", action="store_true", help="AOF persistence (off by default)")
    s.add_argument("--docker", action="store_true", help="use docker-compose.yml instead of local processes")
    s.add_argument("-n", "--lines", type=int, default=40, help="logs: lines per service")
    s.set_defaults(func=cmd_stack)

    t = sub.add_parser("topics", help="create the repository's topics (idempotent)")
    t.add_argument("action", choices=["create"])
    t.add_argument("--repo", required=True, help="feature repository directory (with headwater.yaml)")
    t.set_defaults(func=cmd_topics)

    td = sub.add_parser("teardown", help="delete a project's topics, consumer groups, Redis keys and Flink state")
    td.add_argument("--repo", required=True)
    td.add_argument("--yes", action="store_true", help="delete (without it: only list what would go)")
    td.set_defaults(func=cmd_teardown)

    sc = sub.add_parser("schemas", help="check (backward compatibility) or register the repo's schemas")
    sc.add_argument("action", choices=["check", "register"])
    sc.add_argument("--repo", required=True)
    sc.set_defaults(func=cmd_schemas)

    g = sub.add_parser("produce", help="generate card transactions (and labels) into Kafka or Parquet")
    g.add_argument("--repo", required=True)
    g.add_argument("--rate", type=float, default=1000.0, help="events per second")
    g.add_argument("--entities", type=int, default=1000, help="number of cards")
    g.add_argument("--duration", type=float, default=10.0, help="seconds of events")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--late-fraction", type=float, default=0.0, help="fraction arriving beyond allowed lateness")
    g.add_argument("--disorder-ms", type=int, default=0, help="max out-of-order delay for the rest")
    g.add_argument("--labels", action="store_true", help="also produce chargeback labels")
    g.add_argument("--parquet", help="write events to this Parquet file instead of Kafka")
    g.add_argument("--no-pace", action="store_true", help="produce as fast as possible (ignore --rate pacing)")
    g.set_defaults(func=cmd_produce)

    c = sub.add_parser("consume", help="read records back from one of the repository's topics")
    c.add_argument("--repo", required=True)
    c.add_argument("--topic", default="events", help="topic role: events, labels, predictions, ...")
    c.add_argument("--max", type=int, default=10)
    c.add_argument("--timeout", type=float, default=10.0)
    c.set_defaults(func=cmd_consume)

    f = sub.add_parser("features", help="plan: show views, windows, resolutions and the Flink SQL; run: streaming job")
    f.add_argument("action", choices=["plan", "run"])
    f.add_argument("--repo", required=True)
    f.add_argument("--no-sql", action="store_true", help="plan: omit the generated SQL")
    f.add_argument("--no-writer", action="store_true", help="run: do not start the online writer in-process")
    f.add_argument("--fresh", action="store_true", help="run: ignore checkpoints, start from committed offsets")
    f.add_argument("--metrics-port", type=int, default=None, help="run: serve writer metrics (Prometheus) here")
    f.set_defaults(func=cmd_features)

    o = sub.add_parser("online", help="write: tiles topic -> Redis (keeps running); rebuild: from the compacted topic")
    o.add_argument("action", choices=["write", "rebuild"])
    o.add_argument("--repo", required=True)
    o.add_argument("--metrics-port", type=int, default=None, help="write: serve writer metrics (Prometheus) here")
    o.set_defaults(func=cmd_online)

    fe = sub.add_parser("fetch", help="online feature values for entities, with as_of and freshness")
    fe.add_argument("--repo", required=True)
    fe.add_argument("--entity", action="append", required=True, metavar="KEY=VALUE",
                    help="e.g. card_id=c42 (repeatable)")
    fe.add_argument("--features", default=None, help="comma-separated view:feature or view:* (default all)")
    fe.add_argument("--at", default=None, help="query time, ISO-8601 (default now)")
    fe.add_argument("--json", action="store_true")
    fe.add_argument("--log", nargs="?", const="topic", default=None, metavar="FILE",
                    help="also log what was fetched (feature log, for parity): to the feature_log topic, "
                         "or append to FILE.jsonl")
    fe.set_defaults(func=cmd_fetch)

    rp = sub.add_parser("replay", help="bounded Kafka range -> the features SQL in batch mode -> Parquet tiles")
    rp.add_argument("--repo", required=True)
    rp.add_argument("--out", required=True, help="tiles directory (view=/resolution_ms=/date= partitions)")
    rp.add_argument("--from", dest="start", default=None, metavar="TIME",
                    help="first Kafka record timestamp (append time), ISO-8601 or epoch ms (default: oldest)")
    rp.add_argument("--to", dest="end", default=None, metavar="TIME",
                    help="end (exclusive) Kafka record timestamp (default: the topic's end now)")
    rp.add_argument("--offsets", default=None, metavar="P:START-END,...",
                    help='per-partition offsets, END exclusive, either side may be empty: "0:100-5000,1:0-4200"; '
                         "unlisted partitions are not read")
    rp.add_argument("--views", default=None, help="comma-separated view names (default all)")
    rp.add_argument("--parallelism", type=int, default=None, help="default: one per source partition")
    rp.add_argument("--replace", action="store_true",
                    help="replace a view's tiles in --out even when this range does not cover the one replayed there")
    rp.set_defaults(func=cmd_replay)

    pa_ = sub.add_parser("parity", help="online fetches (feature log) vs the offline recompute from replay tiles")
    pa_.add_argument("--repo", required=True)
    pa_.add_argument("--feature-log", default=None, metavar="TOPIC|FILE",
                     help="feature-log topic name or .jsonl/.parquet file (default: the repo's feature_log topic)")
    pa_.add_argument("--tiles", default=None, help="replay output directory (--now: where to replay; default a temp dir)")
    pa_.add_argument("--sample", type=int, default=None, help="check N logged fetches (--now: fetch N entity rows)")
    pa_.add_argument("--seed", type=int, default=0, help="sampling seed")
    pa_.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    pa_.add_argument("--report", default=None, metavar="FILE", help="write a self-contained HTML report")
    pa_.add_argument("--now", action="store_true", help="sample recent entities, fetch now with logging, replay, check")
    pa_.set_defaults(func=cmd_parity)

    sc_ = sub.add_parser("score", help="score the events topic: predictions, shadow scores, feature log, DLQ")
    sc_.add_argument("--repo", required=True)
    sc_.add_argument("--model", required=True, help="production model: name, name@alias or name@<version>")
    sc_.add_argument("--shadow", action="append", metavar="MODEL", help="shadow model spec (repeatable)")
    sc_.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    sc_.add_argument("--exactly-once", action="store_true", help="Kafka transactions (readers: read_committed)")
    sc_.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics here")
    sc_.add_argument("--max-batch", type=int, default=4096, help="most events per micro-batch")
    sc_.add_argument("--max-wait-ms", type=int, default=20, help="longest an idle consumer blocks for the next event (a batch never waits to fill)")
    sc_.add_argument("--canary-percent", type=float, default=None,
                     help="share of entities (0-100) scored by the canary (default: the registry's setting)")
    sc_.add_argument("--canary", default=None, help="canary model spec (default: <model>@challenger)")
    sc_.add_argument("--group", default=None, help="consumer group (default headwater-score.<project>)")
    sc_.add_argument("--instance-id", default="0", help="stable per instance: names its transactional id")
    sc_.add_argument("--feature-log-rate", type=float, default=0.01,
                     help="share of events whose fetched features go to the feature-log topic (0-1)")
    sc_.add_argument("--idle-exit", type=float, default=None, metavar="S", help="stop after S seconds without events")
    sc_.set_defaults(func=cmd_score)

    sp = sub.add_parser("spine", help="training spine from the events and labels topics: labelled events -> Parquet")
    sp.add_argument("--repo", required=True)
    sp.add_argument("--out", required=True, help="output Parquet file (event id, entity keys, ts, label fields)")
    sp.add_argument("--join", default="event_id", help="field naming the event in both schemas")
    sp.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up reading after S seconds")
    sp.set_defaults(func=cmd_spine)

    ts = sub.add_parser("training-set", help="point-in-time training set: spine + features -> Parquet")
    ts.add_argument("--repo", required=True)
    ts.add_argument("--spine", required=True, help="Parquet or CSV with entity keys, the timestamp and labels")
    ts.add_argument("--features", required=True, help="comma-separated view:feature or view:*")
    ts.add_argument("--out", required=True, help="output Parquet file")
    ts.add_argument("--timestamp-column", default="ts", help="spine timestamp column (ints = epoch ms, naive = UTC)")
    ts.add_argument("--tiles", default="data/tiles", help="replay output directory (Parquet tile layout)")
    ts.add_argument("--source", action="append", metavar="NAME=PATH",
                    help="raw rows of a source for latest-value features without tiles (repeatable)")
    ts.add_argument("--allow-partial", action="store_true",
                    help="keep spine rows whose windows reach past the replayed range, those features null "
                         "(default: refuse them)")
    ts.set_defaults(func=cmd_training_set)

    tr = sub.add_parser("train", help="fit a model on a training set and register an immutable version")
    tr.add_argument("--repo", required=True)
    tr.add_argument("--training-set", required=True, help="Parquet written by `headwater training-set`")
    tr.add_argument("--model", required=True, help="model name in the registry (e.g. fraud)")
    tr.add_argument("--kind", choices=["gbdt", "logreg", "mlp"], default="gbdt")
    tr.add_argument("--label", default="is_fraud")
    tr.add_argument("--features", default=None, help="comma-separated view:feature refs in matrix order (default all)")
    tr.add_argument("--timestamp-column", default="ts", help="spine time column (time-ordered holdout, data range)")
    tr.add_argument("--holdout", type=float, default=0.2, help="latest fraction of rows held out for metrics")
    tr.add_argument("--k", type=int, default=100, help="precision@k on the holdout")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--library", choices=["xgboost", "lightgbm"], default="xgboost", help="gbdt: trainer")
    tr.add_argument("--trees", type=int, default=200, help="gbdt: boosting rounds")
    tr.add_argument("--depth", type=int, default=6, help="gbdt: max tree depth")
    tr.add_argument("--onnx", action="store_true", help="also register the ONNX export as the next version")
    tr.add_argument("--models-dir", default=None, help="registry root (default <repo>/models)")
    tr.add_argument("--alias", default=None, help="also point this alias at the new version (e.g. challenger)")
    tr.set_defaults(func=cmd_train)

    mo = sub.add_parser("models", help="registry: list | show NAME | alias NAME ALIAS VERSION|none | "
                                       "canary NAME PERCENT | check NAME[@ALIAS]")
    mo.add_argument("action", choices=["list", "show", "alias", "canary", "check"])
    mo.add_argument("args", nargs="*")
    mo.add_argument("--repo", default="examples/fraud")
    mo.add_argument("--models-dir", default=None, help="registry root (default <repo>/models)")
    mo.add_argument("--json", action="store_true", help="show: meta.json of every version")
    mo.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="the whole loop: features, replay, training set, train, score with a shadow, parity")
    d.add_argument("--repo", default="examples/fraud")
    d.add_argument("--events", type=int, default=20000, help="events produced live for the features and training part")
    d.add_argument("--rate", type=float, default=1000.0, help="events/s offered while producing live")
    d.add_argument("--score-events", type=int, default=5000, help="events produced live while the scorer runs")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HeadwaterError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("headwater: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        where = _service_of(exc)
        if where is None:
            raise
        print(f"headwater: error: {where} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
              f"; is the stack up? (`headwater stack status`; HEADWATER_BOOTSTRAP_SERVERS / HEADWATER_REDIS_URL)",
              file=sys.stderr)
        return 2


def _service_of(exc: BaseException) -> str | None:
    """Kafka or Redis, for an error from their clients that no command turned into its own line
    (a broker or Redis that cannot be reached); None for anything else, which stays a traceback."""
    mod = type(exc).__module__ or ""
    if mod.startswith(("confluent_kafka", "cimpl")):
        return "Kafka"
    if mod.startswith("redis"):
        return "Redis"
    return None


if __name__ == "__main__":
    sys.exit(main())
