"""Window arithmetic: durations, the resolution ladder, and tile decomposition of a window.

This module is the one definition of *which events a feature sees* (DESIGN.md, "Window
semantics"). The Flink compiler, the online reader, the backfill and the parity checker all call
it; nobody else floors timestamps.

Invariants (all times are epoch milliseconds, Python ints or numpy int64):

* ``tile_start(ts, r) = floor(ts / r) * r``; tiles of resolution ``r`` are ``[s, s + r)``.
* A ladder is strictly ascending, starts at the tick ``tau`` and each rung divides the next, so a
  tile of one rung is the disjoint union of tiles of every finer rung.
* The value at query time ``t`` for window ``W`` with hop ``h`` merges the events with
  ``floor(t - W, h) <= event_time < floor(t, tau)``, read as the greedy cover of that range: at
  each point the coarsest rung that is aligned there and fits. The start is ``h``-aligned, so the
  body climbs from ``h`` tiles to the coarsest rung that fits whole and back down; the head is
  finer tiles up to ``floor(t, tau)``. At most ``W/h`` body tiles, usually far fewer (the fraud
  card view's 1 h window with a 1 min hop reads ~21 tiles, not ~67): fewer fields fetched and
  merged, the same events, so the same values (the merge is associative; the fold order is the
  canonical ``(resolution, tile_start)`` order online and offline alike).

Imports only the standard library, numpy and ``streamjobs.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from streamjobs.errors import DefinitionError

__all__ = [
    "SECOND_MS",
    "MINUTE_MS",
    "HOUR_MS",
    "DAY_MS",
    "DEFAULT_TICK_MS",
    "DEFAULT_LADDER_MS",
    "TARGET_TILES_PER_WINDOW",
    "parse_duration",
    "format_duration",
    "Ladder",
    "build_ladder",
    "default_hop", "read_bound",
    "latest_hop",
    "check_window",
    "tile_start",
    "window_bounds",
    "cover",
    "window_tiles",
    "window_tile_ranges",
    "check_cover",
    "on_time",
    "on_time_sql",
    "tile_start_sql",
    "LatestSql",
    "latest_value_sql",
]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DEFAULT_TICK_MS = SECOND_MS
#: The default ladder: 1s, 10s, 1m, 10m, 1h, 1d.
DEFAULT_LADDER_MS: tuple[int, ...] = (SECOND_MS, 10 * SECOND_MS, MINUTE_MS, 10 * MINUTE_MS, HOUR_MS, DAY_MS)
#: Target (not a rule) for tiles per window: ``W / h`` picks the default hop, ``read_bound`` adds rungs.
TARGET_TILES_PER_WINDOW = 64

_UNITS: tuple[tuple[str, int], ...] = (("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS), ("ms", 1))
_UNIT_MS = dict(_UNITS)
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: str | int, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Parse ``"500ms" | "1s" | "10m" | "1h" | "1d"`` or an int (already ms) to int milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, str, np.integer)):
        raise DefinitionError(f"{what} {value!r} is not a duration; write e.g. '500ms', '10s', '1m', '1h', '1d' or int ms")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise DefinitionError(f"{what} {value!r} is not a duration; write e.g. '500ms', '10s', '1m', '1h', '1d' or int ms")
        ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        ms = int(value)
    if ms < 0 or (ms == 0 and not allow_zero):
        raise DefinitionError(f"{what} {value!r} must be {'>= 0' if allow_zero else '> 0'} ms")
    return ms


def format_duration(ms: int) -> str:
    """Canonical compact rendering: the largest unit that divides exactly (3600000 -> '1h')."""
    ms = int(ms)
    if ms == 0:
        return "0ms"
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: 1 ms divides everything")


@dataclass(frozen=True)
class Ladder:
    """Resolutions of one view, finest first; ``resolutions[0]`` is the tick.

    Invariant (checked on construction): strictly ascending and each rung divides the next.
    """

    resolutions: tuple[int, ...]

    def __post_init__(self) -> None:
        rs = tuple(int(r) for r in self.resolutions)
        object.__setattr__(self, "resolutions", rs)
        if not rs or rs[0] <= 0:
            raise DefinitionError(f"ladder {rs!r} must be non-empty with positive resolutions")
        for finer, coarser in zip(rs, rs[1:]):
            if coarser <= finer or coarser % finer:
                raise DefinitionError(
                    f"ladder {_fmt(rs)} is not a divisibility chain: {format_duration(finer)} does not divide "
                    f"{format_duration(coarser)}; make each resolution divide the next coarser one"
                )

    @property
    def tick_ms(self) -> int:
        return self.resolutions[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.resolutions)

    def __len__(self) -> int:
        return len(self.resolutions)

    def __contains__(self, r: object) -> bool:
        return r in self.resolutions


def _fmt(rs: Iterable[int]) -> str:
    return ", ".join(format_duration(r) for r in rs)


def _label(window_ms: int | None, hop_ms: int) -> str:
    w = "unbounded" if window_ms is None else format_duration(window_ms)
    return f"window {w} with hop {format_duration(hop_ms)}"


def check_window(window_ms: int | None, hop_ms: int, tick_ms: int, *, where: str = "") -> None:
    """Raise a one-line DefinitionError unless ``tick | hop``, ``tick | W`` and ``hop | W``."""
    pre = f"{where}: " if where else ""
    if hop_ms <= 0 or tick_ms <= 0:
        raise DefinitionError(f"{pre}hop and tick must be > 0 ms")
    if hop_ms % tick_ms:
        raise DefinitionError(
            f"{pre}hop {format_duration(hop_ms)} is not a multiple of the tick {format_duration(tick_ms)}; "
            "pick a hop that the tick divides"
        )
    if window_ms is None:
        return
    if window_ms % tick_ms:
        raise DefinitionError(
            f"{pre}window {format_duration(window_ms)} is not a multiple of the tick {format_duration(tick_ms)}; "
            "round the window to whole ticks"
        )
    if window_ms % hop_ms:
        raise DefinitionError(
            f"{pre}hop {format_duration(hop_ms)} does not divide window {format_duration(window_ms)}; "
            "pick a hop that divides the window (or omit hop for the default)"
        )


def default_hop(
    window_ms: int, ladder: Sequence[int] | Ladder = DEFAULT_LADDER_MS, *, tick_ms: int = DEFAULT_TICK_MS
) -> int:
    """Smallest rung of ``ladder`` (or the tick) that divides W with ``W/h <= 64``.

    Default ladder: 1m->1s, 10m->10s, 1h->1m, 24h->1h, 7d->1d. When no rung meets the target, the
    coarsest rung that divides W (fewest tiles). Only rungs that are multiples of the tick count.
    """
    rungs = ladder.resolutions if isinstance(ladder, Ladder) else tuple(ladder)
    candidates = sorted({tick_ms, *(int(r) for r in rungs if r > tick_ms and r % tick_ms == 0)})
    candidates = [r for r in candidates if window_ms % r == 0]
    if not candidates:
        raise DefinitionError(
            f"window {format_duration(window_ms)} is not a multiple of the tick {format_duration(tick_ms)}; "
            "round the window to whole ticks"
        )
    for r in candidates:
        if window_ms // r <= TARGET_TILES_PER_WINDOW:
            return r
    return candidates[-1]


def latest_hop(ttl_ms: int | None, hops: Iterable[int], tick_ms: int = DEFAULT_TICK_MS) -> int:
    """Hop for a latest-value feature, chosen to keep the view's ladder a chain.

    Any hop gives exact values: the reader merges ``[floor(t - ttl, h), floor(t, tau))``, a superset,
    and finalize checks the winner's own event time against ``t - ttl``. So pick the smallest
    default rung compatible with every hop (divides it or is divided by it) with
    ``ceil(ttl / h) <= 64``; without TTL, the coarsest compatible rung (the read starts at the
    entity's oldest tile).
    """
    hs = {tick_ms, *hops}
    rungs = sorted({tick_ms, *(d for d in DEFAULT_LADDER_MS if d > tick_ms and d % tick_ms == 0)})
    compatible = [r for r in rungs if all(r % h == 0 or h % r == 0 for h in hs)]
    if ttl_ms is None:
        return compatible[-1]
    for r in compatible:
        if -(-ttl_ms // r) <= TARGET_TILES_PER_WINDOW:
            return r
    return compatible[-1]


def build_ladder(tick_ms: int, windows: Iterable[tuple[int | None, int]], *, fill: bool = True) -> Ladder:
    """The ladder of a view: the tick plus every hop its windows use.

    ``windows`` holds ``(window_ms | None, hop_ms)`` pairs (used to name the culprit in errors).
    With ``fill`` (the default) every default-ladder rung strictly between the tick and the coarsest
    hop that fits the chain is added, so a head never needs more than ``sum(r_{i+1}/r_i - 1)``
    tiles (1h/5m: at most 9+5+4 head tiles instead of 299); then, for a window whose read could
    still merge more than ``TARGET_TILES_PER_WINDOW`` tiles (``read_bound``), default rungs between
    its hop and the window, finest first, for its body to climb (1h/1m over 1s, 10s, 1m: 60 body
    tiles and 14 head tiles; with 10m, at most 38). Fill never changes values, only the number of
    tiles one read merges (and each rung is one more aggregation in the job).
    """
    pairs = list(windows)
    for w, h in pairs:
        check_window(w, h, tick_ms)
    required = sorted({tick_ms, *(h for _, h in pairs)})
    for finer, coarser in zip(required, required[1:]):
        if coarser % finer:
            culprits = [_label(w, h) for w, h in pairs if h in (finer, coarser)]
            raise DefinitionError(
                f"{' and '.join(culprits) or 'the tick'}: hops must form a divisibility chain with the tick "
                f"{format_duration(tick_ms)}, but {format_duration(finer)} does not divide {format_duration(coarser)}; "
                f"pick hops from the default ladder {_fmt(DEFAULT_LADDER_MS)}"
            )
    rungs = list(required)
    if fill:
        for d in DEFAULT_LADDER_MS:
            if not tick_ms < d < rungs[-1] or d in rungs or d % tick_ms:
                continue
            _insert(rungs, d)
        for w, h in pairs:
            for d in DEFAULT_LADDER_MS:
                if w is None or read_bound(w, h, rungs) <= TARGET_TILES_PER_WINDOW:
                    break
                if h < d < w and d not in rungs and d % tick_ms == 0:
                    _insert(rungs, d)
    return Ladder(tuple(rungs))


def _insert(rungs: list[int], d: int) -> None:
    """Put ``d`` into the sorted chain ``rungs`` where it keeps divisibility; else leave it out."""
    i = next((k for k, r in enumerate(rungs) if r > d), len(rungs))
    if d % rungs[i - 1] == 0 and (i == len(rungs) or rungs[i] % d == 0):
        rungs.insert(i, d)


def read_bound(window_ms: int, hop_ms: int, rungs: Sequence[int]) -> int:
    """Most tiles one read of a window merges over ``rungs`` (the greedy cover of
    ``window_tiles``): the body climbs the rungs from ``h`` up to the coarsest that fits in ``W``
    and back down, ``2 * sum(r_{i+1}/r_i - 1) + W / r_top``; the head descends the rungs below ``h``,
    ``sum(r_{i+1}/r_i - 1)``. An upper bound, loose by up to 2x (the card view's 1 d window reaches
    it; its 1 h window reads at most 29 tiles against a bound of 43), so a view may get a rung it
    could have done without."""
    below = [r for r in rungs if r <= hop_ms]
    up = [hop_ms, *(r for r in rungs if hop_ms < r <= window_ms)]
    steps = lambda chain: sum(b // a - 1 for a, b in zip(chain, chain[1:]))  # noqa: E731
    return steps(below) + 2 * steps(up) + window_ms // up[-1]


def tile_start(ts_ms: Any, r: int) -> Any:
    """Floor to the resolution: works for ints and numpy int64 arrays (floor division, so negatives too)."""
    if isinstance(ts_ms, np.ndarray):
        return (ts_ms.astype(np.int64, copy=False) // np.int64(r)) * np.int64(r)
    return (int(ts_ms) // r) * r


def window_bounds(t_ms: Any, window_ms: int, hop_ms: int, tick_ms: int) -> tuple[Any, Any]:
    """``(floor(t - W, h), floor(t, tau))``: the half-open event-time range of the window at ``t``.

    Vectorised: ``t_ms`` may be a numpy int64 array.
    """
    return tile_start(t_ms - window_ms, hop_ms), tile_start(t_ms, tick_ms)


def cover(start_ms: int, end_ms: int, ladder: Ladder | Sequence[int], max_resolution: int | None = None) -> list[tuple[int, int]]:
    """Greedy exact decomposition of ``[start, end)`` into ladder tiles no coarser than ``max_resolution``.

    At each cursor take the coarsest rung that is aligned at the cursor and fits before ``end``.
    Both bounds must be multiples of the finest rung. Returns ``(resolution_ms, tile_start)`` pairs
    in time order; they are disjoint and their union is exactly ``[start, end)``.
    """
    rs = ladder.resolutions if isinstance(ladder, Ladder) else tuple(sorted(int(r) for r in ladder))
    top = [r for r in rs if max_resolution is None or r <= max_resolution]
    if not top:
        raise DefinitionError(f"no ladder resolution <= {max_resolution} in ladder {_fmt(rs)}")
    finest = top[0]
    if start_ms % finest or end_ms % finest:
        raise DefinitionError(
            f"range [{start_ms}, {end_ms}) is not aligned to the finest resolution {format_duration(finest)}"
        )
    desc = top[::-1]
    tiles: list[tuple[int, int]] = []
    cursor = start_ms
    while cursor < end_ms:
        for r in desc:
            if cursor % r == 0 and cursor + r <= end_ms:
                tiles.append((r, cursor))
                cursor += r
                break
    return tiles


def window_tiles(
    t_ms: int,
    window_ms: int | None,
    hop_ms: int,
    ladder: Ladder | Sequence[int],
    tick_ms: int,
    *,
    as_of_ms: int | None = None,
    since_ms: int | None = None,
) -> list[tuple[int, int]]:
    """Tiles whose merge is the window's value at ``t``: the greedy cover of the window's range by
    every rung from the tick up (the body climbs from ``h`` to coarser rungs where they are
    aligned and fit), then the finer head.

    ``as_of_ms`` (parity checker) cuts the end to ``min(floor(t, tau), floor(as_of, tau))``.
    ``window_ms=None`` is an unbounded window (latest value without TTL) starting at
    ``floor(since_ms, h)``; ``since_ms`` is then required (e.g. the entity's oldest tile).
    """
    rs = ladder.resolutions if isinstance(ladder, Ladder) else tuple(int(r) for r in ladder)
    if hop_ms not in rs or tick_ms not in rs:
        raise DefinitionError(
            f"{_label(window_ms, hop_ms)}: hop and tick {format_duration(tick_ms)} must be in the ladder {_fmt(rs)}"
        )
    t = int(t_ms)
    if window_ms is None:
        if since_ms is None:
            raise DefinitionError("an unbounded window needs since_ms (the oldest tile to read)")
        start = tile_start(since_ms, hop_ms)
    else:
        start = tile_start(t - window_ms, hop_ms)
    end = tile_start(t, tick_ms)
    if as_of_ms is not None:
        end = min(end, tile_start(as_of_ms, tick_ms))
    tiles = cover(start, end, [r for r in rs if r >= tick_ms])
    if __debug__:
        check_cover(tiles, start, end)
    return tiles


def window_tile_ranges(
    t_ms: np.ndarray,
    window_ms: int | None,
    hop_ms: int,
    ladder: Ladder | Sequence[int],
    tick_ms: int,
    *,
    as_of_ms: Any = None,
    since_ms: Any = None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`window_tiles` for many query times at once, as tile-start ranges per resolution.

    Returns ``(r, lo, hi)`` entries, finest rung first: the window's tiles of resolution ``r`` are
    exactly those with ``lo <= tile_start < hi`` over that rung's entries (int64 arrays like
    ``t_ms``; ``hi == lo`` means none). Rungs finer than ``h`` have one entry (the head); rungs
    from ``h`` up have two, the climb then the descent, except the ladder's top (one). In list
    order the tiles are ascending ``(r, tile_start)``, the canonical merge order. On a divisibility
    chain the greedy cover of ``[start, end)`` (``start`` is ``h``-aligned) is: with ``top`` the
    coarsest rung having a whole aligned tile in the range (``h`` when none has), each rung
    ``r_i`` from ``h`` below ``top`` on ``[ceil(start, r_i), ceil(start, r_{i+1}))`` and
    ``[floor(end, r_{i+1}), floor(end, r_i))``, ``top`` on ``[ceil(start, top), floor(end, top))``,
    and each rung finer than ``h`` on ``[floor(end, r_{i+1}), floor(end, r_i))``. ``as_of_ms`` and
    ``since_ms`` may be arrays.
    """
    rs = ladder.resolutions if isinstance(ladder, Ladder) else tuple(int(r) for r in ladder)
    if hop_ms not in rs or tick_ms not in rs:
        raise DefinitionError(
            f"{_label(window_ms, hop_ms)}: hop and tick {format_duration(tick_ms)} must be in the ladder {_fmt(rs)}"
        )
    t = np.asarray(t_ms, dtype=np.int64)
    if window_ms is None:
        if since_ms is None:
            raise DefinitionError("an unbounded window needs since_ms (the oldest tile to read)")
        start = tile_start(np.broadcast_to(np.asarray(since_ms, dtype=np.int64), t.shape).copy(), hop_ms)
    else:
        start = tile_start(t - np.int64(window_ms), hop_ms)
    end = tile_start(t, tick_ms)
    if as_of_ms is not None:
        end = np.minimum(end, tile_start(np.broadcast_to(np.asarray(as_of_ms, dtype=np.int64), t.shape).copy(), tick_ms))
    empty = end <= start
    rungs = sorted(r for r in rs if r >= tick_ms)
    h = rungs.index(hop_ms)

    def ceil(x: np.ndarray, r: int) -> np.ndarray:
        return -tile_start(-x, r)

    top = np.full(t.shape, h, dtype=np.int64)  # fits is monotone: a rung that fits implies every finer one does
    for j in range(h + 1, len(rungs)):
        top += ceil(start, rungs[j]) + rungs[j] <= end
    out: list[tuple[int, np.ndarray, np.ndarray]] = []
    for j, r in enumerate(rungs):
        down_hi = tile_start(end, r)
        if j < h:  # finer than the hop: the head only
            lo = tile_start(end, rungs[j + 1])
            out.append((r, lo, np.where(empty, lo, down_hi)))
            continue
        up_lo = ceil(start, r)
        below = (j < top) & ~empty
        if j + 1 == len(rungs):
            out.append((r, up_lo, np.where(~empty & (j == top), down_hi, up_lo)))
            continue
        up_hi = np.where(below, ceil(start, rungs[j + 1]), np.where(~empty & (j == top), down_hi, up_lo))
        down_lo = np.where(below, tile_start(end, rungs[j + 1]), down_hi)
        out.append((r, up_lo, up_hi))
        out.append((r, down_lo, down_hi))
    return out


def check_cover(tiles: Sequence[tuple[int, int]], start_ms: int, end_ms: int) -> None:
    """Assert ``tiles`` (in time order) are aligned, disjoint and cover exactly ``[start, end)``."""
    cursor = start_ms
    for r, s in tiles:
        assert s % r == 0, f"tile ({r}, {s}) is not aligned"
        assert s == cursor, f"tile ({r}, {s}) leaves a gap or overlaps at {cursor}"
        cursor = s + r
    assert cursor == max(start_ms, end_ms), f"tiles end at {cursor}, not {end_ms}"


def on_time(event_time_ms: Any, append_time_ms: Any, allowed_lateness_ms: int, allowed_future_ms: int) -> Any:
    """Which events a view aggregates (scalars or arrays); the others are dropped and counted.

    Late: ``append_time - event_time > allowed_lateness`` (equal is kept), DESIGN.md's rule. Ahead:
    ``event_time - append_time > allowed_future`` (equal is kept), Headwater's addition: the
    streaming job must keep a tile's state until no more events can reach it, which for an event
    time unboundedly ahead of the clock would be unbounded; with the bound the state TTL covers
    it (``compiler.state_ttl_ms``) and streaming and replay keep the same events."""
    return ((append_time_ms - event_time_ms) <= allowed_lateness_ms) & (
        (event_time_ms - append_time_ms) <= allowed_future_ms)


def on_time_sql(event_time_ms_sql: str, append_time_ms_sql: str, allowed_lateness_ms: int,
                allowed_future_ms: int) -> str:
    """:func:`on_time` as a SQL predicate, for streaming, replay and the raw-row backfill alike."""
    et, app = f"({event_time_ms_sql})", f"({append_time_ms_sql})"
    return f"({app} - {et} <= {int(allowed_lateness_ms)} AND {et} - {app} <= {int(allowed_future_ms)})"


def tile_start_sql(ts_ms_sql: str, resolution_ms: int) -> str:
    """SQL for :func:`tile_start` on a non-negative BIGINT epoch-ms expression."""
    r = int(resolution_ms)
    return f"(({ts_ms_sql}) - MOD(({ts_ms_sql}), CAST({r} AS BIGINT)))"


class LatestSql(NamedTuple):
    """SQL pieces of the latest-value rule for an ASOF JOIN of query rows to raw event rows.

    ``event_order``: a HUGEINT ordering events by (event_time, partition, offset);
    ``visible_before``: the query row's bound, ``floor(t, tau)`` in the same encoding, so the ASOF
    condition ``event_order < visible_before`` picks the greatest (event_time, partition, offset)
    with ``event_time < floor(t, tau)`` (the scored event never sees itself);
    ``within_ttl``: the match's inclusive TTL bound ``event_time >= t - ttl`` (``TRUE`` without TTL),
    applied to the winner, since an older winner means nothing newer qualifies either.
    """

    event_order: str
    visible_before: str
    within_ttl: str


def latest_value_sql(event_time_ms_sql: str, partition_sql: str, offset_sql: str, t_ms_sql: str,
                     tick_ms: int, ttl_ms: int | None) -> LatestSql:
    """DuckDB SQL of the latest-value visibility rule (DESIGN, "Latest-value features"); see :class:`LatestSql`.
    Needs ``0 <= event_time < 2^47``, ``0 <= partition < 2^16``, ``0 <= offset < 2^63``."""
    def key(ts: str, part: str, off: str) -> str:
        return f"((CAST({ts} AS HUGEINT) << 80) | (CAST({part} AS HUGEINT) << 64) | CAST({off} AS HUGEINT))"

    ttl = "TRUE" if ttl_ms is None else f"(({event_time_ms_sql}) >= ({t_ms_sql}) - {int(ttl_ms)})"
    return LatestSql(key(event_time_ms_sql, partition_sql, offset_sql),
                     key(tile_start_sql(t_ms_sql, tick_ms), "0", "0"), ttl)
