"""FeaturePlan -> Flink SQL. The same tile queries run in streaming (features job) and batch
(replay); only the source bounds and the sink differ.

Per view and per ladder resolution ``r`` one ``GROUP BY entity, tile_start`` produces whole-IR
tiles (every aggregate text comes from ``ir.field_sql``, every time expression from
``windows``), plus one ``GROUP BY partition`` producing *progress* records and, streaming only,
one counting the events dropped as late (*late count* records; see ``online_store.tiles``). No
Python runs per event: this is all JVM operators.

Streaming at parallelism 1 adds *markers* to every tile query (``markers=True``): the source's
format emits one record in ``MARK_EVERY`` a second time, right after itself, with ``hw_marked`` set
to the reader's id (random, new at every start and every failover restore; 0 in all other rows),
and each tile query groups that copy under its marker key (per source partition and reader id)
with every aggregated column null, in its own ``GROUP BY``. The aggregation is one-phase so that
nothing reorders events between the source and it, and each query's sink writes one partition of
the tiles topic (``io.headwater.flink.QueryPartitioner``), so the topic keeps the query's
emission order: the writer's exact as_of rule (``online_store.markers``) rests on both.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

from online_store.tiles import LATE_RESOLUTION, MARK_EVERY, MARKER_PREFIX, PROGRESS_RESOLUTION
from streamjobs import ir, windows
from streamjobs.avro_ddl import ddl_columns
from streamjobs.plan import FeaturePlan, ViewPlan

__all__ = ["SourceBinding", "KafkaBounds", "CompiledJob", "source_ddl", "function_ddl", "events_view_sql",
           "tile_selects", "late_select", "tile_sink_ddl", "compile_job", "job_config", "q", "state_ttl_ms"]

# metadata columns every source table gets (names chosen not to collide with user columns)
PARTITION, OFFSET, APPEND_TS, APPEND_MS = "hw_partition", "hw_offset", "hw_append_ts", "hw_append_ms"


def q(name: str) -> str:
    return f"`{name}`"


@dataclass(frozen=True)
class SourceBinding:
    """An events topic as Flink reads it: the writer schema and its id from the schema store.

    ``schema_store``: where the job finds the writer schema of a record framed with another id
    (an absolute path of the file store, or a Schema Registry URL), to resolve it to ``schema``
    (``streamjobs/java/.../FramedDeserializer.java``); None skips such records."""

    topic: str
    schema: dict
    schema_id: int
    schema_store: str | None = None

    @property
    def table(self) -> str:
        return "src__" + "".join(c if c.isalnum() else "_" for c in self.topic)

    @property
    def events_view(self) -> str:
        return "ev__" + self.table[5:]


@dataclass(frozen=True)
class KafkaBounds:
    """Where a source starts and (optionally) stops. Streaming: group offsets, unbounded."""

    startup: Literal["group-offsets", "earliest-offset", "timestamp", "specific-offsets"] = "group-offsets"
    start_timestamp_ms: int | None = None
    start_offsets: str | None = None  # "partition:0,offset:42;partition:1,offset:300"
    bounded: Literal["unbounded", "latest-offset", "timestamp", "specific-offsets"] = "unbounded"
    end_timestamp_ms: int | None = None
    end_offsets: str | None = None

    def options(self) -> dict[str, str]:
        o = {"scan.startup.mode": self.startup}
        if self.startup == "timestamp":
            o["scan.startup.timestamp-millis"] = str(self.start_timestamp_ms)
        if self.startup == "specific-offsets":
            o["scan.startup.specific-offsets"] = str(self.start_offsets)
        if self.bounded != "unbounded":
            o["scan.bounded.mode"] = self.bounded
        if self.bounded == "timestamp":
            o["scan.bounded.timestamp-millis"] = str(self.end_timestamp_ms)
        if self.bounded == "specific-offsets":
            o["scan.bounded.specific-offsets"] = str(self.end_offsets)
        return o


@dataclass(frozen=True)
class CompiledJob:
    ddl: tuple[str, ...]
    inserts: tuple[str, ...]
    config: dict[str, str] = field(default_factory=dict)
    markers: bool = False  # its tile queries emit markers: it must run at parallelism 1

    def text(self) -> str:
        return ";\n\n".join((*self.ddl, *self.inserts)) + ";\n"


def _with(opts: dict[str, str]) -> str:
    """A WITH clause; values are SQL string literals (a path may hold a quote)."""
    return ",\n  ".join(f"'{k}' = '{_lit(v)}'" for k, v in opts.items())


def _lit(v: str) -> str:
    return str(v).replace("'", "''")


def source_ddl(src: SourceBinding, bootstrap: str, group_id: str, bounds: KafkaBounds, markers: bool = False) -> str:
    """``markers``: the format also emits one record in ``MARK_EVERY`` again, with the source
    reader's id (never 0) in a last physical column that is 0 in every other row (module docstring)."""
    cols = [f"{q(n)} {t}" for n, t in ddl_columns(src.schema)]
    if markers:
        cols.append(f"{q(MARKED)} BIGINT NOT NULL")
    cols += [f"{q(PARTITION)} INT METADATA FROM 'partition' VIRTUAL",
             f"{q(OFFSET)} BIGINT METADATA FROM 'offset' VIRTUAL",
             f"{q(APPEND_TS)} TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL"]
    opts = {"connector": "kafka", "topic": src.topic, "properties.bootstrap.servers": bootstrap,
            "properties.group.id": group_id, "properties.auto.offset.reset": "earliest",
            # aborted transactions are not events (the spine, parity and the scorer read committed too)
            "properties.isolation.level": "read_committed",
            **bounds.options(),
            "format": "headwater-avro", "headwater-avro.schema-id": str(src.schema_id),
            **({"headwater-avro.schema-store": src.schema_store} if src.schema_store else {}),
            **({"headwater-avro.mark-every": str(MARK_EVERY)} if markers else {})}
    return f"CREATE TEMPORARY TABLE {q(src.table)} (\n  " + ",\n  ".join(cols) + f"\n) WITH (\n  {_with(opts)}\n)"


