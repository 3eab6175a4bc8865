"""``headwater replay``: a bounded Kafka range -> the same Flink SQL in batch mode -> Parquet tiles.

Resolves the range to exact offsets (``replay.bounds``), runs the batch job (``replay.sql``) on a
local MiniCluster while reporting progress (``replay.progress``), then writes one manifest per
view (``backfill.layout``: ``<out>/_replay/<view>.json``). A replay's tiles replace the view's whole
tile set, so a rerun of the same range is idempotent (``run_replay``).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from backfill import layout
from replay import progress as progress_mod
from replay.bounds import TopicRange, parse_offsets, parse_time, resolve_range
from replay.errors import RangeError, ReplayError
from replay.sql import batch_config, build_job, staged_path, stats_path

__all__ = ["ReplayStats", "ViewStats", "run_replay"]


@dataclass(frozen=True)
class ViewStats:
    view: str
    plan_hash: str
    events_read: int
    events_late: int
    tiles_written: int


@dataclass(frozen=True)
class ReplayStats:
    out: str
    ranges: dict[str, dict]
    views: tuple[ViewStats, ...]
    events_read: int
    seconds: float
    startup_seconds: float
    finished_ms: int
    parallelism: int
    extra: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events_read / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"replay: {self.events_read:,} events read in {self.seconds:.1f}s "
                 f"({self.events_per_s:,.0f} events/s, parallelism {self.parallelism}) -> {self.out}"]
        for v in self.views:
            lines.append(f"  {v.view:24} read {v.events_read:>12,}  late (dropped) {v.events_late:>10,}  "
                         f"tiles written {v.tiles_written:>12,}  plan {v.plan_hash}")
        return "\n".join(lines)


def _read_stats(path: Path) -> dict:
    import pyarrow.parquet as pq
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    if not files:
        return {"events": 0, "late": 0, "partitions": {}}
    t = pq.ParquetDataset(files).read() if len(files) > 1 else pq.read_table(files[0])
    rows = t.to_pylist()
    return {"events": sum(r["events"] for r in rows), "late": sum(r["late"] or 0 for r in rows),
            "partitions": {str(r["partition"]): {k: r[k] for k in r if k != "partition"} for r in rows}}


def _covered_json(c: tuple[int | None, int | None] | None) -> dict | None:
    return None if c is None else {"from_ms": c[0], "to_ms": c[1],
                                   "note": "event times [from, to) whose every event was read; null: open"}


def _quiet_hadoop() -> None:
    """PyFlink's log4j config prints Hadoop's INFO lines (one per Parquet file) to the console."""
    try:
        from pyflink.java_gateway import get_gateway
        log4j = get_gateway().jvm.org.apache.logging.log4j
        log4j.core.config.Configurator.setLevel("org.apache.hadoop", log4j.Level.WARN)
    except Exception:  # cosmetic only
        pass


def _root_cause(exc: BaseException) -> str:
    """The innermost Java cause of a Py4J error, one line."""
    causes = [ln.split("Caused by:", 1)[1].strip() for ln in str(exc).splitlines() if "Caused by:" in ln]
    text = causes[-1] if causes else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:400]


def _commit_view(staged: Path, view_dir: Path) -> int:
    """Make the partitions Flink wrote for a view the view's whole tile set (files named
    ``*.parquet``): one replay, one range, one manifest. They are gathered next to ``view_dir``
    (its real place, if it is a link) and swapped in by two renames. Returns the rows moved."""
    import pyarrow.parquet as pq
    rows = 0
    view_dir = view_dir.resolve()  # a link to another filesystem: gather and swap over there
    fresh = view_dir.with_name(f".{view_dir.name}.new-{uuid.uuid4().hex[:8]}")
    old = view_dir.with_name(f".{view_dir.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        for part in sorted(staged.glob("resolution_ms=*/date=*")):
            files = [f for f in sorted(part.iterdir()) if f.is_file() and not f.name.startswith((".", "_"))]
            if not files:
                continue
            target = fresh / part.parent.name / part.name
            target.mkdir(parents=True)
            for f in files:
                rows += pq.ParquetFile(f).metadata.num_rows
                shutil.move(f, target / (f.name if f.suffix == ".parquet" else f.name + ".parquet"))
        fresh.mkdir(parents=True, exist_ok=True)
        if view_dir.exists():
            os.replace(view_dir, old)
        os.replace(fresh, view_dir)
    except OSError as exc:
        kept = view_dir if view_dir.exists() else old
        raise ReplayError(f"cannot put the new tiles of {view_dir.name} in place ({exc}); the previous tiles "
                          f"are in {kept}: fix the directory and rerun the replay") from exc
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return rows


def _uncovered(old: Mapping[str, Any], new: TopicRange) -> list[str]:
    """Offsets of the earlier replay (its manifest's range) that ``new`` does not read, as
    ``P:START-END``; a different topic is uncovered whole."""
    have = {p.partition: (p.start, p.end) for p in new.partitions} if old.get("topic") == new.topic else {}
    out = []
    for p, (s, e) in sorted(((int(p), tuple(r)) for p, r in (old.get("offsets") or {}).items())):
        ns, ne = have.get(p, (0, 0))
        if s < e and not (ns <= s and e <= ne):
            out.append(f"{p}:{s}-{e}")
    return out


def run_replay(repo, out, *, start=None, end=None, offsets=None, views=None, parallelism: int | None = None,
               progress: Callable[[str], None] | None = print, conn=None, definitions=None,
               flink_config: dict[str, str] | None = None, replace: bool = False) -> ReplayStats:
    """Replay ``repo``'s views over a bounded Kafka range into Parquet tiles under ``out``.

    A replay's tiles replace the view's whole tile set in ``out`` (tiles near a range's edges hold
    only in-range events, so two ranges' tiles do not add up). A range that does not cover the
    one already there is refused unless ``replace``: nothing of a longer history is lost silently.

    start/end: Kafka record timestamps (ISO-8601 or epoch ms; append time on LogAppendTime
    topics), ``[start, end)``; offsets: ``"0:100-5000,1:0-4200"`` or a dict {partition: (start, end)}.
    """
    from confluent_kafka import Consumer
    from headwater.config import RepoConfig, load_connection, load_repo
    from streamjobs.job import bindings, table_env
    from streamjobs.repo import load_definitions

    say = progress or (lambda _m: None)
    repo = repo if isinstance(repo, RepoConfig) else load_repo(repo)
    conn = conn or load_connection()
    defs = definitions or load_definitions(repo)
    chosen = list(defs.plan.views)
    if views:
        names = [views] if isinstance(views, str) else list(views)
        chosen = [defs.plan.view(n) for n in names]  # unknown names raise DefinitionError
    start_ms, end_ms = parse_time(start, what="--from"), parse_time(end, what="--to")
    offs = parse_offsets(offsets) if isinstance(offsets, str) or offsets is None else dict(offsets)
    topics = sorted({v.topic for v in chosen})
    if offs and len(topics) > 1:
        raise ReplayError(f"--offsets is ambiguous: the views read {len(topics)} topics ({', '.join(topics)}); "
                          f"replay one topic's views at a time with --views")
    out = Path(out)
    c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": f"headwater-replay-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        ranges: dict[str, TopicRange] = {t: resolve_range(c, t, start_ms=start_ms, end_ms=end_ms, offsets=offs)
                                         for t in topics}
    finally:
        c.close()
    for v in chosen:
        old = layout.read_manifest(out, v.name)
        # tiles of another plan are unreadable anyway (readers refuse them): nothing to keep
        keep = old is not None and not replace and old.plan_hash == v.plan_hash
        lost = _uncovered(old.range, ranges[v.topic]) if keep else []
        if lost:
            raise ReplayError(f"{out} holds view {v.name!r} replayed over {old.range.get('topic')} "
                              f"{' '.join(f'{p}:{a}-{b}' for p, (a, b) in sorted(old.range.get('offsets', {}).items()))}"
                              f"; this range does not read {', '.join(lost)} and a replay replaces the view's "
                              "tiles: replay one range covering both, pass --replace, or choose another --out")
    total = sum(r.total for r in ranges.values())
    if total == 0:
        raise RangeError(f"nothing to replay: the range holds no records of {', '.join(topics)} "
                         f"(--from/--to are Kafka append times; check them, or --offsets, against the topic)")
    par = parallelism or max(len(r.partitions) for r in ranges.values())
    say(f"replay: {len(chosen)} view(s) from {', '.join(topics)}: ~{total:,} records "
        f"({'; '.join(f'{t}: ' + ' '.join(f'{p.partition}:{p.start}-{p.end}' for p in r.partitions) for t, r in ranges.items())})"
        f", parallelism {par} -> {out}")
    sources, _, _ = bindings(repo, defs)
    work = out / "_replay" / f".work-{uuid.uuid4().hex[:8]}"
    job = build_job(chosen, sources, {t: r.kafka_bounds() for t, r in ranges.items()}, conn.bootstrap_servers,
                    f"headwater-replay-{repo.project}", work)
    rest_port = progress_mod.free_port()
    t0 = time.time()
    env = table_env(conn, mode="batch", parallelism=par,
                    extra={**batch_config(), **(flink_config or {}), "rest.port": str(rest_port), "rest.address": "127.0.0.1"})
    _quiet_hadoop()
    for stmt in job.ddl:
        env.execute_sql(stmt)
    stmts = env.create_statement_set()
    for ins in job.inserts:
        stmts.add_insert_sql(ins)
    try:
        result = stmts.execute()
        t_submit = time.time() - t0
        progress_mod.follow(result, rest_port, total, say)
    except Exception as exc:  # Flink errors arrive as Py4J errors: keep the cause, one readable line
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, ReplayError):
            raise
        raise ReplayError(f"the replay job failed: {_root_cause(exc)} (the tiles already in {out} are "
                          "unchanged; fix the cause and rerun)") from exc
    seconds = time.time() - t0
    finished = int(time.time() * 1000)
    vstats = []
    for v in chosen:
        st = _read_stats(stats_path(work, v.name))
        tiles = _commit_view(staged_path(work, v.name), layout.view_dir(out, v.name))
        vs = ViewStats(v.name, v.plan_hash, st["events"], st["late"], tiles)
        vstats.append(vs)
        manifest = {"view": v.name, "plan_hash": v.plan_hash, "tick_ms": v.tick_ms, "entity_key": v.entity_key,
                    "ladder": list(v.ladder), "allowed_lateness_ms": v.allowed_lateness_ms,
                    "range": ranges[v.topic].to_json(), "events_read": st["events"], "events_late": st["late"],
                    "tiles_written": tiles, "partitions_read": st["partitions"], "finished_ms": finished,
                    "covered": _covered_json(ranges[v.topic].covered_ms(st["partitions"])),
                    "seconds": round(seconds, 3), "parallelism": par}
        layout.write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    read = sum(next(s.events_read for s, v in zip(vstats, chosen) if v.topic == t) for t in topics)
    stats = ReplayStats(str(out), {t: r.to_json() for t, r in ranges.items()}, tuple(vstats), read, seconds,
                        t_submit, finished, par)
    say(stats.summary())
    return stats


def stats_dict(stats: ReplayStats) -> dict:
    return asdict(stats)
