"""FeatureView definitions -> a normalized, frozen FeaturePlan with a version hash.

The plan is what every engine reads: the compiler emits one tile aggregation per ladder
resolution with ``fields`` as its columns; the reader and the backfill walk ``groups`` (one per
distinct (window, hop)), merge tiles with ``ir.merge_many`` and ``ir.finalize``. The
``plan_hash`` goes into every tile key and Parquet manifest so a reader rejects tiles written
under other semantics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamjobs import ir
from streamjobs.dsl import Feature, FeatureView
from streamjobs.errors import DefinitionError

__all__ = ["Feature", "WindowGroup", "ViewPlan", "FeatureRef", "FeaturePlan", "build_plan", "build_view_plan",
           "PLAN_FORMAT"]

#: Bump when the meaning of a hashed field changes, so every old tile is rejected.
PLAN_FORMAT = "headwater-plan/1"
_HASH_CHARS = 16


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


@dataclass(frozen=True)
class WindowGroup:
    """Features read from the same tiles: one ``windows.window_tiles`` call, one ``ir.merge_many``.

    ``window_ms`` None = unbounded (latest without TTL): read from the entity's oldest tile.
    """

    window_ms: int | None
    hop_ms: int
    features: tuple[Feature, ...]
    fields: tuple[ir.IRField, ...]


@dataclass(frozen=True)
class ViewPlan:
    """Everything semantic about one view, normalized to ms ints and deterministic orders."""

    name: str
    entity: str
    entity_key: str
    source: str
    topic: str
    event_time_field: str
    tick_ms: int
    allowed_lateness_ms: int
    allowed_future_ms: int
    ttl_ms: int | None
    ladder: tuple[int, ...]
    fields: tuple[ir.IRField, ...]
    features: tuple[Feature, ...]
    groups: tuple[WindowGroup, ...]
    longest_window_ms: int
    has_unbounded: bool
    plan_hash: str

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise DefinitionError(
            f"view {self.name!r} has no feature {name!r}; it has: {', '.join(f.name for f in self.features)}"
        )

    @property
    def columns(self) -> dict[str, str]:
        """Aggregated columns and their types (the compiler also needs entity key and event time)."""
        return {f.column: f.column_type for f in self.fields}


@dataclass(frozen=True)
class FeatureRef:
    view: str
    feature: Feature

    @property
    def ref(self) -> str:
        return f"{self.view}:{self.feature.name}"


@dataclass(frozen=True)
class FeaturePlan:
    views: tuple[ViewPlan, ...]
    plan_hash: str

    def view(self, name: str) -> ViewPlan:
        for v in self.views:
            if v.name == name:
                return v
        raise DefinitionError(f"no view {name!r} in the plan; views: {', '.join(v.name for v in self.views)}")

    def features_by_ref(self, refs: str | Iterable[str]) -> tuple[FeatureRef, ...]:
        """Resolve ``"view:feature"`` and ``"view:*"`` refs, in the given order, without duplicates."""
        out: dict[str, FeatureRef] = {}
        for ref in [refs] if isinstance(refs, str) else list(refs):
            view_name, sep, feat = ref.partition(":")
            if not sep or not view_name or not feat:
                raise DefinitionError(f"feature ref {ref!r} is not 'view:feature' or 'view:*'")
            v = self.view(view_name)
            for f in v.features if feat == "*" else (v.feature(feat),):
                out.setdefault(f"{v.name}:{f.name}", FeatureRef(v.name, f))
        return tuple(out.values())


def _groups(features: tuple[Feature, ...], fields: tuple[ir.IRField, ...]) -> tuple[WindowGroup, ...]:
    keys: dict[tuple[int | None, int], list[Feature]] = {}
    for f in features:
        keys.setdefault((f.window_ms, f.hop_ms), []).append(f)
    out = []
    for (w, h), fs in sorted(keys.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1])):
        names = {g.name for g in ir.ir_fields((f.op, f.column, f.column_type) for f in fs)}
        out.append(WindowGroup(w, h, tuple(fs), tuple(x for x in fields if x.name in names)))
    return tuple(out)


def build_view_plan(view: FeatureView) -> ViewPlan:
    """Validate one view and normalize it. Owner, description, freshness objective and the store
    TTL are not hashed: they change no value, so tiles survive edits to them."""
    view.validate()
    features = view.features()
    ladder = view.ladder().resolutions
    fields = ir.ir_fields((f.op, f.column, f.column_type) for f in features)
    semantic = {
        "format": PLAN_FORMAT,
        "view": view.name,
        "entity": view.entity.name,
        "entity_key": view.entity.key,
        "topic": view.source.topic,
        "event_time_field": view.source.event_time_field,
        "tick_ms": view.tick_ms,
        "allowed_lateness_ms": view.allowed_lateness_ms,
        "allowed_future_ms": view.allowed_future_ms,
        "ladder": list(ladder),
        "fields": [[f.name, f.kind, f.column_type] for f in fields],
        "features": [[f.name, f.op, f.column, f.column_type, f.window_ms, f.hop_ms, f.ttl_ms] for f in features],
    }
    finite = [f.window_ms for f in features if f.window_ms is not None]
    return ViewPlan(
        name=view.name,
        entity=view.entity.name,
        entity_key=view.entity.key,
        source=view.source.name,
        topic=view.source.topic,
        event_time_field=view.source.event_time_field,
        tick_ms=view.tick_ms,
        allowed_lateness_ms=view.allowed_lateness_ms,
        allowed_future_ms=view.allowed_future_ms,
        ttl_ms=view.ttl_ms,
        ladder=ladder,
        fields=fields,
        features=features,
        groups=_groups(features, fields),
        longest_window_ms=max(finite, default=0),
        has_unbounded=any(f.window_ms is None for f in features),
        plan_hash=_digest(semantic),
    )


def build_plan(views: FeatureView | Iterable[FeatureView]) -> FeaturePlan:
    """Validate and normalize views (sorted by name); duplicate view names raise."""
    vs = [views] if isinstance(views, FeatureView) else list(views)
    plans = sorted((build_view_plan(v) for v in vs), key=lambda p: p.name)
    names = [p.name for p in plans]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DefinitionError(f"duplicate view name {dupes[0]!r}; view names must be unique in a repository")
    by_topic: dict[str, ViewPlan] = {}
    for p in plans:  # one job reads a topic once: its tile columns and `last` keys are per event-time field
        first = by_topic.setdefault(p.topic, p)
        if first.event_time_field != p.event_time_field:
            raise DefinitionError(
                f"views {first.name!r} and {p.name!r} read topic {p.topic!r} with different event-time fields "
                f"({first.event_time_field!r}, {p.event_time_field!r}); give them the same event_time_field, "
                "or read the other time from its own topic")
    return FeaturePlan(tuple(plans), _digest([PLAN_FORMAT, [[p.name, p.plan_hash] for p in plans]]))
