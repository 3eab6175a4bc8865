"""The tile record: what Flink writes to the tiles topic and the online writer stores.

One Avro value schema per view, derived from the view's plan (STYLE: "an Avro schema derived
from the IR schema"), so the tiles topic stays Confluent-framed Avro like every other topic.
Flink writes it through the ``headwater-avro`` format; the table DDL comes from this same
schema (``streamjobs.avro_ddl``), so both sides agree on the bytes by construction.

Value fields, in order::

    view, entity, resolution_ms, tile_start    the key (also the Kafka key, TILE_KEY_SCHEMA,
                                               in table column order as Flink's upsert sink writes it)
    plan_hash                                  readers reject tiles of another plan
    n_events                                   on-time events aggregated into this tile so far
    max_append_ms                              newest broker append time among them
    <column>__<kind> ...                       the IR fields of ViewPlan.fields (nullable)

``resolution_ms == 0`` marks a *progress* record: ``tile_start`` holds a source partition,
``max_append_ms`` the newest append time the job has aggregated from it and ``n_events`` the
partition's next offset (``MAX(offset) + 1``: the writer compares it with the partition's end
offset to tell a fully aggregated, idle partition). The writer turns progress into the ``as_of``
that fetches report.

``resolution_ms == -1`` (``LATE_RESOLUTION``) marks a *late count* record (streaming job only; a
replay counts late events in its manifest): ``tile_start`` holds a source partition, ``n_events``
how many events of that partition the job has dropped as late since its state began (the
lateness predicate of the tile queries, negated), ``max_append_ms`` the newest append time among
them. No record means none so far. The writer exposes the counts as a metric; they are not tiles.

An entity ``MARKER_PREFIX + <reader id>`` marks a *marker* (streaming job, parallelism 1): emitted
by a tile query itself, from a copy of one record in ``MARK_EVERY`` the job reads
(``streamjobs.compiler``), so it shares the query's aggregation and its order on the tiles topic
(one partition per query). The reader id is new at every start of the job and every restore after
a failure, so markers of two runs, or of two jobs, never pair up. ``tile_start`` holds
``-1 - partition`` (the source partition), ``n_events`` the next offset after the newest copied
record and ``max_append_ms`` the newest append time among the copies (that record's, as append
times do not decrease along a partition); the IR fields are those of no events. Once a query's
*next* marker of the same reader id for the partition is read, every tile the query emitted
before this one has been read (``online_store.markers``).

Version (monotonic writes): ``(n_events, max_append_ms)``. A tile only ever gains events, so a
newer version of a tile has strictly more of them; a replayed or duplicated tile carries the
same version and the same IR, so rewriting it is a no-op.
"""

from __future__ import annotations

from typing import Any, Mapping

from schemas import load_schema
from streamjobs import ir
from streamjobs.plan import ViewPlan

__all__ = ["TILE_KEY_SCHEMA", "HEADER_FIELDS", "PROGRESS_RESOLUTION", "tile_value_schema",
           "tile_subject", "key_subject", "is_progress", "is_late", "LATE_RESOLUTION", "tile_ir", "tile_version", "MARKER_PREFIX",
           "MARK_EVERY", "is_marker", "marker_key"]

PROGRESS_RESOLUTION = 0
LATE_RESOLUTION = -1
#: A marker's entity starts so (the source reader's id follows). Markers also carry
#: ``tile_start = -1 - partition``: a tile's start is never negative (an event is on time only
#: within the lateness of its append time), so an event whose key starts so cannot pass for one.
MARKER_PREFIX = "\x00hw-marker:"
#: One record in this many that the streaming job reads also feeds its queries' markers.
MARK_EVERY = 32
HEADER_FIELDS = ("view", "entity", "resolution_ms", "tile_start", "plan_hash", "n_events", "max_append_ms")

TILE_KEY_SCHEMA: dict = load_schema("tile_key")

_AVRO = {"int": "int", "long": "long", "float": "float", "double": "double", "timestamp": "long",
         "string": "string", "boolean": "boolean"}


def _field_type(f: ir.IRField) -> Any:
    if f.kind == "cnt":
        t: Any = "long"
    elif f.kind in ("sum", "m2"):
        t = "double"
    elif f.kind in ("min", "max"):
        t = _AVRO[f.column_type]
    elif f.kind == "last":
        t = "string"
    else:  # distinct: HW_DISTINCT yields an ARRAY<STRING> (nullable elements, as Flink types it)
        t = {"type": "array", "items": ["null", "string"]}
    return ["null", t]


def tile_value_schema(view: ViewPlan) -> dict:
    """The Avro value schema of ``view``'s tiles (record name carries the view)."""
    return {
        "type": "record", "name": f"Tile_{view.name}", "namespace": "headwater.tiles",
        "doc": f"Tile IR of view {view.name} (plan {view.plan_hash}).",
        "fields": [
            {"name": "view", "type": "string"},
            {"name": "entity", "type": "string"},
            {"name": "resolution_ms", "type": "long"},
            {"name": "tile_start", "type": "long"},
            {"name": "plan_hash", "type": "string"},
            {"name": "n_events", "type": "long"},
            {"name": "max_append_ms", "type": "long"},
            *({"name": f.name, "type": _field_type(f)} for f in view.fields),
        ],
    }


def tile_subject(tiles_topic: str, view: str) -> str:
    """TopicRecordNameStrategy-style subject: one schema per view in one topic."""
    return f"{tiles_topic}-headwater.tiles.Tile_{view}"


def key_subject(tiles_topic: str) -> str:
    return f"{tiles_topic}-key"


def is_progress(record: Mapping[str, Any]) -> bool:
    return record["resolution_ms"] == PROGRESS_RESOLUTION


def is_late(record: Mapping[str, Any]) -> bool:
    return record["resolution_ms"] == LATE_RESOLUTION


def marker_key(entity: str, tile_start: int) -> bool:
    """Whether a tile key is a marker's: the one test, for decoded records and generated-path tuples."""
    return tile_start < 0 and entity.startswith(MARKER_PREFIX)


def is_marker(record: Mapping[str, Any]) -> bool:
    return marker_key(record["entity"], record["tile_start"])


def tile_ir(view: ViewPlan, record: Mapping[str, Any]) -> dict[str, Any]:
    """The IR dict of a decoded tile record (nulls normalised by ``ir.from_row``)."""
    return ir.from_row(view.fields, record)


def tile_version(record: Mapping[str, Any]) -> tuple[int, int]:
    return int(record["n_events"]), int(record["max_append_ms"])