#: the record timestamp as epoch ms (Java; TIMESTAMP_LTZ does not cast to BIGINT ms in Flink 2.2)
EPOCH_MS_FUNCTION, EPOCH_MS_CLASS = "HW_EPOCH_MS", "io.headwater.flink.EpochMillis"


def function_ddl() -> list[str]:
    """Registers the Java functions the compiled SQL calls (``ir.DISTINCT_FUNCTION``,
    ``ir.LAST_KEY_FUNCTION``, ``ir.M2_FUNCTION``, :data:`EPOCH_MS_FUNCTION`) for this TableEnvironment; their classes
    ship in the ``headwater-avro`` format jar (``streamjobs/java``)."""
    return [f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {name} AS '{cls}' LANGUAGE JAVA"
            for name, cls in ((ir.DISTINCT_FUNCTION, ir.DISTINCT_CLASS), (ir.LAST_KEY_FUNCTION, ir.LAST_KEY_CLASS),
                              (ir.M2_FUNCTION, ir.M2_CLASS), (EPOCH_MS_FUNCTION, EPOCH_MS_CLASS))]


def _tile_col(r: int) -> str:
    return f"hw_tile_{r}"


def _last_col(f: ir.IRField) -> str:
    return f"hw_last__{f.column}"


def events_view_sql(src: SourceBinding, views: list[ViewPlan]) -> str:
    """Per-event expressions written once for every query: the record timestamp as epoch ms, each
    tile start, and each ``last`` composite key. Flink merges this view into each query's own
    projection after the fan-out, so a query evaluates those it uses (a JFR profile showed the
    keys' ``LPAD``s under every card query): the Java functions keep each evaluation cheap."""
    ms = f"{EPOCH_MS_FUNCTION}({q(APPEND_TS)})"
    cols = [f"{ms} AS {q(APPEND_MS)}"]
    for et, r in sorted({(v.event_time_field, r) for v in views for r in v.ladder}):
        cols.append(f"{windows.tile_start_sql(q(et), r)} AS {q(_tile_col(r))}")
    seen = set()
    for v in views:
        inputs = ir.SqlInputs(event_time_ms=q(v.event_time_field), partition=q(PARTITION), offset=q(OFFSET))
        for f in v.fields:
            if f.kind == "last" and _last_col(f) not in seen:
                seen.add(_last_col(f))
                cols.append(f"{ir.last_key_sql(q(f.column), f.column_type, inputs, 'flink')} AS {q(_last_col(f))}")
    return (f"CREATE TEMPORARY VIEW {q(src.events_view)} AS SELECT *,\n  " + ",\n  ".join(cols)
            + f"\nFROM {q(src.table)}")


