"""The two helpers the backfill added to streamjobs/windows.py: vectorised tile ranges and the
latest-value SQL, each against the scalar definition it must equal."""

from __future__ import annotations

import duckdb
import numpy as np
from hypothesis import given, settings, strategies as st

from streamjobs import windows

LADDERS = [(1000, 10_000, 60_000, 600_000, 3_600_000, 86_400_000), (1000, 5000, 60_000), (500, 1000, 10_000)]


@st.composite
def cases(draw):
    ladder = draw(st.sampled_from(LADDERS))
    tick = ladder[0]
    hop = draw(st.sampled_from(ladder))
    unbounded = draw(st.booleans())
    window = None if unbounded else hop * draw(st.integers(1, 30))
    ts = draw(st.lists(st.integers(10**6, 10**6 + 3 * 86_400_000), min_size=1, max_size=20))
    as_of = draw(st.none() | st.integers(10**6 - 10**5, 10**6 + 3 * 86_400_000))
    since = draw(st.integers(0, 10**6 + 86_400_000)) if unbounded else None
    return ladder, tick, hop, window, ts, as_of, since


@settings(max_examples=300, deadline=None)
@given(cases())
def test_ranges_equal_window_tiles(case):
    ladder, tick, hop, window, ts, as_of, since = case
    ranges = windows.window_tile_ranges(np.array(ts, dtype=np.int64), window, hop, ladder, tick,
                                        as_of_ms=as_of, since_ms=since)
    rungs = sorted(ladder)
    assert [r for r, _, _ in ranges] == [r for r in rungs for _ in range(1 if r < hop or r == rungs[-1] else 2)]
    for i, t in enumerate(ts):
        want = windows.window_tiles(t, window, hop, ladder, tick, as_of_ms=as_of, since_ms=since)
        got = [(r, s) for r, lo, hi in ranges for s in range(int(lo[i]), int(hi[i]), r)]
        assert got == sorted(want), (t, got, want)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 2), st.integers(0, 5)), min_size=0, max_size=25),
       st.integers(0, 25), st.sampled_from([1, 2, 5]), st.none() | st.integers(0, 12))
def test_latest_value_sql_is_the_rule(events, t, tick, ttl):
    """ASOF JOIN with latest_value_sql == the rule by brute force: greatest (ts, p, o) with
    ts < floor(t, tick) and ts >= t - ttl."""
    con = duckdb.connect()
    con.execute("CREATE TABLE e (k VARCHAR, ts BIGINT, p INT, o BIGINT)")
    uniq = sorted({(ts, p, o) for ts, p, o in events})
    if uniq:
        con.executemany("INSERT INTO e VALUES ('a', ?, ?, ?)", uniq)
    con.execute("CREATE TABLE s AS SELECT 'a' AS k, ?::BIGINT AS t", [t])
    sql = windows.latest_value_sql("e.ts", "e.p", "e.o", "s.t", tick, ttl)
    got = con.execute(f"SELECT CASE WHEN e.ts IS NOT NULL AND {sql.within_ttl} THEN [e.ts, e.p, e.o] END FROM s ASOF LEFT JOIN e "
                      f"ON s.k = e.k AND {sql.event_order} < {sql.visible_before}").fetchone()[0]
    ok = [x for x in uniq if x[0] < (t // tick) * tick and (ttl is None or x[0] >= t - ttl)]
    want = list(max(ok)) if ok else None
    assert got == want
