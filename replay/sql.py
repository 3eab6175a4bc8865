"""The batch replay job: the streaming job's compiled SELECTs, with Parquet sinks instead of Kafka.

Source DDL, the per-event view and every tile SELECT come from ``streamjobs.compiler`` unchanged
(same lateness predicate, same IR aggregates); only the sinks and the bounds differ. Per view one
Hive-partitioned Parquet table (``resolution_ms=<r>/date=<UTC day of tile_start>/``, staged under
the run's work directory) receives the UNION ALL of its resolutions; the runner then moves each
written partition into ``<out>/view=<view>/``, replacing that partition (INSERT OVERWRITE
semantics: a rerun replaces exactly the partitions it writes). Progress rows (``resolution_ms = 0``) are not written;
instead a per-partition *stats* query (events, late, offsets, append times) goes to a small
side table the runner reads back for the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from online_store.tiles import PROGRESS_RESOLUTION
from streamjobs import compiler, windows
from streamjobs.compiler import APPEND_MS, OFFSET, PARTITION, SourceBinding, q
from streamjobs.plan import ViewPlan

__all__ = ["ReplayJob", "TILE_COLUMNS", "STATS_COLUMNS", "build_job", "staged_path", "stats_path",
           "batch_config"]

#: columns in every tile file, before the view's IR fields (partition columns are in the path)
TILE_COLUMNS = (("entity", "STRING"), ("tile_start", "BIGINT"), ("plan_hash", "STRING"),
                ("n_events", "BIGINT"), ("max_append_ms", "BIGINT"))
STATS_COLUMNS = (("partition", "BIGINT"), ("events", "BIGINT"), ("late", "BIGINT"),
                 ("min_offset", "BIGINT"), ("max_offset", "BIGINT"),
                 ("min_append_ms", "BIGINT"), ("max_append_ms", "BIGINT"))
_STATE_TTL = re.compile(r"/\*\+\s*STATE_TTL\([^)]*\)\s*\*/\s*")


@dataclass(frozen=True)
class ReplayJob:
    ddl: tuple[str, ...]
    inserts: tuple[str, ...]

    def text(self) -> str:
        return ";\n\n".join((*self.ddl, *self.inserts)) + ";\n"


def staged_path(work: Path, view: str) -> Path:
    """Where Flink writes a view's partitions before the runner moves them into the layout (Flink's
    file sink misreads a table path whose last part looks like a partition, ``view=<name>``)."""
    return Path(work) / f"tiles-{view}"


def stats_path(work: Path, view: str) -> Path:
    return Path(work) / f"stats-{view}"


def batch_config() -> dict[str, str]:
    """Batch-mode settings for the local MiniCluster. Every view adds a blocking exchange per
    resolution group and a sink; the default 64 MB of network memory runs out at a dozen views,
    and the default managed memory starves their hash aggregates."""
    return {
        **compiler.job_config("batch"),
        "taskmanager.memory.network.min": "256 mb",
        "taskmanager.memory.network.max": "256 mb",
        # hash aggregates split the slot's managed memory; below ~1 MB each they refuse to start
        "taskmanager.memory.managed.size": "1 gb",
    }


def _sink_ddl(name: str, columns: list[tuple[str, str]], path: Path, partitions: tuple[str, ...]) -> str:
    cols = ",\n  ".join(f"{q(n)} {t}" for n, t in columns)
    part = f"\nPARTITIONED BY ({', '.join(q(p) for p in partitions)})" if partitions else ""
    return (f"CREATE TEMPORARY TABLE {q(name)} (\n  {cols}\n){part} WITH (\n"
            f"  'connector' = 'filesystem', 'path' = 'file://{Path(path).resolve()}', 'format' = 'parquet'\n)")


def _tile_sink(view: ViewPlan, work: Path) -> str:
    cols = [*TILE_COLUMNS, *((f.name, f.sql_type) for f in view.fields),
            ("resolution_ms", "BIGINT"), ("date", "STRING")]
    return _sink_ddl(f"replay_tiles__{view.name}", cols, staged_path(work, view.name), ("resolution_ms", "date"))


def _batch_select(select: str) -> str:
    """Drop streaming-only ``STATE_TTL`` hints: a bounded job keeps no state to expire, and the
    batch planner rejects hints it cannot attach to a table."""
    return _STATE_TTL.sub("", select)


def _tile_insert(view: ViewPlan, src: SourceBinding) -> str:
    # progress records (resolution 0) are not tiles: Parquet does not carry them
    selects = [_batch_select(s) for r, s in compiler.tile_selects(view, src) if r != PROGRESS_RESOLUTION]
    names = [n for n, _ in TILE_COLUMNS] + [f.name for f in view.fields] + ["resolution_ms"]
    cols = ", ".join(q(n) for n in names)
    day = f"DATE_FORMAT(TO_TIMESTAMP_LTZ({q('tile_start')}, 3), 'yyyy-MM-dd')"  # session zone is UTC
    union = "\n  UNION ALL\n  ".join(selects)
    return (f"INSERT OVERWRITE {q(f'replay_tiles__{view.name}')}\n"
            f"SELECT {cols}, {day} AS {q('date')} FROM (\n  {union}\n)")


def _stats_sink(view: ViewPlan, work: Path) -> str:
    return _sink_ddl(f"replay_stats__{view.name}", list(STATS_COLUMNS), stats_path(work, view.name), ())


def _stats_insert(view: ViewPlan, src: SourceBinding) -> str:
    on_time = windows.on_time_sql(q(view.event_time_field), q(APPEND_MS), view.allowed_lateness_ms,
                                 view.allowed_future_ms)
    return (f"INSERT OVERWRITE {q(f'replay_stats__{view.name}')}\n"
            f"SELECT CAST({q(PARTITION)} AS BIGINT), COUNT(*),\n"
            f"  SUM(CASE WHEN {on_time} THEN CAST(0 AS BIGINT) ELSE CAST(1 AS BIGINT) END),\n"
            f"  MIN({q(OFFSET)}), MAX({q(OFFSET)}), MIN({q(APPEND_MS)}), MAX({q(APPEND_MS)})\n"
            f"FROM {q(src.events_view)} GROUP BY {q(PARTITION)}")


def build_job(views: list[ViewPlan], sources: dict[str, SourceBinding], bounds: dict[str, compiler.KafkaBounds],
              bootstrap: str, group_id: str, work: Path) -> ReplayJob:
    """``sources``/``bounds`` keyed by topic; ``work`` receives the staged tiles and the stats tables."""
    ddl: list[str] = compiler.function_ddl()
    for topic in sorted({v.topic for v in views}):
        src = sources[topic]
        ddl += [compiler.source_ddl(src, bootstrap, group_id, bounds[topic]),
                compiler.events_view_sql(src, [v for v in views if v.topic == topic])]
    inserts = []
    for v in views:
        ddl += [_tile_sink(v, work), _stats_sink(v, work)]
        inserts += [_tile_insert(v, sources[v.topic]), _stats_insert(v, sources[v.topic])]
    return ReplayJob(tuple(ddl), tuple(inserts))
