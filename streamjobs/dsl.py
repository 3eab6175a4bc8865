"""Feature definitions: frozen, typed dataclasses and their validation.

Users declare a :class:`FeatureView` once; :meth:`FeatureView.features` resolves it into
normalized :class:`Feature` rows (names, ms windows, hops) that ``plan.py`` turns into a
``FeaturePlan``. Every problem raises a one-line :class:`DefinitionError` naming the view and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from streamjobs import ir, windows
from streamjobs.errors import DefinitionError
from streamjobs.naming import aggregation_name, check_identifier, latest_name

__all__ = ["Entity", "Source", "Aggregation", "LatestValue", "FeatureView", "Feature", "avro_columns"]

Duration = Union[str, int]
#: key types whose string form is the same in Flink's CAST and in Python/Arrow
ENTITY_KEY_TYPES = frozenset({"string", "int", "long"})
_AVRO_PRIMITIVES = frozenset({"int", "long", "float", "double", "string", "boolean"})


def _avro_type(t: Any) -> str:
    if isinstance(t, list):  # a union: ["null", X] is a nullable X, anything wider is opaque
        non_null = [x for x in t if x != "null"]
        return _avro_type(non_null[0]) if len(non_null) == 1 else "other"
    if isinstance(t, dict):
        if t.get("logicalType") in ("timestamp-millis", "local-timestamp-millis"):
            return "timestamp"
        if t.get("logicalType") in ("timestamp-micros", "local-timestamp-micros", "timestamp-nanos",
                                    "local-timestamp-nanos"):
            return "other"  # not epoch ms: read as a long it would sit 1000x in the future
        if t.get("type") == "enum":
            return "enum"  # refused by avro_columns: the features job's Avro reader has no enum column
        return _avro_type(t.get("type")) if isinstance(t.get("type"), str) else "other"
    return t if t in _AVRO_PRIMITIVES else "other"


def avro_columns(schema: Mapping[str, Any] | str | Path) -> dict[str, str]:
    """Column types of an Avro record schema (dict or ``.avsc`` path), in Headwater's vocabulary."""
    if not isinstance(schema, Mapping):
        try:
            schema = json.loads(Path(schema).read_text())
        except (OSError, ValueError) as exc:
            raise DefinitionError(f"cannot read Avro schema {str(schema)!r}: {exc}") from exc
    if schema.get("type") != "record" or not isinstance(schema.get("fields"), list):
        raise DefinitionError(f"Avro schema {schema.get('name')!r} is not a record with fields")
    out = {f["name"]: _avro_type(f["type"]) for f in schema["fields"]}
    enums = [n for n, t in out.items() if t == "enum"]
    if enums:
        raise DefinitionError(f"Avro schema {schema.get('name')!r}: field {enums[0]!r} is an enum, which the "
                              "features job cannot read; make it a string field")
    return out


@dataclass(frozen=True)
class Entity:
    """What features are keyed by; ``key`` is the event field holding its id (e.g. ``card_id``)."""

    name: str
    key: str

    def __post_init__(self) -> None:
        check_identifier(self.name, "entity name")


