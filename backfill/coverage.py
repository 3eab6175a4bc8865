"""Which spine rows a replay can answer. A feature's window must lie inside the event times the
replay holds every event of (its manifest's ``covered``, see ``replay.bounds.TopicRange.covered_ms``):
outside it a count reads 0 and a sum 0.0, exactly like an entity without events, so a training
set built past the replay's range would be silently wrong."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from backfill.errors import BackfillError
from streamjobs import windows
from streamjobs.plan import Feature, ViewPlan

__all__ = ["CoverageError", "uncovered", "describe"]


class CoverageError(BackfillError):
    """Spine rows need events the replay did not read; ``detail`` says which, without the fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(f"{detail}: {fix}")
        self.detail = detail


def needed(view: ViewPlan, f: Feature, t: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Per row, the event times ``[lo, hi)`` the feature reads (DESIGN: ``floor(t - W, h) <= e <
    floor(t, tick)``); lo None for a latest value without TTL (no lower bound)."""
    hi = windows.tile_start(t, view.tick_ms)
    if f.window_ms is None:
        return None, hi
    return windows.tile_start(t - f.window_ms, f.hop_ms), hi


def uncovered(view: ViewPlan, f: Feature, t: np.ndarray, covered: tuple[int | None, int | None] | None) -> np.ndarray:
    """True where the row's window reaches outside ``covered`` (``(lo, hi)`` ms, None for an open
    side; None itself: the replay covers no range)."""
    if covered is None:
        return np.ones(len(t), dtype=bool)
    lo, hi = needed(view, f, np.asarray(t, dtype=np.int64))
    out = np.zeros(len(t), dtype=bool)
    c_lo, c_hi = covered
    if c_lo is not None:
        out |= np.ones(len(t), dtype=bool) if lo is None else lo < c_lo
    if c_hi is not None:
        out |= hi > c_hi
    return out


def _iso(ms: int | None) -> str:
    if ms is None:
        return "open"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def describe(view: ViewPlan, feats: Sequence[Feature], t: np.ndarray, covered) -> str:
    """What the replay holds and what the uncovered rows would need, for the one-line message."""
    have = "no complete range" if covered is None else f"[{_iso(covered[0])}, {_iso(covered[1])})"
    los, his = [], []
    for f in feats:
        lo, hi = needed(view, f, np.asarray(t, dtype=np.int64))
        los.append(None if lo is None else int(lo.min()))
        his.append(int(hi.max()))
    need_lo = None if any(x is None for x in los) else min(los)
    return (f"view {view.name!r}: the replay holds every event of {have}, these rows need "
            f"[{_iso(need_lo)}, {_iso(max(his))})")
