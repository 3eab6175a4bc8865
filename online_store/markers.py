"""The exact as_of rule: what a tile query's markers prove about the tiles already read.

A marker (``online_store.tiles``) comes out of its query's own aggregation, from a copied record
that the query saw after every event before it in its source partition. The query emits all of
one flush before any of the next, its sink writes one tiles-topic partition through an idempotent
producer, and a key appears at most once per flush. So once the writer has read a query's marker
for a source partition *and the one after it*, it has read every tile that query emitted before
the first: everything aggregated from that partition up to the first marker's copied record
(offset ``n_events - 1``, appended at ``max_append_ms``). Once that holds for every resolution of
a view, the view's progress for the partition can rise to those values as soon as the tiles read
so far are in Redis; no waiting on the clock (the settle rule in ``online_store.writer`` remains for
partitions whose events stopped before a second marker).

A marker lower than the last one read for its key means the job restarted from a checkpoint: the
pair starts over. One case stays inexact: a job that died between a flush's marker and the rest of
that flush, restarted with a first marker *above* the last one read, lets that marker confirm
tiles the new run re-emits only in its first flush, i.e. at most one flush early, once.
"""

from __future__ import annotations

from typing import Any

from streamjobs.plan import FeaturePlan

__all__ = ["MarkerTracker"]


class MarkerTracker:
    """Per (view, resolution, source partition) the last two markers; per (view, partition) the
    progress they confirm across all of the view's resolutions."""

    def __init__(self, plan: FeaturePlan) -> None:
        self._views = {v.name: v for v in plan.views}
        # (view, resolution, partition) -> (previous, latest), each (next_offset, append_ms) or None
        self._pair: dict[tuple[str, int, int], tuple[tuple[int, int] | None, tuple[int, int]]] = {}
        self._sent: dict[tuple[str, int], tuple[int, int]] = {}
        self._dirty: set[tuple[str, int]] = set()

    def add(self, view: str, resolution_ms: int, partition: int, next_offset: int, append_ms: int) -> None:
        """One marker, in tiles-topic order. Unknown views and resolutions are ignored."""
        v = self._views.get(view)
        if v is None or resolution_ms not in v.ladder:
            return
        key, new = (view, resolution_ms, partition), (next_offset, append_ms)
        pair = self._pair.get(key)
        if pair is None or next_offset < pair[1][0]:  # first, or the job restarted: start over
            self._pair[key] = (None, new)
        elif next_offset > pair[1][0]:  # the same value again is a re-read, not a newer marker
            self._pair[key] = (pair[1], new)
            self._dirty.add((view, partition))

    def confirmed(self) -> list[dict[str, Any]]:
        """Progress records (the shape the Flink job writes) for every (view, partition) whose
        confirmed progress rose since the last call."""
        out = []
        for view, p in sorted(self._dirty):
            v = self._views[view]
            got = [self._pair.get((view, r, p), (None, None))[0] for r in v.ladder]
            if any(g is None for g in got):
                continue
            best = (min(g[0] for g in got), min(g[1] for g in got))  # type: ignore[index]
            if best == self._sent.get((view, p)):
                continue
            self._sent[(view, p)] = best
            out.append({"view": view, "plan_hash": v.plan_hash, "entity": "", "resolution_ms": 0,
                        "tile_start": p, "n_events": best[0], "max_append_ms": best[1]})
        self._dirty.clear()
        return out