@dataclass(frozen=True)
class Source:
    """An events topic. ``columns`` (name -> type) is derived from ``schema`` when not given."""

    name: str
    topic: str
    schema: str | Path | Mapping[str, Any] | None = field(default=None, compare=False)
    event_time_field: str = "event_time"
    key_fields: tuple[str, ...] = ()
    columns: Mapping[str, str] | tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_fields", tuple(self.key_fields))
        cols = self.columns
        if cols is None and self.schema is not None:
            cols = avro_columns(self.schema)
        if cols is not None:
            pairs = tuple(cols.items() if isinstance(cols, Mapping) else cols)
            for name, typ in pairs:
                if str(name).lower().startswith("hw_"):
                    raise DefinitionError(f"source {self.name!r}: column {name!r} uses the prefix hw_, which "
                                          "Headwater keeps for its own columns; rename the field")
                if typ not in ir.COLUMN_TYPES:
                    raise DefinitionError(
                        f"source {self.name!r}: column {name!r} has type {typ!r}; use one of {', '.join(ir.COLUMN_TYPES)}"
                    )
            object.__setattr__(self, "columns", pairs)  # hashable and ordered

    def column_types(self) -> dict[str, str]:
        if self.columns is None:
            raise DefinitionError(f"source {self.name!r} has neither schema nor columns; give one so columns can be checked")
        return dict(self.columns)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Aggregation:
    """``op(column)`` over each of ``windows``; ``hop`` None picks :func:`windows.default_hop`.

    ``name``: see :func:`naming.aggregation_name` (verbatim for one window, prefix for several,
    or a ``{column}/{op}/{window}`` template).
    """

    op: str
    column: str
    windows: tuple[Duration, ...]
    hop: Duration | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.windows, (str, int, tuple, list)):
            raise DefinitionError(f"aggregation {self.op}({self.column}): windows must be a duration or a tuple "
                                  f"of them, e.g. ('1h', '24h'); got {self.windows!r}")
        ws = (self.windows,) if isinstance(self.windows, (str, int)) else tuple(self.windows)
        object.__setattr__(self, "windows", ws)
        if not ws:
            raise DefinitionError(f"aggregation {self.op}({self.column}) has no windows; give at least one, e.g. ('1h',)")
        if self.op == "latest":
            raise DefinitionError(f"use LatestValue({self.column!r}) for latest values, not Aggregation(op='latest')")
        ir.get_op(self.op)
        for w in ws:
            windows.parse_duration(w, what=f"window of {self.op}({self.column})")
        if self.hop is not None:
            windows.parse_duration(self.hop, what=f"hop of {self.op}({self.column})")


@dataclass(frozen=True)
class LatestValue:
    """The column's value on the row with the greatest (event time, partition, offset) before
    ``floor(t, tick)``, and not older than ``t - ttl`` (inclusive) when a TTL is given."""

    column: str
    ttl: Duration | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None:
            windows.parse_duration(self.ttl, what=f"ttl of latest({self.column})")


