"""The exact as_of rule: what a tile query's markers prove about the tiles already read.

A marker (``online_store.tiles``) comes out of its query's own aggregation, from a copied record
that the query saw after every event before it in its source partition. The query emits all of
one flush before any of the next, its sink writes one tiles-topic partition through an idempotent
producer, and a key appears at most once per flush. So once the writer has read a query's marker
for a source partition *and the one after it*, it has read every tile that query emitted before
the first: everything aggregated from that partition up to the first marker's copied record
(offset ``n_events - 1``; ``max_append_ms`` is the newest append time among the copies, which
errs low if append times ever went back). The progress published is one millisecond below that
append time: later records of the same producer batch share it and need not be read yet. Once that holds for every resolution of
a view, the view's progress for the partition can rise to those values as soon as the tiles read
so far are in Redis; no waiting on the clock (the settle rule in ``online_store.writer`` remains for
partitions whose events stopped before a second marker).

Markers carry the id of the source reader that made them (random, new at every job start and
every restore after a failure), and only two markers of one id pair up: a restored job's markers
start new pairs, so a flush cut short by a crash is never confirmed by the next run's markers, and
two jobs writing one tiles topic never confirm each other. A confirmation stays true across runs
(its tiles are in Redis), so per (view, resolution, partition) the writer keeps the highest of any
run. Still not covered: after a
failed send the Kafka producer may go on writing later records (an idempotent producer keeps the
order of what it writes, not the absence of gaps); the Flink job then fails and replays from its
checkpoint, and until it has, a later marker pair can vouch for the tiles that send lost.
"""

from __future__ import annotations

from typing import Any

from streamjobs.plan import FeaturePlan

__all__ = ["MarkerTracker"]


class MarkerTracker:
    """Per (view, resolution, source partition, reader id) the last two markers; per (view, resolution,
    partition) the highest confirmed; per (view, partition) the minimum over the view's resolutions."""

    def __init__(self, plan: FeaturePlan) -> None:
        self._views = {v.name: v for v in plan.views}
        # (view, resolution, partition, marker entity = reader id) -> latest marker: (next_offset, append_ms)
        self._last: dict[tuple[str, int, int, str], tuple[int, int]] = {}
        self._confirmed: dict[tuple[str, int, int], tuple[int, int]] = {}
        self._sent: dict[tuple[str, int], tuple[int, int]] = {}
        self._dirty: set[tuple[str, int]] = set()

    def add(self, view: str, resolution_ms: int, partition: int, reader: str, next_offset: int, append_ms: int) -> None:
        """One marker, in tiles-topic order. Unknown views and resolutions are ignored."""
        v = self._views.get(view)
        if v is None or resolution_ms not in v.ladder:
            return
        key, new = (view, resolution_ms, partition, reader), (next_offset, append_ms)
        last = self._last.get(key)
        self._last[key] = max(new, last) if last is not None else new
        if last is None or next_offset <= last[0]:  # the first of its reader, or one read again
            return
        c = (view, resolution_ms, partition)
        if last > self._confirmed.get(c, (-1, -1)):
            self._confirmed[c] = last
            self._dirty.add((view, partition))

    def confirmed(self) -> list[dict[str, Any]]:
        """Progress records (the shape the Flink job writes) for every (view, partition) whose
        confirmed progress rose since the last call."""
        out = []
        for view, p in sorted(self._dirty):
            v = self._views[view]
            got = [self._confirmed.get((view, r, p)) for r in v.ladder]
            if any(g is None for g in got):
                continue
            best = (min(g[0] for g in got), min(g[1] for g in got))  # type: ignore[index]
            if best == self._sent.get((view, p)):
                continue
            self._sent[(view, p)] = best
            # as_of is inclusive (every append at or before it is in) and LogAppendTime stamps a whole
            # producer batch with one time: records after the copied one may share its ms, unread
            out.append({"view": view, "plan_hash": v.plan_hash, "entity": "", "resolution_ms": 0,
                        "tile_start": p, "n_events": best[0], "max_append_ms": best[1] - 1})
        self._dirty.clear()
        return out
