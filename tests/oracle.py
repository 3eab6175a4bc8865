"""Brute-force reference for the window semantics, straight from DESIGN.md, plus an in-memory tiler.

``oracle_values`` is the judge: no tiles, no ladder, no ``streamjobs`` code, just the rules
(lateness, ``floor(t - W, h) <= event_time < floor(t, tau)``, latest with TTL, NULLs ignored)
applied to raw events with plain loops and ``statistics``. Later suites (Flink, Redis, backfill)
reuse it with the same signature.

``MemoryTiler`` is *not* a reference: it is the system path (``ir.tile_from_events`` per ladder
resolution, then ``windows.window_tiles`` + ``ir.merge_many`` + ``ir.finalize``) that the online
reader takes. It lives here because the conformance and property suites share it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "OracleFeature",
    "ViewSpec",
    "view_spec_from_case",
    "view_spec_from_plan",
    "view_spec_from_view",
    "infer_column_types",
    "on_time_events",
    "oracle_values",
    "MemoryTiler",
    "feature_view_from_case",
]


@dataclass(frozen=True)
class OracleFeature:
    name: str
    op: str
    column: str
    window_ms: int | None  # None: unbounded (latest without TTL)
    hop_ms: int | None
    ttl_ms: int | None = None


#: the DSL's default ``allowed_future`` (a case's view may set ``allowed_future_ms``)
DEFAULT_FUTURE_MS = 60_000


@dataclass(frozen=True)
class ViewSpec:
    entity_field: str
    allowed_lateness_ms: int
    tick_ms: int
    features: tuple[OracleFeature, ...]
    column_types: Mapping[str, str]  # "double" values compare as floats, "long" as ints, else as is
    allowed_future_ms: int = DEFAULT_FUTURE_MS


def infer_column_types(events: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> dict[str, str]:
    """double if any float, long if all ints, string otherwise (conformance JSON carries no schema)."""
    out = {}
    evs = list(events)
    for c in columns:
        vals = [e.get(c) for e in evs if e.get(c) is not None]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[c] = "long" if all(isinstance(v, int) for v in vals) else "double"
        else:
            out[c] = "string"
    return out


def view_spec_from_case(case: Mapping[str, Any]) -> ViewSpec:
    """From a conformance JSON case (``tick_ms``, ``view``, ``events``)."""
    view = case["view"]
    feats = tuple(
        OracleFeature(a["name"], a["op"], a["column"], a.get("window_ms"), a.get("hop_ms"), a.get("ttl_ms"))
        for a in view["aggregations"]
    )
    types = infer_column_types(case["events"], {f.column for f in feats})
    return ViewSpec(view["entity"], int(view["allowed_lateness_ms"]), int(case["tick_ms"]), feats, types,
                    int(view.get("allowed_future_ms", DEFAULT_FUTURE_MS)))


def view_spec_from_plan(view_plan: Any) -> ViewSpec:
    """From a ``streamjobs.plan.ViewPlan`` (hops come from the plan; semantics do not)."""
    feats = tuple(OracleFeature(f.name, f.op, f.column, f.window_ms, f.hop_ms, f.ttl_ms) for f in view_plan.features)
    types = {f.column: f.column_type for f in view_plan.features}
    return ViewSpec(view_plan.entity_key, view_plan.allowed_lateness_ms, view_plan.tick_ms, feats, types,
                    view_plan.allowed_future_ms)


def view_spec_from_view(view: Any) -> ViewSpec:
    """From a ``streamjobs.FeatureView`` (through its plan, for default hops and names)."""
    from streamjobs.plan import build_view_plan

    return view_spec_from_plan(build_view_plan(view))


def on_time_events(events: Iterable[Mapping[str, Any]], allowed_lateness_ms: int,
                   allowed_future_ms: int = DEFAULT_FUTURE_MS) -> list[Mapping[str, Any]]:
    """Drop iff ``append_time - event_time > allowed_lateness`` (DESIGN) or ``event_time -
    append_time > allowed_future`` (Headwater's bound on events ahead of the clock); equal is kept."""
    return [e for e in events if e["append_time_ms"] - e["event_time_ms"] <= allowed_lateness_ms
            and e["event_time_ms"] - e["append_time_ms"] <= allowed_future_ms]


def _typed(v: Any, column_type: str) -> Any:
    if column_type in ("double", "float"):
        return float(v)
    if column_type in ("long", "int", "timestamp"):
        return int(v)
    return v


def _order(e: Mapping[str, Any]) -> tuple[int, int, int]:
    return (e["event_time_ms"], e["partition"], e["offset"])


def oracle_values(view_spec: ViewSpec, events: Iterable[Mapping[str, Any]], entity: Any, t_ms: int) -> dict[str, Any]:
    """Every feature of ``view_spec`` for ``entity`` at ``t_ms``, computed from raw events."""
    tick = view_spec.tick_ms
    end = (t_ms // tick) * tick
    mine = [e for e in on_time_events(events, view_spec.allowed_lateness_ms, view_spec.allowed_future_ms) if e[view_spec.entity_field] == entity]
    out: dict[str, Any] = {}
    for f in view_spec.features:
        ctype = view_spec.column_types.get(f.column, "string")
        if f.op == "latest":
            lo = -math.inf if f.ttl_ms is None else t_ms - f.ttl_ms
            rows = [e for e in mine if lo <= e["event_time_ms"] < end and e.get(f.column) is not None]
        else:
            assert f.window_ms is not None and f.hop_ms is not None
            start = ((t_ms - f.window_ms) // f.hop_ms) * f.hop_ms
            rows = [e for e in mine if start <= e["event_time_ms"] < end and e.get(f.column) is not None]
        vals = [_typed(e[f.column], ctype) for e in rows]
        if f.op == "count":
            out[f.name] = len(vals)
        elif f.op == "sum":
            out[f.name] = math.fsum(float(v) for v in vals)
        elif f.op == "mean":
            out[f.name] = math.fsum(float(v) for v in vals) / len(vals) if vals else None
        elif f.op == "min":
            out[f.name] = min(vals) if vals else None
        elif f.op == "max":
            out[f.name] = max(vals) if vals else None
        elif f.op in ("last", "latest"):
            out[f.name] = _typed(max(rows, key=_order)[f.column], ctype) if rows else None
        elif f.op == "stddev":
            out[f.name] = statistics.pstdev([float(v) for v in vals]) if vals else None
        elif f.op == "distinct_count":
            out[f.name] = len(set(vals)) or None  # DESIGN: only count and sum are 0 on no data
        else:
            raise ValueError(f"oracle does not know op {f.op!r}")
    return out


# --------------------------------------------------------------------------- the system path, in memory

def feature_view_from_case(case: Mapping[str, Any], *, event_time_field: str = "event_time_ms") -> Any:
    """A ``FeatureView`` equivalent to a conformance case (one Aggregation per vector row, names verbatim)."""
    from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source

    spec = view_spec_from_case(case)
    columns = dict(spec.column_types)
    columns.setdefault(spec.entity_field, "string")
    columns[event_time_field] = "long"
    aggs: list[Any] = []
    for f in spec.features:
        if f.op == "latest":
            aggs.append(LatestValue(f.column, ttl=f.ttl_ms, name=f.name))
        else:
            aggs.append(Aggregation(f.op, f.column, (f.window_ms,), hop=f.hop_ms, name=f.name))
    return FeatureView(
        name=str(case.get("name", "case")),
        entity=Entity("entity", spec.entity_field),
        source=Source("events", "events", event_time_field=event_time_field, columns=columns),
        aggregations=tuple(aggs),
        allowed_lateness=spec.allowed_lateness_ms,
        allowed_future=spec.allowed_future_ms,
        tick=spec.tick_ms,
    )


class MemoryTiler:
    """Tiles every ladder resolution from events, answers queries like the online reader."""

    def __init__(self, view_plan: Any) -> None:
        self.plan = view_plan
        self.tiles: dict[Any, dict[tuple[int, int], dict[str, Any]]] = defaultdict(dict)
        self.dropped = 0

    def ingest(self, events: Sequence[Mapping[str, Any]], *, one_by_one: bool = False) -> None:
        """Upsert tiles. ``one_by_one`` applies ``ir.update`` per event in the given (arrival) order;
        otherwise each touched tile gets one vectorised ``ir.update`` with all of its new events."""
        from streamjobs import windows

        p = self.plan
        kept = [e for e in events if windows.on_time(e["event_time_ms"], e["append_time_ms"], p.allowed_lateness_ms,
                                                     p.allowed_future_ms)]
        self.dropped += len(events) - len(kept)
        groups: dict[tuple[Any, int, int], list[Mapping[str, Any]]] = defaultdict(list)
        for e in kept:
            for r in p.ladder:
                key = (e[p.entity_key], r, windows.tile_start(e["event_time_ms"], r))
                if one_by_one:
                    self._update(key, [e])
                else:
                    groups[key].append(e)
        for key, evs in groups.items():
            self._update(key, evs)

    def _update(self, key: tuple[Any, int, int], evs: Sequence[Mapping[str, Any]]) -> None:
        from streamjobs import ir

        entity, r, start = key
        fields = self.plan.fields
        cols = {f.column: np.array([e.get(f.column) for e in evs], dtype=object) for f in fields}
        store = self.tiles[entity]
        old = store.get((r, start), ir.empty_ir(fields))
        store[(r, start)] = ir.update(
            old, fields, cols,
            [e["event_time_ms"] for e in evs], [e["partition"] for e in evs], [e["offset"] for e in evs],
        )

    def query(self, entity: Any, t_ms: int, *, as_of_ms: int | None = None) -> dict[str, Any]:
        from streamjobs import ir, windows

        p = self.plan
        store = self.tiles.get(entity, {})
        out: dict[str, Any] = {}
        for g in p.groups:
            since = min((s for _, s in store), default=t_ms) if g.window_ms is None else None
            keys = windows.window_tiles(t_ms, g.window_ms, g.hop_ms, p.ladder, p.tick_ms, as_of_ms=as_of_ms, since_ms=since)
            merged = ir.merge_many({k: store[k] for k in keys if k in store}, g.fields)
            out.update(ir.finalize(g.features, merged, t_ms=t_ms))
        return out