@dataclass(frozen=True)
class Feature:
    """One resolved output feature. ``window_ms`` None = unbounded (latest without TTL)."""

    name: str
    op: str
    column: str
    column_type: str
    window_ms: int | None
    hop_ms: int
    ttl_ms: int | None = None

    @property
    def window(self) -> str:
        return "unbounded" if self.window_ms is None else windows.format_duration(self.window_ms)


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity computed from one source. ``ttl`` is retention in the online store."""

    name: str
    entity: Entity
    source: Source
    aggregations: tuple[Aggregation | LatestValue, ...]
    allowed_lateness: Duration = "5m"
    allowed_future: Duration = "1m"
    ttl: Duration | None = None
    owner: str = ""
    description: str = ""
    freshness_objective: Duration = "2s"
    tick: Duration = "1s"

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        check_identifier(self.name, "view name")
        for a in self.aggregations:
            if not isinstance(a, (Aggregation, LatestValue)):
                raise DefinitionError(f"view {self.name!r}: {a!r} is neither an Aggregation nor a LatestValue")
        _ = (self.tick_ms, self.allowed_lateness_ms, self.allowed_future_ms, self.ttl_ms,
             self.freshness_objective_ms)  # fail fast

    @property
    def tick_ms(self) -> int:
        return windows.parse_duration(self.tick, what=f"view {self.name!r}: tick")

    @property
    def allowed_lateness_ms(self) -> int:
        return windows.parse_duration(self.allowed_lateness, what=f"view {self.name!r}: allowed_lateness", allow_zero=True)

    @property
    def allowed_future_ms(self) -> int:
        """How far an event's time may run ahead of its append time (``windows.on_time``)."""
        return windows.parse_duration(self.allowed_future, what=f"view {self.name!r}: allowed_future", allow_zero=True)

    @property
    def ttl_ms(self) -> int | None:
        return None if self.ttl is None else windows.parse_duration(self.ttl, what=f"view {self.name!r}: ttl")

    @property
    def freshness_objective_ms(self) -> int:
        return windows.parse_duration(self.freshness_objective, what=f"view {self.name!r}: freshness_objective")

    def _column(self, column: str, what: str) -> str:
        types = self.source.column_types()
        if column not in types:
            raise DefinitionError(
                f"view {self.name!r}: {what} uses unknown column {column!r}; "
                f"columns of source {self.source.name!r}: {', '.join(types)}"
            )
        return types[column]

    def features(self) -> tuple[Feature, ...]:
        """Resolve and validate every feature, in declaration order."""
        tick = self.tick_ms
        where = f"view {self.name!r}"
        key_type = self._column(self.entity.key, f"entity key of {self.entity.name!r}")
        if key_type not in ENTITY_KEY_TYPES:  # a double or boolean key prints differently in Flink and Python
            raise DefinitionError(f"{where}: entity key {self.entity.key!r} has type {key_type}; use a string or integer field")
        if self._column(self.source.event_time_field, "event_time_field") not in ("long", "timestamp"):
            raise DefinitionError(
                f"{where}: event_time_field {self.source.event_time_field!r} must be a long (epoch ms) or "
                "timestamp-millis column; convert micro- or nanosecond times to milliseconds upstream"
            )
        resolved: dict[int, list[Feature]] = {}
        for i, a in enumerate(self.aggregations):
            if isinstance(a, Aggregation):
                resolved[i] = self._aggregation_features(a, tick)
        hops = [f.hop_ms for fs in resolved.values() for f in fs]
        for i, a in enumerate(self.aggregations):
            if isinstance(a, LatestValue):
                ctype = self._column(a.column, f"latest({a.column})")
                if ctype not in ir.SCALAR_TYPES:
                    raise DefinitionError(f"{where}: latest({a.column}) needs a scalar column, but it is {ctype}")
                ttl = None if a.ttl is None else windows.parse_duration(a.ttl)
                if ttl is not None and ttl % tick:  # else its lower bound moves within a tick
                    raise DefinitionError(f"{where}: latest({a.column}) ttl {a.ttl} is not a multiple of the "
                                          f"tick ({tick} ms); round it to whole ticks")
                hop = windows.latest_hop(ttl, hops, tick)
                resolved[i] = [Feature(latest_name(a.column, a.name), "latest", a.column, ctype, ttl, hop, ttl)]
        out = [f for i in sorted(resolved) for f in resolved[i]]
        seen: set[str] = set()
        for f in out:
            check_identifier(f.name, f"{where}: feature name")
            if f.name in seen:
                raise DefinitionError(f"{where}: duplicate feature name {f.name!r}; give one of them name=")
            seen.add(f.name)
        return tuple(out)

    def _aggregation_features(self, a: Aggregation, tick: int) -> list[Feature]:
        where = f"view {self.name!r}"
        ctype = self._column(a.column, f"{a.op}({a.column})")
        op = ir.get_op(a.op)
        if ctype not in op.accepts:
            raise DefinitionError(
                f"{where}: {a.op}({a.column}) needs a column of type {'/'.join(sorted(op.accepts))}, "
                f"but {a.column!r} is {ctype}; use count, last or distinct_count"
            )
        out = []
        for w in a.windows:
            w_ms = windows.parse_duration(w, what=f"{where}: window of {a.op}({a.column})")
            at = f"{where}, {a.op}({a.column}) over {w}"
            windows.check_window(w_ms, tick, tick, where=at)  # window vs tick first, with context
            hop = windows.default_hop(w_ms, tick_ms=tick) if a.hop is None else windows.parse_duration(a.hop)
            windows.check_window(w_ms, hop, tick, where=at)
            out.append(Feature(aggregation_name(a.column, a.op, w_ms, len(a.windows), a.name), a.op, a.column, ctype, w_ms, hop))
        return out

    def ladder(self) -> windows.Ladder:
        """The view's resolutions: tick + every hop (+ default rungs filling the chain)."""
        pairs = [(f.window_ms if f.op != "latest" else None, f.hop_ms) for f in self.features()]
        return windows.build_ladder(self.tick_ms, pairs)

    def validate(self) -> None:
        """Raise DefinitionError on the first problem; return None when the view is usable."""
        if not self.aggregations:
            raise DefinitionError(f"view {self.name!r} has no aggregations; add at least one")
        self.ladder()
