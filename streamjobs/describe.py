"""Human-readable rendering of a plan (``headwater features plan``)."""

from __future__ import annotations

from streamjobs.plan import FeaturePlan
from streamjobs.windows import format_duration

__all__ = ["describe_plan"]


def describe_plan(plan: FeaturePlan) -> str:
    lines = [f"plan {plan.plan_hash}: {len(plan.views)} view(s)"]
    for v in plan.views:
        ladder = ", ".join(format_duration(r) for r in v.ladder)
        lines += [
            "",
            f"view {v.name}  (entity {v.entity} by `{v.entity_key}`, source topic {v.topic}, "
            f"event time `{v.event_time_field}`)",
            f"  tick {format_duration(v.tick_ms)}, allowed lateness {format_duration(v.allowed_lateness_ms)}, "
            f"allowed future {format_duration(v.allowed_future_ms)}, plan hash {v.plan_hash}",
            f"  resolutions (one GROUP BY each): {ladder}",
            f"  IR fields per tile: {', '.join(f.name for f in v.fields)}",
            f"  {'feature':34} {'op':15} {'column':12} {'window':>9} {'hop':>6}",
        ]
        for f in v.features:
            hop = format_duration(f.hop_ms)
            lines.append(f"  {f.name:34} {f.op:15} {f.column:12} {f.window:>9} {hop:>6}")
    return "\n".join(lines)
