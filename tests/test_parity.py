"""Parity checker. Unit: classification, late-append explanation and statistics on hand-built
tables (pure). End to end (test_parity_e2e.py): real Kafka + Flink + Redis + replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.parity import Check, EventIndex, LateAppend, classify, compare, fits
from backfill.parity_report import ParityReport, feature_stats
from headwater.config import load_repo
from streamjobs import windows
from streamjobs.repo import load_definitions

try:
    from conftest import EXAMPLE_REPO
except ModuleNotFoundError:
    from tests.conftest import EXAMPLE_REPO

T = 1_704_067_800_000  # 2024-01-01T00:10:00Z


@pytest.fixture(scope="module")
def plan():
    return load_definitions(load_repo(EXAMPLE_REPO)).plan


def test_classify():
    assert classify(None, None) == "match"
    assert classify(0, None) == "null" and classify(None, "FR") == "null"
    assert classify(3, 3) == "match" and classify(3, 4) == "value"
    assert classify(1.0, 1.0 + 1e-12) == "match"  # within 1e-9 relative
    assert classify(1.0, 1.0 + 1e-6) == "value"
    assert classify(1e6, 1e6 * (1 + 5e-10)) == "match" and classify(1e6, 1e6 * (1 + 5e-9)) == "value"
    assert classify(0.0, 3e-12) == "match"  # 0 up to rounding (stddev of equal amounts)
    assert classify(0.0, 1e-6) == "value"
    assert classify(5, 5.0) == "match"  # int count vs float from another reader
    assert classify(float("nan"), 1.0) == "value" and classify(float("nan"), float("nan")) == "match"
    assert classify("FR", "FR") == "match" and classify("FR", "DE") == "value"
    assert classify(True, 1) == "match"  # the feature log carries booleans as 0/1


@given(st.floats(min_value=-1e300, max_value=1e300), st.floats(min_value=-1e-10, max_value=1e-10))
def test_classify_relative_tolerance_property(x, eps):
    y = x * (1 + eps)
    assert classify(x, y) == "match"
    assert classify(y, x) == "match"  # symmetric


def _events(rows):
    """rows: (card_id, event_time, append_time, partition, offset[, amount[, country]]); amount 10.0
    and country "FR" unless given."""
    return pa.table({"card_id": [r[0] for r in rows], "merchant_id": ["m1"] * len(rows),
                     "amount": pa.array([r[5] if len(r) > 5 else 10.0 for r in rows], pa.float64()),
                     "country": [r[6] if len(r) > 6 else "FR" for r in rows],
                     "event_time": pa.array([r[1] for r in rows], pa.int64()),
                     "_append_ms": pa.array([r[2] for r in rows], pa.int64()),
                     "_partition": pa.array([r[3] for r in rows], pa.int64()),
                     "_offset": pa.array([r[4] for r in rows], pa.int64())})


def _row(entity, t, as_of, values, key="card_id", view="card_velocity"):
    return {"entity_key": key, "entity": entity, "t_ms": t, "as_of_ms": as_of, "plan_hash": "x",
            "features": list(values), **values}


def test_compare_explains_only_appends_after_as_of_inside_the_window(plan):
    one_min = "card_velocity:txn_count_1m"
    vp = plan.view("card_velocity")
    f = plan.features_by_ref(one_min)[0].feature
    lo, hi = windows.window_bounds(T, f.window_ms, f.hop_ms, vp.tick_ms)
    as_of = T - 2_000
    idx = EventIndex().add(_events([
        ("c1", hi - 1, as_of + 10, 0, 7),            # in window, appended after as_of: explains
        ("c1", lo - 1, as_of + 20, 1, 8),            # before the window: not
        ("c1", hi, as_of + 30, 1, 9),                # at floor(t, tick): excluded by the window
        ("c2", lo, as_of - 1, 2, 3),                 # appended before as_of: online had it
        ("c3", lo + 5, lo + 5 + vp.allowed_lateness_ms + 1, 0, 11),  # dropped as late by both paths
    ]), ["card_id", "merchant_id"], "event_time")
    rows = [_row("c1", T, as_of, {one_min: 2}), _row("c2", T, as_of, {one_min: 0}),
            _row("c3", T, as_of, {one_min: 0}), _row("c4", T, as_of, {one_min: 5})]
    offline = [{one_min: 3}, {one_min: 1}, {one_min: 1}, {one_min: 5}]
    checks = compare(rows, offline, plan, idx)
    assert [c.kind for c in checks] == ["value", "value", "value", "match"]
    assert checks[0].late == (LateAppend("c1", 0, 7, hi - 1, as_of + 10),) and checks[0].explained
    assert checks[1].unexplained and checks[2].unexplained and not checks[3].unexplained
    # no event index: nothing is explained
    assert all(not c.explained for c in compare(rows, offline, plan, None))


def test_fits_bounds_the_sign_and_size_a_late_append_can_make():
    # count / distinct count: only higher offline, by at most the late events (distinct values)
    assert fits("count", 2, 3, [5.0]) and fits("count", 1, 3, [5.0, None, 6.0])
    assert not fits("count", 4, 3, [5.0]) and not fits("count", 1, 3, [5.0]) and not fits("count", 1, 3, [None])
    assert fits("distinct_count", None, 1, ["m1"]) and not fits("distinct_count", 1, 3, ["m1", "m1"])
    # sum: at most the late values' absolute sum apart, either sign
    assert fits("sum", 10.0, 4.0, [-6.0]) and fits("sum", 0.0, 7.5, [7.5]) and not fits("sum", 0.0, 8.0, [7.5])
    # min / max / last: the offline value is a late event's, and online's min/max is not beyond it
    assert fits("max", 5.0, 9.0, [9.0]) and not fits("max", 5.0, 9.0, [8.0]) and not fits("max", 9.5, 9.0, [9.0])
    assert fits("min", None, 1.0, [1.0]) and not fits("min", 0.5, 1.0, [1.0])
    assert fits("last", "DE", "FR", ["FR"]) and not fits("last", "DE", "FR", ["IT"])
    # offline null where online has a value: offline read a superset, never
    assert not fits("max", 5.0, None, [9.0]) and not fits("last", "DE", None, ["FR"])
    # mean: between online's mean and the added values; from no data, within the added values
    assert fits("mean", 1.0, 2.0, [3.0]) and not fits("mean", 1.0, 2.0, [None]) and not fits("mean", 1.0, 3.5, [3.0])
    assert fits("mean", 4.0, 2.0, [1.0, 9.0]) and not fits("mean", 4.0, 0.5, [1.0, 9.0])
    assert fits("mean", None, 2.0, [1.0, 3.0]) and not fits("mean", None, 4.0, [1.0, 3.0])
    assert fits("mean", 1.0, 1.0 + 1e-10, [1.0])  # rounding
    # stddev: from no data, at most half the added values' range; over online's events, no bound
    assert fits("stddev", None, 1.0, [1.0, 3.0]) and not fits("stddev", None, 1.5, [1.0, 3.0])
    assert fits("stddev", 0.5, 7.0, [3.0]) and not fits("stddev", 0.5, 7.0, [None])


def test_a_late_append_does_not_explain_a_difference_it_cannot_make(plan):
    """One late event explains a count one higher offline; not one lower, not five higher."""
    ref, amax = "card_velocity:txn_count_1h", "card_velocity:amount_max_1h"
    as_of = T - 2_000
    idx = EventIndex().add(_events([("c1", T - 5_000, as_of + 10, 0, 7, 42.0)]),
                           ["card_id", "merchant_id"], "event_time")
    rows = [_row("c1", T, as_of, {ref: n, amax: 30.0}) for n in (2, 4, 0)]
    checks = compare(rows, [{ref: 3, amax: 42.0}] * 3, plan, idx)
    assert [(c.ref, c.explained) for c in checks] == [
        (ref, True), (amax, True), (ref, False), (amax, True), (ref, False), (amax, True)]
    assert all(c.late for c in checks)  # the evidence is kept with an unexplained check too
    worse = compare([_row("c1", T, as_of, {amax: 30.0})], [{amax: 41.0}], plan, idx)
    assert worse[0].unexplained  # the offline max is no late event's amount


def test_compare_ttl_latest_and_merchant_key(plan):
    last = "card_velocity:last_country"
    vp = plan.view("card_velocity")
    f = plan.features_by_ref(last)[0].feature
    assert f.window_ms == 24 * 3600_000  # a TTL-bounded latest value: its window is the TTL
    idx = EventIndex().add(_events([("c1", T - 1000, T + 5, 0, 1), ("c1", T - f.window_ms - 3600_000, T + 6, 0, 2)]),
                           ["card_id", "merchant_id"], "event_time")
    checks = compare([_row("c1", T, T - 100, {last: None})], [{last: "FR"}], plan, idx)
    assert checks[0].kind == "null" and [e.offset for e in checks[0].late] == [1]
    mref = "merchant_activity:merchant_txn_count_10m"
    mchecks = compare([_row("m1", T, T - 100, {mref: 0}, key="merchant_id")], [{mref: 1}], plan, idx)
    assert mchecks[0].explained  # the same event, found under its merchant key
    assert vp.entity_key == "card_id"


def test_feature_stats_and_report(plan, tmp_path: Path):
    ref = "card_velocity:amount_mean_1h"
    late = (LateAppend("c1", 0, 1, T - 10, T + 1),)
    checks = [Check(ref, "c1", T, T, 10.0, 10.0, "match"), Check(ref, "c2", T, T, 10.0, 12.0, "value"),
              Check(ref, "c3", T, T, None, 4.0, "null"), Check(ref, "c4", T, T, 1.0, 2.0, "value", late),
              Check("card_velocity:txn_count_1m", "c1", T + 60_000, T, 1, 1, "match")]
    fs = feature_stats(ref, checks[:4])
    assert (fs.compared, fs.exact, fs.null_mismatches, fs.value_mismatches, fs.late_value) == (4, 1, 1, 1, 1)
    # SMAPE over the 3 numeric pairs: 0, 2*2/22, 2*1/3
    assert math.isclose(fs.smape, 100 * (0 + 4 / 22 + 2 / 3) / 3)
    assert fs.diff_max_abs == 2.0 and fs.diff_p50 == -1.0
    rep = ParityReport.build(checks, n_fetches=5)
    assert not rep.ok and len(rep.unexplained) == 2 and len(rep.late) == 1
    data = json.loads(json.dumps(rep.to_json(), default=str))
    assert data["unexplained"] == 2 and data["late_explained"] == 1
    assert data["late_events"] == [{"entity": "c1", "partition": 0, "offset": 1, "event_time_ms": T - 10,
                                    "append_time_ms": T + 1}]
    assert "FAIL: 2 unexplained" in rep.table()
    page = rep.write_html(tmp_path / "p.html").read_text()
    assert page.count("<svg") == 2 and "unexplained" in page and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")  # self-contained
    ok = ParityReport.build(checks[:1], n_fetches=1)
    assert ok.ok and "OK" in ok.table()


def test_tiles_sanity_before_recompute(plan, tmp_path: Path):
    from backfill import layout
    from backfill.parity import ParityError, _check_tiles
    vp = plan.view("card_velocity")
    with pytest.raises(ParityError, match="no replay of view 'card_velocity'"):
        _check_tiles(tmp_path, plan, {"card_velocity"})
    base = {"view": vp.name, "tick_ms": vp.tick_ms, "range": {}, "events_late": 0, "tiles_written": 0,
            "finished_ms": 0}
    layout.write_manifest(tmp_path, {**base, "plan_hash": "0" * 16, "events_read": 0})
    with pytest.raises(ParityError, match="from plan 0000"):
        _check_tiles(tmp_path, plan, {"card_velocity"})
    layout.write_manifest(tmp_path, {**base, "plan_hash": vp.plan_hash, "events_read": 10})
    (tmp_path / "view=card_velocity" / "view=card_velocity" / "resolution_ms=1000").mkdir(parents=True)
    with pytest.raises(ParityError, match="holds no tile files"):
        _check_tiles(tmp_path, plan, {"card_velocity"})
    layout.write_manifest(tmp_path, {**base, "plan_hash": vp.plan_hash, "events_read": 0})
    _check_tiles(tmp_path, plan, {"card_velocity"})  # an empty range is fine: every value is no-data


def test_no_fetch_left_to_check_is_one_line(plan, tmp_path: Path):
    """A log of other definitions only (right after a change), or --sample 0: a ParityError that says
    what to do, not a traceback from an empty min()."""
    import types
    from backfill.parity import ParityError, check
    ref = "card_velocity:txn_count_1h"
    row = {"event_id": "e1", "entity_key": "card_id", "entity": "c1", "t_ms": T, "as_of_ms": T,
           "plan_hash": "0" * 16, "features": [ref], ref: 3}
    conn = types.SimpleNamespace(bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1")  # never reached
    with pytest.raises(ParityError, match="none of the 1 logged fetches is of the current definitions"):
        check(EXAMPLE_REPO, feature_log=pa.Table.from_pylist([row]), tiles=tmp_path, conn=conn, say=lambda _m: None)
    current = dict(row, plan_hash=plan.view("card_velocity").plan_hash)
    with pytest.raises(ParityError, match="--sample 0: sample at least one"):
        check(EXAMPLE_REPO, feature_log=pa.Table.from_pylist([current]), tiles=tmp_path, conn=conn, sample=0,
              say=lambda _m: None)


@pytest.mark.integration
def test_cli_exit_status_json_and_html(stack, temp_repo: Path, tmp_path: Path, capsys):
    """`headwater parity` on a .jsonl feature log against tiles in the layout (built with ir): exit 0
    when every value matches, 1 (and the mismatch in JSON/HTML) after one logged value is altered."""
    from backfill import layout, training_set
    from headwater.cli import main
    from headwater.topics import create_topics
    from online_store import feature_log
    try:
        from test_online_store import tile_records
    except ModuleNotFoundError:
        from tests.test_online_store import tile_records

    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)  # parity reads appends after as_of from the (empty) events topic
    plan = load_definitions(repo).plan
    vp = plan.view("card_velocity")
    events = [{"card_id": f"c{i % 3}", "merchant_id": f"m{i % 2}", "amount": 1.5 * i, "country": "FR",
               "event_time_ms": T - 50_000 + 1000 * i, "append_time_ms": T - 50_000 + 1000 * i + 10,
               "partition": 0, "offset": i} for i in range(40)]
    tiles = tmp_path / "tiles"
    n = layout.write_tiles(tiles, vp, layout.tiles_table(vp, tile_records(vp, events)))
    layout.write_manifest(tiles, {"view": vp.name, "plan_hash": vp.plan_hash, "tick_ms": vp.tick_ms, "range": {},
                                  "events_read": 40, "events_late": 0, "tiles_written": n, "finished_ms": 0})
    refs = [fr.ref for fr in plan.features_by_ref("card_velocity:*")]
    ts = [T - 20_000, T, T + 30_000]
    spine = pa.table({"card_id": [f"c{i}" for i in range(3) for _ in ts], "ts": pa.array(ts * 3, pa.int64())})
    got = training_set(repo, spine, refs, tiles=tiles).to_pylist()
    recs = [{"event_id": None, "entity_key": "card_id", "entity": g["card_id"], "t_ms": g["ts"], "as_of_ms": T + 60_000,
             "values": {r: g[r] for r in refs}, "features": refs, "plan_hash": vp.plan_hash} for g in got]
    assert recs[4]["values"]["card_velocity:txn_count_1h"] > 0
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    feature_log.write_file(recs, good)
    recs[4]["values"]["card_velocity:txn_count_1h"] += 1
    feature_log.write_file(recs, bad)
    args = ["parity", "--repo", str(temp_repo), "--tiles", str(tiles)]
    assert main(args + ["--feature-log", str(good)]) == 0
    assert "OK: online equals offline; 9 fetches" in capsys.readouterr().out
    out_json, out_html = tmp_path / "p.json", tmp_path / "p.html"
    assert main(args + ["--feature-log", str(bad), "--json", str(out_json), "--report", str(out_html)]) == 1
    data = json.loads(out_json.read_text())
    assert data["unexplained"] == 1 and not data["ok"]
    assert data["unexplained_mismatches"][0]["ref"] == "card_velocity:txn_count_1h"
    assert data["unexplained_mismatches"][0]["online"] == data["unexplained_mismatches"][0]["offline"] + 1
    assert "FAIL: 1 unexplained" in out_html.read_text()
    assert main(args + ["--feature-log", str(tmp_path / "none.jsonl")]) == 2  # one-line error


def test_late_events_are_looked_up_in_the_view_s_own_topic(plan):
    """Two topics keyed by the same field: one index per topic, so another topic's events (here
    login-like rows without an amount) neither replace nor stand in for the view's own."""
    ref = "card_velocity:txn_count_1h"
    as_of = T - 2_000
    tx = EventIndex().add(_events([("c1", T - 5_000, as_of + 10, 0, 7, 42.0)]), ["card_id", "merchant_id"], "event_time")
    other = EventIndex().add(_events([("c1", T - 4_000, as_of + 20, 0, 3, None)]), ["card_id", "merchant_id"], "event_time")
    topic = plan.view("card_velocity").topic
    rows = [_row("c1", T, as_of, {ref: 2})]
    assert compare(rows, [{ref: 3}], plan, {topic: tx, "logins": other})[0].explained
    assert compare(rows, [{ref: 3}], plan, {topic: EventIndex(), "logins": tx})[0].unexplained