def state_ttl_ms(view: ViewPlan, resolution_ms: int, downtime_ms: int = 0) -> int:
    """Per-aggregation state TTL: a tile's events are appended within ``allowed_future + r +
    lateness`` of each other (``windows.on_time``), so no two writes of it are further apart; the
    TTL is that plus another ``r + lateness`` and a minute, safe even while the job catches up. Flink counts it in
    processing time from an entry's last write, so a job restored after ``downtime_ms`` would find
    the tiles it had open expired and start them again from nothing (the writer would then keep
    the older, fuller version and drop the rest): the restored run adds the downtime, at most the
    tile's retention in Redis (``keys.retention_ms``; an older tile is trimmed on arrival), so a
    long outage does not keep days of fine tiles in state. Flink keeps the TTL out of checkpoints,
    so each run may set its own."""
    from online_store.keys import retention_ms  # past it the writer drops a tile anyway: no longer state
    return 2 * (resolution_ms + view.allowed_lateness_ms) + view.allowed_future_ms + 60_000 + min(max(0, int(downtime_ms)),
                                                                       retention_ms(view).get(resolution_ms, 0))


def _ttl_hint(view: ViewPlan, resolution_ms: int, alias: str, downtime_ms: int = 0) -> str:
    return f"/*+ STATE_TTL('{alias}' = '{state_ttl_ms(view, resolution_ms, downtime_ms)} ms') */ "


_MARK, MARKED = "hw_mark", "hw_marked"  # per query: the copy's offset; per source row: the reader id of a copy, else 0


def _marked_events(view: ViewPlan, src: SourceBinding, r: int, where: str) -> str:
    """The events of one tile query with the source's marker copies (module docstring): the
    grouping key as ``hw_k_entity``/``hw_k_tile``; a copy's key is the marker's and every column
    the query aggregates is null in it, so its group holds no state beyond a few scalars."""
    columns = {f.column for f in view.fields} | {view.event_time_field, view.entity_key}
    columns |= {_last_col(f) for f in view.fields if f.kind == "last"}
    ev, copy = f"{q(MARKED)} = 0", f"{q(MARKED)} <> 0"
    marker = f"CONCAT(CHR(0), '{MARKER_PREFIX[1:]}', CAST({q(MARKED)} AS STRING))"
    nulled = ",\n      ".join(f"CASE WHEN {ev} THEN {q(c)} END AS {q(c)}" for c in sorted(columns - {APPEND_MS}))
    return (f"(SELECT CASE WHEN {ev} THEN CAST({q(view.entity_key)} AS STRING) ELSE {marker} END AS hw_k_entity,\n"
            f"      CASE WHEN {ev} THEN {q(_tile_col(r))} ELSE -1 - CAST({q(PARTITION)} AS BIGINT) END AS hw_k_tile,\n"
            f"      CASE WHEN {copy} THEN {q(OFFSET)} END AS {q(_MARK)},\n"
            f"      {q(PARTITION)}, {q(OFFSET)}, {q(APPEND_MS)},\n      {nulled}\n"
            f"    FROM {q(src.events_view)}\n"
            f"    WHERE {copy} OR ({where}))")


