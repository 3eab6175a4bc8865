"""Trimming never drops a tile a fetch still reads: ``keys.retention_ms`` against ``windows.window_tiles``.

The greedy cover reads rungs coarser than a window's hop in its body, as far back as the window
starts, so their retention must follow the longest window that may read them (a plan with a 2 h
window on a 1 min hop reads 10 min tiles two hours back, though the 10 min hop's own window is 1 h).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from online_store import keys
from streamjobs import Aggregation, Entity, FeatureView, Source, build_plan, windows

#: (window, hop or None for the default): every hop is on the default ladder's chain
PAIRS = [("1m", None), ("10m", None), ("1h", None), ("1d", None), ("2h", "1m"), ("1h", "10m"),
         ("30m", "10m"), ("3h", "1h"), ("20s", "10s"), ("5m", "1m")]


def _view(pairs: list[tuple[str, str | None]], lateness: str) -> FeatureView:
    src = Source("tx", "tx.none", event_time_field="event_time_ms",
                 columns={"card_id": "string", "amount": "double", "event_time_ms": "long"})
    aggs = tuple(Aggregation("sum", "amount", (w,), hop=h, name=f"f{i}") for i, (w, h) in enumerate(pairs))
    return FeatureView("card", Entity("card", "card_id"), src, aggs, allowed_lateness=lateness)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.sampled_from(PAIRS), min_size=1, max_size=4, unique=True),
       lateness=st.sampled_from(["0s", "30s", "5m"]),
       t=st.integers(10**12, 2 * 10**12), ahead=st.floats(0, 1))
def test_every_tile_a_fetch_reads_is_retained(pairs, lateness, t, ahead):
    vp = build_plan([_view(pairs, lateness)]).views[0]
    ret = keys.retention_ms(vp)
    # fetches are served for t >= newest - lateness: the store's newest tile may be that far ahead
    newest = t + int(ahead * vp.allowed_lateness_ms)
    for g in vp.groups:
        for r, s in windows.window_tiles(t, g.window_ms, g.hop_ms, vp.ladder, vp.tick_ms):
            assert s >= newest - ret[r], (g.window_ms, g.hop_ms, r, s, newest, ret[r])
