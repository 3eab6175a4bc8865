"""IR maths: field SQL, the composite last key, update, merge purity, finalize defaults."""

from __future__ import annotations

import copy
import math
import statistics

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamjobs import ir
from streamjobs.errors import IRError, UnknownOpError

AMOUNT = ir.fields_for("stddev", "amount", "double")
ALL_AMOUNT = ir.ir_fields([(op, "amount", "double") for op in ("count", "sum", "mean", "min", "max", "last", "stddev")])
MERCH = ir.fields_for("distinct_count", "merchant_id", "string")


class _F:
    def __init__(self, name: str, op: str, column: str, column_type: str, ttl_ms: int | None = None) -> None:
        self.name, self.op, self.column, self.column_type, self.ttl_ms = name, op, column, column_type, ttl_ms


def _tile(fields, values, ts=None, part=None, off=None, column="amount"):
    n = len(values)
    return ir.tile_from_events(
        fields, {column: np.array(values, dtype=object)},
        ts if ts is not None else [1_000 + i for i in range(n)],
        part if part is not None else [0] * n,
        off if off is not None else list(range(n)),
    )


def test_field_names_order_and_sharing():
    assert [f.name for f in ALL_AMOUNT] == [
        "amount__cnt", "amount__sum", "amount__m2", "amount__min", "amount__max", "amount__last"]
    assert [f.name for f in MERCH] == ["merchant_id__distinct"]
    with pytest.raises(IRError, match="two types"):
        ir.ir_fields([("count", "a", "long"), ("sum", "a", "double")])


def test_unknown_op_is_a_definition_error():
    with pytest.raises(UnknownOpError, match="unknown op 'avg'; known ops: count"):
        ir.get_op("avg")