def tile_selects(view: ViewPlan, src: SourceBinding, markers: bool = False,
                 downtime_ms: int = 0) -> list[tuple[int, str]]:
    """``(resolution_ms, SELECT)``: one per ladder resolution (tiles), then progress
    (``PROGRESS_RESOLUTION``); the mode-independent core, plus markers in streaming
    (``markers``, module docstring).

    Each groups by exactly the columns that vary per tile (entity, tile start; progress: the
    partition): view and resolution are literals. The streaming sinks' primary keys are those
    same columns (``tile_sink_ddl``), so the planner sends them inserts and UPDATE_AFTERs only,
    and a batch sort compares the entity first."""
    inputs = ir.SqlInputs(event_time_ms=q(view.event_time_field), partition=q(PARTITION), offset=q(OFFSET))
    entity = f"CAST({q(view.entity_key)} AS STRING)"
    on_time = windows.on_time_sql(q(view.event_time_field), q(APPEND_MS), view.allowed_lateness_ms,
                                 view.allowed_future_ms)
    where = f"{on_time} AND {q(view.entity_key)} IS NOT NULL"
    out = []
    aggs = ",\n    ".join(
        f"{ir.field_sql(f, inputs=inputs, last_key_column=q(_last_col(f)))} AS {q(f.name)}" for f in view.fields)
    name = f"CAST('{view.name}' AS STRING) AS {q('view')}"
    for r in view.ladder:
        if markers:
            key, tile, count = "hw_k_entity", "hw_k_tile", f"COALESCE(MAX({q(_MARK)}) + 1, COUNT(*))"
            source, filt = _marked_events(view, src, r, where), ""
        else:
            key, tile, count = entity, q(_tile_col(r)), "COUNT(*)"
            source, filt = q(src.events_view), f"  WHERE {where}\n"
        out.append((r,
            f"SELECT {_ttl_hint(view, r, 'e', downtime_ms)}{name}, {key} AS {q('entity')}, "
            f"CAST({r} AS BIGINT) AS {q('resolution_ms')}, {tile} AS {q('tile_start')},\n"
            f"    '{view.plan_hash}' AS {q('plan_hash')}, {count} AS {q('n_events')},\n"
            f"    MAX({q(APPEND_MS)}) AS {q('max_append_ms')},\n    {aggs}\n"
            f"  FROM {source} AS e\n{filt}"
            f"  GROUP BY {key}, {tile}"))
    out.append((PROGRESS_RESOLUTION, _per_partition_select(
        view, src, PROGRESS_RESOLUTION, f"COALESCE(MAX({q(OFFSET)}) + 1, CAST(0 AS BIGINT))")))
    return out


def _per_partition_select(view: ViewPlan, src: SourceBinding, resolution: int, n_events: str,
                          where: str | None = None) -> str:
    """A ``GROUP BY`` source partition in the tile row shape (progress, late counts): entity '',
    the partition as ``tile_start``, ``n_events`` as given, the IR fields null."""
    nulls = ",\n    ".join(f"CAST(NULL AS {f.sql_type}) AS {q(f.name)}" for f in view.fields)
    # COALESCE: Kafka's partition is never null, but NOT NULL like the tiles' start, so that the
    # row types of every query of the view agree (replay unions them)
    part = f"COALESCE(CAST({q(PARTITION)} AS BIGINT), CAST(-1 AS BIGINT))"
    return (f"SELECT CAST('{view.name}' AS STRING) AS {q('view')}, CAST('' AS STRING) AS {q('entity')}, "
            f"CAST({resolution} AS BIGINT) AS {q('resolution_ms')}, {part} AS {q('tile_start')},\n"
            f"    '{view.plan_hash}' AS {q('plan_hash')}, {n_events} AS {q('n_events')}, "
            f"MAX({q(APPEND_MS)}) AS {q('max_append_ms')},\n    {nulls}\n"
            f"  FROM {q(src.events_view)} AS e\n"
            + ("" if where is None else f"  WHERE {where}\n")
            + f"  GROUP BY {part}")


