"""Window arithmetic: durations, ladders, default hops and exact tile decomposition."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamjobs import windows as w
from streamjobs.errors import DefinitionError

S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000


def _utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp() * 1000)


@pytest.mark.parametrize(
    "text, ms",
    [("500ms", 500), ("1s", S), ("10s", 10 * S), ("1m", M), ("1h", H), ("24h", D), ("1d", D), (1500, 1500), (" 5m ", 5 * M)],
)
def test_parse_duration(text, ms):
    assert w.parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["", "1", "1.5s", "-1s", "1w", "ten s", "0s", 0, -5, True, 1.0, None])
def test_parse_duration_rejects_with_one_line(bad):
    with pytest.raises(DefinitionError) as exc:
        w.parse_duration(bad, what="window")
    assert "\n" not in str(exc.value) and "window" in str(exc.value)


def test_zero_allowed_only_when_asked():
    assert w.parse_duration("0s", allow_zero=True) == 0


@pytest.mark.parametrize("ms, text", [(H, "1h"), (10 * M, "10m"), (D, "1d"), (90 * M, "90m"), (1500, "1500ms"), (6 * H, "6h")])
def test_format_duration_is_canonical(ms, text):
    assert w.format_duration(ms) == text
    assert w.parse_duration(text) == ms


@pytest.mark.parametrize("window, hop", [(M, S), (10 * M, 10 * S), (H, M), (24 * H, H), (7 * D, D), (90 * M, 10 * M)])
def test_default_hop(window, hop):
    assert w.default_hop(window) == hop


def test_default_hop_falls_back_to_fewest_tiles_and_respects_tick():
    assert w.default_hop(65 * S) == S  # 65 tiles: the target is not a rule
    assert w.default_hop(5 * S, tick_ms=500) == 500
    with pytest.raises(DefinitionError, match="multiple of the tick"):
        w.default_hop(1500)


def test_ladder_fills_default_rungs_between_tick_and_hops():
    assert w.build_ladder(S, [(H, 5 * M)]).resolutions == (S, 10 * S, M, 5 * M)
    assert w.build_ladder(S, [(H, 5 * M)], fill=False).resolutions == (S, 5 * M)
    assert w.build_ladder(S, [(10 * M, 10 * S), (H, M), (D, H)]).resolutions == (S, 10 * S, M, 10 * M, H)
    assert w.build_ladder(S, [(3 * M, 90 * S)]).resolutions == (S, 10 * S, 90 * S)  # 1m does not fit the chain
    assert w.build_ladder(S, []).resolutions == (S,)


def test_ladder_adds_body_rungs_until_a_read_merges_at_most_64_tiles():
    # the merchant view's 1 h window, 1 min hop: 60 body + 14 head tiles over (1s, 10s, 1m)
    assert w.read_bound(H, M, (S, 10 * S, M)) == 74
    assert w.build_ladder(S, [(10 * M, 10 * S), (H, M)]).resolutions == (S, 10 * S, M, 10 * M)
    assert w.build_ladder(S, [(10 * M, S)]).resolutions == (S, 10 * S, M)  # was 600 one-second tiles
    assert w.build_ladder(S, [(10 * M, S)], fill=False).resolutions == (S,)


@settings(max_examples=40, deadline=None)
@given(w_and_h=st.sampled_from([(M, S), (10 * M, S), (10 * M, 10 * S), (H, M), (H, 10 * S), (D, H), (D, M),
                                (2 * H, 10 * M), (3 * M, 90 * S)]),
       t=st.integers(1_700_000_000_000, 1_700_000_000_000 + 2 * D))
def test_read_bound_bounds_every_read(w_and_h, t):
    win, hop = w_and_h
    ladder = w.build_ladder(S, [(win, hop)])
    bound = w.read_bound(win, hop, ladder.resolutions)
    assert len(w.window_tiles(t, win, hop, ladder, S)) <= bound
    if (win, hop) != (D, M):  # 1 d over 1 min hops: no default rung between 1 h and 1 d is left to add
        assert bound <= w.TARGET_TILES_PER_WINDOW


def test_ladder_chain_error_names_window_hop_and_fix():
    with pytest.raises(DefinitionError) as exc:
        w.build_ladder(S, [(H, 5 * M), (14 * M, 2 * M)])
    msg = str(exc.value)
    assert "\n" not in msg
    assert "window 14m with hop 2m" in msg and "window 1h with hop 5m" in msg
    assert "2m does not divide 5m" in msg and "default ladder" in msg


@pytest.mark.parametrize(
    "window, hop, tick, fragment",
    [
        (H, 7 * M, S, "hop 7m does not divide window 1h"),
        (H, 1500, 1000, "hop 1500ms is not a multiple of the tick 1s"),
        (1500, 500, 1000, "hop 500ms is not a multiple of the tick 1s"),
        (2500, 1000, 1000, "window 2500ms is not a multiple of the tick 1s"),
    ],
)
def test_check_window_errors(window, hop, tick, fragment):
    with pytest.raises(DefinitionError, match=fragment):
        w.check_window(window, hop, tick, where="view 'v'")


def test_ladder_invariant_checked_on_construction():
    with pytest.raises(DefinitionError, match="not a divisibility chain"):
        w.Ladder((S, 7 * S, 10 * S))
    with pytest.raises(DefinitionError):
        w.Ladder(())


def test_tile_start_scalars_negatives_and_arrays():
    assert w.tile_start(1_234_567, S) == 1_234_000
    assert w.tile_start(-1, S) == -S
    arr = np.array([0, 999, 1000, 1001, -1], dtype=np.int64)
    np.testing.assert_array_equal(w.tile_start(arr, S), [0, 0, 1000, 1000, -1000])
    assert w.tile_start(arr, S).dtype == np.int64


def test_sawtooth_example_from_the_conformance_doc():
    # W=1h, hop=5m, tick=1s, query 14:27:00 -> [13:25:00, 14:27:00).
    t = _utc(2026, 1, 5, 14, 27)
    assert t == 1767623220000  # the t of sawtooth_boundaries.json
    ladder = w.build_ladder(S, [(H, 5 * M)])
    assert w.window_bounds(t, H, 5 * M, S) == (_utc(2026, 1, 5, 13, 25), t)
    tiles = w.window_tiles(t, H, 5 * M, ladder, S)
    assert tiles[:12] == [(5 * M, _utc(2026, 1, 5, 13, 25) + i * 5 * M) for i in range(12)]
    assert tiles[12:] == [(M, _utc(2026, 1, 5, 14, 25)), (M, _utc(2026, 1, 5, 14, 26))]
    # Inside the current tick nothing new is visible; the event at exactly floor(t, tick) is excluded.
    assert w.window_tiles(t + 500, H, 5 * M, ladder, S) == tiles
    assert w.window_tiles(t + S, H, 5 * M, ladder, S)[-1] == (S, t)


def _head_bound(ladder: w.Ladder, hop: int) -> int:
    rs = [r for r in ladder.resolutions if r <= hop]
    return sum(b // a - 1 for a, b in zip(rs, rs[1:]))


@settings(max_examples=300, deadline=None)
@given(
    t=st.integers(0, 4_000_000_000_000),
    pair=st.sampled_from([(M, S), (10 * M, 10 * S), (H, M), (H, 5 * M), (D, H), (6 * H, H), (10 * S, 10 * S), (3 * M, 90 * S)]),
    tick=st.sampled_from([S, 500]),
    fill=st.booleans(),
    coarser=st.booleans(),
)
def test_window_tiles_cover_exactly_and_are_bounded(t, pair, tick, fill, coarser):
    window, hop = pair
    # ``coarser``: another window's 1 d hop puts rungs above this hop in the view's ladder
    ladder = w.build_ladder(tick, [(window, hop)] + ([(7 * D, D)] if coarser else []), fill=fill)
    start, end = w.window_bounds(t, window, hop, tick)
    tiles = w.window_tiles(t, window, hop, ladder, tick)
    w.check_cover(tiles, start, end)
    assert start == (t - window) // hop * hop and end == t // tick * tick
    assert all(r in ladder for r, _ in tiles) and all(s % r == 0 for r, s in tiles)
    # Greedy: no tile could have been a coarser rung, aligned there and fitting before the end.
    for r, s in tiles:
        assert not [R for R in ladder.resolutions if R > r and s % R == 0 and s + R <= end], (r, s)
    # Never more tiles than the body of W/h hop tiles plus the head (the cover capped at the hop).
    capped = w.cover(start, end, [r for r in ladder.resolutions if r >= tick], max_resolution=hop)
    assert len([x for x in capped if x[0] == hop]) == window // hop
    assert len(capped) - window // hop <= _head_bound(ladder, hop)
    assert len(tiles) <= len(capped)
    assert [x for x in tiles if x[0] < hop] == [x for x in capped if x[0] < hop]  # the same head


@given(t=st.integers(10**12, 2 * 10**12), cut=st.integers(-2 * H, 2 * H))
def test_as_of_cuts_the_end_and_still_covers(t, cut):
    ladder = w.build_ladder(S, [(H, M)])
    start, end = w.window_bounds(t, H, M, S)
    tiles = w.window_tiles(t, H, M, ladder, S, as_of_ms=t + cut)
    w.check_cover(tiles, start, max(start, min(end, (t + cut) // S * S)))


def test_unbounded_window_needs_since_and_starts_at_its_hop_floor():
    ladder = w.build_ladder(S, [(None, D)])
    with pytest.raises(DefinitionError, match="since_ms"):
        w.window_tiles(10 * D, None, D, ladder, S)
    tiles = w.window_tiles(10 * D + 5 * H + 3 * S, None, D, ladder, S, since_ms=2 * D + 7)
    w.check_cover(tiles, 2 * D, 10 * D + 5 * H + 3 * S)


def test_window_tiles_rejects_hops_outside_the_ladder():
    with pytest.raises(DefinitionError, match="must be in the ladder"):
        w.window_tiles(10 * H, H, 5 * M, w.build_ladder(S, [(H, M)]), S)


def test_window_bounds_vectorised_matches_scalar():
    ts = np.array([1767623220000, 1767623220500, 1767623221000, 5], dtype=np.int64)
    starts, ends = w.window_bounds(ts, H, 5 * M, S)
    for i, t in enumerate(ts.tolist()):
        assert (int(starts[i]), int(ends[i])) == w.window_bounds(t, H, 5 * M, S)


def test_lateness_rule_and_its_sql():
    assert w.on_time(1000, 1000 + 5 * M, 5 * M, M)  # exactly equal is kept
    assert not w.on_time(1000, 1001 + 5 * M, 5 * M, M)
    assert w.on_time(1000 + M, 1000, 5 * M, M) and not w.on_time(1001 + M, 1000, 5 * M, M)  # ahead, the same
    assert w.on_time(1000, 1000, 0, 0) and not w.on_time(1001, 1000, 5 * M, 0)
    np.testing.assert_array_equal(w.on_time(np.array([0, 0, 16, 15]), np.array([10, 11, 10, 10]), 10, 5),
                                  [True, False, False, True])
    assert w.on_time_sql("et", "`append`", 300000, 60000) == "((`append`) - (et) <= 300000 AND (et) - (`append`) <= 60000)"
    assert w.tile_start_sql("et", 60000) == "((et) - MOD((et), CAST(60000 AS BIGINT)))"