def test_field_sql_text_and_types():
    f = {x.kind: x for x in ALL_AMOUNT}
    assert ir.field_sql(f["cnt"]) == "COUNT(`amount`)"
    assert ir.field_sql(f["sum"]) == "COALESCE(SUM(CAST(`amount` AS DOUBLE)), CAST(0 AS DOUBLE))"
    assert ir.field_sql(f["m2"], "t.amount") == "HW_M2(CAST(t.amount AS DOUBLE))"
    assert ir.field_sql(f["m2"], "t.amount", engine="ansi") == (
        "COALESCE(VAR_POP(CAST(t.amount AS DOUBLE)) * COUNT(t.amount), CAST(0 AS DOUBLE))")
    assert ir.field_sql(f["min"]) == "MIN(`amount`)" and ir.field_sql(f["max"]) == "MAX(`amount`)"
    assert ir.field_sql(f["last"], inputs=ir.SqlInputs("et_ms", "p", "o")) == (
        "MAX(HW_LAST_KEY(CAST(et_ms AS BIGINT), CAST(p AS INT), CAST(o AS BIGINT), CAST(`amount` AS STRING)))")
    last = ir.field_sql(f["last"], inputs=ir.SqlInputs("et_ms", "p", "o"), engine="ansi")
    assert last == ("MAX(LPAD(CAST(et_ms AS STRING), 13, '0') || LPAD(CAST(p AS STRING), 5, '0') || "
                    "LPAD(CAST(o AS STRING), 19, '0') || CAST(`amount` AS STRING))")
    assert ir.field_sql(MERCH[0]) == "HW_DISTINCT(CAST(`merchant_id` AS STRING))"
    assert ir.field_sql(MERCH[0], engine="ansi") == (
        "ARRAY_AGG(DISTINCT CAST(`merchant_id` AS STRING)) FILTER (WHERE `merchant_id` IS NOT NULL)")
    assert "CAST(CAST(`x` AS DOUBLE) AS STRING)" in ir.field_sql(ir.IRField("x", "last", "float"))
    assert [x.sql_type for x in ALL_AMOUNT] == ["BIGINT", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE", "STRING"]
    assert MERCH[0].sql_type == "ARRAY<STRING>" and ir.IRField("n", "min", "long").sql_type == "BIGINT"


@pytest.mark.parametrize("value, ctype", [(5, "long"), (-3, "int"), (0.1, "double"), (1e-5, "double"), (1e300, "double"),
                                          (-0.0, "double"), (float("inf"), "double"), ("m|1 x", "string"), ("", "string"),
                                          (True, "boolean"), (False, "boolean"), (1767614400000, "timestamp")])
def test_last_key_round_trip(value, ctype):
    key = ir.encode_last(1767614400123, 7, 2**63 - 1, value, ctype)
    assert len(key) >= ir.LAST_KEY_LEN
    e = ir.decode_last(key, ctype)
    assert (e.event_time_ms, e.partition, e.offset) == (1767614400123, 7, 2**63 - 1)
    assert e.value == value and type(e.value) is type(value if ctype != "timestamp" else 1)


@pytest.mark.parametrize("java, value", [("1.0E-5", 1e-5), ("1.2345678901234567E20", 1.2345678901234567e20),
                                         ("Infinity", math.inf), ("-0.0", -0.0), ("100.0", 100.0)])
def test_last_parses_flink_double_strings_exactly(java, value):
    assert ir.decode_last("0" * ir.LAST_KEY_LEN + java, "double").value == value


@given(a=st.tuples(st.integers(0, 10**13 - 1), st.integers(0, 99_999), st.integers(0, 2**63 - 1)),
       b=st.tuples(st.integers(0, 10**13 - 1), st.integers(0, 99_999), st.integers(0, 2**63 - 1)))
def test_last_key_string_order_is_event_order(a, b):
    ka, kb = ir.encode_last(*a, "x", "string"), ir.encode_last(*b, "x", "string")
    assert (ka < kb) == (a < b)


def test_last_key_rejects_out_of_range_and_corrupt():
    with pytest.raises(IRError, match="out of range"):
        ir.encode_last(10**13, 0, 0, 1, "long")
    with pytest.raises(IRError, match="out of range"):
        ir.encode_last(0, 100_000, 0, 1, "long")
    with pytest.raises(IRError, match="corrupt last key"):
        ir.decode_last("12x", "long")


def test_update_ignores_nulls_and_picks_last_by_ts_partition_offset():
    t = _tile(ALL_AMOUNT, [5.0, None, 6.0, 9.0], ts=[10, 99, 10, 9], part=[0, 0, 0, 0], off=[7, 8, 3, 9])
    assert t["amount__cnt"] == 3 and t["amount__sum"] == 20.0 and math.isclose(t["amount__m2"], 26 / 3, rel_tol=1e-12)
    assert (t["amount__min"], t["amount__max"]) == (5.0, 9.0)
    assert ir.decode_last(t["amount__last"], "double") == (10, 0, 7, 5.0)  # the None at ts 99 is ignored
    p = _tile(ALL_AMOUNT, [1.0, 2.0], ts=[10, 10], part=[1, 0], off=[0, 50])
    assert ir.decode_last(p["amount__last"], "double").value == 1.0  # partition before offset


def test_update_accepts_masked_and_typed_arrays():
    fields = ir.ir_fields([("min", "n", "long"), ("max", "n", "long"), ("count", "n", "long"), ("last", "n", "long")])
    masked = np.ma.masked_array([3, 1, 2], mask=[False, True, False])
    t = ir.tile_from_events(fields, {"n": masked}, [1, 2, 3], [0, 0, 0], [0, 1, 2])
    assert (t["n__cnt"], t["n__min"], t["n__max"]) == (2, 2, 3) and type(t["n__min"]) is int
    assert ir.decode_last(t["n__last"], "long").value == 2
    plain = ir.tile_from_events(fields, {"n": np.array([4, 8])}, [1, 2], [0, 0], [0, 1])
    assert (plain["n__cnt"], plain["n__min"], plain["n__max"]) == (2, 4, 8)


def test_empty_batch_equals_empty_ir():
    t = ir.tile_from_events(ALL_AMOUNT, {"amount": np.array([], dtype=object)}, [], [], [])
    assert t == ir.empty_ir(ALL_AMOUNT)


def test_no_data_defaults_never_nan():
    feats = [_F(op, op, "amount", "double") for op in ("count", "sum", "mean", "min", "max", "last", "stddev")]
    feats.append(_F("distinct_count", "distinct_count", "merchant_id", "string"))
    got = ir.finalize(feats, ir.merge_many({}, ALL_AMOUNT + MERCH))
    assert got == {"count": 0, "sum": 0.0, "mean": None, "min": None, "max": None, "last": None,
                   "stddev": None, "distinct_count": None}
    assert type(got["count"]) is int and type(got["sum"]) is float


def test_mean_and_stddev_merge_across_tiles_conformance_value():
    tiles = {(300_000, 0): _tile(AMOUNT, [10, 20, 30]), (300_000, 300_000): _tile(AMOUNT, [100])}
    merged = ir.merge_many(tiles, AMOUNT)
    out = ir.finalize([_F("m", "mean", "amount", "double"), _F("s", "stddev", "amount", "double")], merged)
    assert out["m"] == 40.0
    assert math.isclose(out["s"], 35.35533905932738, rel_tol=1e-9)


def test_stddev_chan_combination_survives_a_large_offset():
    # One value per tile: per-tile M2 is exactly 0, so the window's M2 comes only from Chan's term.
    values = [1e9 + i for i in range(10)]
    tiles = {(1000, i * 1000): _tile(AMOUNT, [v]) for i, v in enumerate(values)}
    merged = ir.merge_many(tiles, AMOUNT)
    got = ir.finalize([_F("s", "stddev", "amount", "double")], merged)["s"]
    assert math.isclose(got, statistics.pstdev(values), rel_tol=1e-9)
    naive_m2 = sum(v * v for v in values) - merged["amount__sum"] ** 2 / 10
    assert not math.isclose(max(naive_m2, 0.0) / 10, statistics.pvariance(values), rel_tol=1e-3)  # what Chan avoids


def test_stddev_within_one_tile_does_not_cancel():
    # The review's case: twelve equal charges in one tile. sumsq - sum^2/n read 0.05; M2 is exactly 0.
    tile = _tile(AMOUNT, [2_500_000.01] * 12)
    assert tile["amount__m2"] == 0.0
    assert ir.finalize([_F("s", "stddev", "amount", "double")], ir.merge_many({(1, 0): tile}, AMOUNT)) == {"s": 0.0}
    spread = [1e9 + 0.5 * i for i in range(7)]
    t2 = _tile(AMOUNT, spread)
    assert math.isclose(math.sqrt(t2["amount__m2"] / 7), statistics.pstdev(spread), rel_tol=1e-9)


def test_single_value_stddev_is_exactly_zero():
    got = ir.finalize([_F("s", "stddev", "amount", "double")], ir.merge_many({(1, 0): _tile(AMOUNT, [0.1])}, AMOUNT))
    assert got == {"s": 0.0}


def test_merge_is_pure_and_checks_fields():
    a, b = _tile(ALL_AMOUNT, [1.0, 2.0]), _tile(ALL_AMOUNT, [3.0], ts=[5000])
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    m = ir.merge(a, b)
    assert (a, b) == (a0, b0) and m is not a and m is not b
    assert m["amount__cnt"] == 3 and "amount__m2" in m
    with pytest.raises(IRError, match="different fields"):
        ir.merge(a, _tile(AMOUNT, [1.0]))


def test_merge_many_rejects_duplicates_and_foreign_tiles():
    t = _tile(AMOUNT, [1.0])
    with pytest.raises(IRError, match="twice"):
        ir.merge_many([((1000, 0), t), ((1000, 0), t)], AMOUNT)
    with pytest.raises(IRError, match="lacks IR field"):
        ir.merge_many({(1000, 0): t}, ALL_AMOUNT)


def test_merge_many_projects_onto_requested_fields():
    t = _tile(ALL_AMOUNT, [1.0, 4.0])
    only_cnt = ir.fields_for("count", "amount", "double")
    assert ir.merge_many({(1000, 0): t}, only_cnt) == {"amount__cnt": 2}


def test_distinct_is_exact_across_tiles():
    a = _tile(MERCH, ["a", "a", None], column="merchant_id")
    b = _tile(MERCH, ["a", "b"], column="merchant_id")
    merged = ir.merge_many({(1, 0): a, (1, 1): b}, MERCH)
    assert ir.finalize([_F("d", "distinct_count", "merchant_id", "string")], merged) == {"d": 2}


def test_latest_ttl_is_inclusive_and_needs_t():
    fields = ir.fields_for("latest", "c", "string")
    t = ir.tile_from_events(fields, {"c": np.array(["FR"], dtype=object)}, [1_000], [0], [0])
    f = _F("c_latest", "latest", "c", "string", ttl_ms=500)
    assert ir.finalize([f], t, t_ms=1_500) == {"c_latest": "FR"}
    assert ir.finalize([f], t, t_ms=1_501) == {"c_latest": None}
    assert ir.finalize([_F("x", "latest", "c", "string")], t) == {"x": "FR"}
    with pytest.raises(IRError, match="needs t_ms"):
        ir.finalize([f], t)


def test_rows_round_trip_and_null_normalisation():
    fields = ALL_AMOUNT + MERCH
    t = {**_tile(ALL_AMOUNT, [1.5, 2.5]), **_tile(MERCH, ["b", "a"], column="merchant_id")}
    row = ir.to_row(t)
    assert row["merchant_id__distinct"] == ["a", "b"]
    assert ir.from_row(fields, row) == t
    nulls = ir.from_row(fields, {})
    assert nulls == ir.empty_ir(fields)
    assert ir.from_row(fields, {"merchant_id__distinct": ["x", None]})["merchant_id__distinct"] == frozenset({"x"})
    merged = ir.merge(t, t)
    assert ir.from_row(fields, ir.to_row(merged)) == merged  # a merged IR is a tile IR: m2 included


def test_ops_registry_declares_fields_types_and_docs():
    assert ir.get_op("mean").kinds == ("cnt", "sum") and ir.get_op("stddev").kinds == ("cnt", "sum", "m2")
    assert "string" not in ir.get_op("sum").accepts and "timestamp" in ir.get_op("max").accepts
    assert "Chan" in ir.get_op("stddev").doc
    assert set(ir.OPS) == {"count", "sum", "mean", "min", "max", "last", "latest", "stddev", "distinct_count"}


# ---------------------------------------------------------------- compiled var merge (last, distinct)

_ITEMS = st.lists(st.lists(st.sampled_from(["a", "b", "ab", "ba", "é", "中文", "a" * 40, "x"]), max_size=5),
                  max_size=8)


@settings(deadline=None)  # the first example loads (or compiles) the kernel
@given(rows=st.lists(_ITEMS, min_size=1, max_size=4), member=st.lists(st.booleans(), min_size=8, max_size=8))
@example(rows=[[[f"m{i % 23}-{j}" for j in range(6)] for i in range(8)]], member=[True, False] * 4)  # > 32 items
def test_cmerge_var_equals_set_union_and_max_key(rows: list[list[list[str]]], member: list[bool]) -> None:
    """``cmerge_var`` over spans of one buffer == ``merge_many``'s union size and greatest key, per
    (row, group); tile ``i`` of a row sits at position ``i`` and group 1 reads only ``member``."""
    chunks: list[bytes] = []
    start, end, pos, rowptr = [], [], [], [0]
    at = 0
    for tiles in rows:
        for i, items in enumerate(tiles):
            b = "\x1f".join(items).encode()
            chunks.append(b)
            start.append(at)
            end.append(at + len(b))
            pos.append(i)
            at += len(b)
        rowptr.append(len(pos))
    buf = np.frombuffer(b"".join(chunks) or b"\x00", np.uint8)
    groups = np.array([[True] * 8, member, [False] * 8], bool)  # group 2 reads nothing
    sizes = ir.cmerge_var(buf, np.array(start), np.array(end), np.array(rowptr), np.array(pos), groups, "distinct")
    last = ir.cmerge_var(buf, np.array(start), np.array(end), np.array(rowptr), np.array(pos), groups, "last")
    for r, tiles in enumerate(rows):
        for g in range(3):
            kept = [items for i, items in enumerate(tiles) if groups[g, i]]
            assert sizes[r, g] == len({x for items in kept for x in items})
            keys = ["\x1f".join(items).encode() for items in kept if items]
            a, b = last[r, g]
            assert (buf[a:b].tobytes() if a >= 0 else None) == (max(keys) if keys else None)