def late_select(view: ViewPlan, src: SourceBinding, markers: bool = False) -> tuple[int, str]:
    """``(LATE_RESOLUTION, SELECT)``: per source partition, the events the tile queries drop as late
    or too far ahead (their ``windows.on_time_sql`` predicate not true, as the replay's stats count
    them), and the newest append
    time among them; marker copies (``markers``) are not events. Only late rows reach the
    aggregate, so it costs nothing while nothing is late."""
    on_time = windows.on_time_sql(q(view.event_time_field), q(APPEND_MS), view.allowed_lateness_ms,
                                 view.allowed_future_ms)
    where = f"({on_time}) IS NOT TRUE" + (f" AND {q(MARKED)} = 0" if markers else "")
    return LATE_RESOLUTION, _per_partition_select(view, src, LATE_RESOLUTION, "COUNT(*)", where)


def tile_sink_table(view: ViewPlan, resolution_ms: int) -> str:
    return f"tiles__{view.name}__{resolution_ms}"


#: the Kafka partitioner of every tile sink of a job with markers (``streamjobs/java``), and its slot option
PARTITIONER_CLASS, PARTITION_SLOT = "io.headwater.flink.QueryPartitioner", "headwater.partition.slot"


def partition_slot(view: ViewPlan, resolution_ms: int) -> int:
    """The tiles-topic partition slot of one query (modulo the partition count): stable across
    plans and restarts, so a tile key always lands in the same partition."""
    return zlib.crc32(f"{view.name}/{resolution_ms}".encode()) & 0x7FFFFFFF


def tile_sink_ddl(view: ViewPlan, resolution_ms: int, value_schema: dict, tiles_topic: str, bootstrap: str,
                  key_schema_id: int, value_schema_id: int, pinned: bool = False) -> str:
    """Upsert-Kafka, one table per query. The primary key is what the query groups by (entity,
    tile_start; progress: tile_start), so no UPDATE_BEFORE reaches the sink (upsert-kafka would
    write it as a tombstone before every tile update). The Kafka key is still the whole
    ``TileKey(view, entity, resolution_ms, tile_start)``: the ``headwater-tile-key`` format
    (``streamjobs/java``) adds the parts fixed per table. ``pinned`` (with markers): all of a
    query's records go to one partition, in order (idempotent producer): see the module docstring."""
    cols = [f"{q(n)} {t}" for n, t in ddl_columns(value_schema)]
    per_partition = resolution_ms in (PROGRESS_RESOLUTION, LATE_RESOLUTION)
    pk = ("tile_start",) if per_partition else ("entity", "tile_start")
    cols.append(f"PRIMARY KEY ({', '.join(q(k) for k in pk)}) NOT ENFORCED")
    opts = {"connector": "upsert-kafka", "topic": tiles_topic, "properties.bootstrap.servers": bootstrap,
            "key.format": "headwater-tile-key", "key.headwater-tile-key.schema-id": str(key_schema_id),
            "key.headwater-tile-key.view": view.name,
            "key.headwater-tile-key.resolution-ms": str(resolution_ms),
            **({"key.headwater-tile-key.entity": ""} if per_partition else {}),
            "value.format": "headwater-avro", "value.headwater-avro.schema-id": str(value_schema_id),
            "value.fields-include": "ALL"}
    if pinned:
        opts.update({"properties.partitioner.class": PARTITIONER_CLASS,
                     f"properties.{PARTITION_SLOT}": str(partition_slot(view, resolution_ms)),
                     "properties.enable.idempotence": "true"})  # order kept within a partition, retries included
    return (f"CREATE TEMPORARY TABLE {q(tile_sink_table(view, resolution_ms))} (\n  " + ",\n  ".join(cols)
            + f"\n) WITH (\n  {_with(opts)}\n)")


def job_config(mode: Literal["streaming", "batch"], checkpoint_dir: str | None = None,
               checkpoint_interval_ms: int = 5000, markers: bool = False) -> dict[str, str]:
    """Streaming: mini-batches bound latency to 500 ms; checkpoints make restarts resume. Both
    modes reuse objects between chained operators: the job is SQL operators only (no user
    function keeps a reference to a row), and the defensive row copies were 18 % of the streaming
    job's CPU in a profile (bench/flink_job.py: 5.0-6.3k -> 7.3-8.3k events/s)."""
    common = {
        "pipeline.object-reuse": "true",
        # one sink per query: reusing one sink per view unions the queries, and the union rejects
        # inputs whose row types differ only in nullability (tiles vs progress rows)
        "table.optimizer.reuse-sink-enabled": "false",
    }
    if mode == "batch":
        return common
    cfg = {
        **common,
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "500 ms",  # freshness objective is seconds
        "table.exec.mini-batch.size": "5000",
        "table.exec.sink.upsert-materialize": "NONE",     # tiles are keyed upserts already
    }
    if markers:  # no local pre-aggregation: a marker must reach its query's aggregate after the events before it
        cfg["table.optimizer.agg-phase-strategy"] = "ONE_PHASE"
        # the one aggregate now counts raw events toward the size trigger: at 5000 it flushed more
        # often than every 500 ms and wrote 2.41 tile records per event instead of 1.78-1.85
        cfg["table.exec.mini-batch.size"] = "50000"
    if checkpoint_dir:
        cfg.update({
            "execution.checkpointing.interval": f"{checkpoint_interval_ms} ms",
            "execution.checkpointing.dir": checkpoint_dir,
            "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        })
    return cfg


def compile_job(plan: FeaturePlan, sources: dict[str, SourceBinding], tiles_topic: str, bootstrap: str,
                key_schema_id: int, value_schemas: dict[str, tuple[dict, int]], group_id: str,
                bounds: KafkaBounds = KafkaBounds(), mode: Literal["streaming", "batch"] = "streaming",
                checkpoint_dir: str | None = None, markers: bool = False, downtime_ms: int = 0) -> CompiledJob:
    """The whole features job. ``sources`` maps topic -> binding; ``value_schemas`` view -> (schema, id);
    ``markers``: streaming at parallelism 1 only (module docstring); ``downtime_ms``: how long the
    job restored from a checkpoint was stopped (``state_ttl_ms``)."""
    if markers and mode != "streaming":
        raise ValueError("markers are a streaming-job feature")
    ddl: list[str] = function_ddl()
    for src in sorted({s.topic: s for s in sources.values()}.values(), key=lambda s: s.topic):
        views = [v for v in plan.views if v.topic == src.topic]
        ddl += [source_ddl(src, bootstrap, group_id, bounds, markers), events_view_sql(src, views)]
    inserts = []
    for view in plan.views:
        schema, sid = value_schemas[view.name]
        selects = tile_selects(view, sources[view.topic], markers, downtime_ms)
        if mode == "streaming":  # a replay counts late events in its stats query instead
            selects.append(late_select(view, sources[view.topic], markers))
        for r, select in selects:
            ddl.append(tile_sink_ddl(view, r, schema, tiles_topic, bootstrap, key_schema_id, sid, markers))
            inserts.append(f"INSERT INTO {q(tile_sink_table(view, r))}\n{select}")
    return CompiledJob(tuple(ddl), tuple(inserts), job_config(mode, checkpoint_dir, markers=markers), markers)
