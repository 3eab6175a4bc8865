"""The compiler's Java scalar functions give exactly what the SQL they replace gives, in Flink.

``HW_LAST_KEY`` against ``ir.last_key_sql``'s standard spelling (``LPAD``s and ``||``), and
``HW_EPOCH_MS`` against ``EXTRACT(EPOCH) * 1000 + EXTRACT(MILLISECOND)``, over the values a job
sees and the edges (negative and over-wide numbers, which ``LPAD`` truncates, NULL parts, text
beyond the BMP, a double's string form), and the key against Python's ``ir.encode_last``.
"""

from __future__ import annotations

import math
import random

import pytest

from streamjobs import compiler, ir

pytestmark = [pytest.mark.integration, pytest.mark.flink]

_LONGS = [0, 1, 9, 10, 99999, 100000, 1_767_225_600_000, 9_999_999_999_999, 10_000_000_000_000, 2**63 - 1, -1, -2**63]
_INTS = [0, 1, 7, 99999, 100000, 2**31 - 1, -1, -2**31]
_TEXT = ["", "FR", "é", "\U0001f600", "Ω" * 40]


def _rows(n: int, seed: int = 11) -> list[tuple]:
    rng = random.Random(seed)

    def null(v):
        return None if rng.random() < 0.1 else v

    return [(null(rng.choice(_LONGS)), null(rng.choice(_INTS)), null(rng.choice(_LONGS)), null(rng.choice(_TEXT)),
             null(rng.choice([0.0, -0.0, 1.5, 1e300, 12.25])), rng.choice([0, 1, 999, 1_767_225_600_123, 2**41 + 7]))
            for _ in range(n)]


def test_java_functions_equal_the_sql_they_replace(stack):
    from pyflink.table import DataTypes as T

    from streamjobs.job import table_env

    env = table_env(stack, mode="batch")
    for stmt in compiler.function_ddl():
        env.execute_sql(stmt)
    rows = _rows(400)
    env.create_temporary_view("src", env.from_elements(rows, T.ROW([
        T.FIELD("et", T.BIGINT()), T.FIELD("p", T.INT()), T.FIELD("o", T.BIGINT()), T.FIELD("v", T.STRING()),
        T.FIELD("d", T.DOUBLE()), T.FIELD("ms", T.BIGINT())])))
    inputs = ir.SqlInputs(event_time_ms="`et`", partition="`p`", offset="`o`")
    cols = [ir.last_key_sql("`v`", "string", inputs, "flink"), ir.last_key_sql("`v`", "string", inputs),
            ir.last_key_sql("`d`", "double", inputs, "flink"), ir.last_key_sql("`d`", "double", inputs),
            f"{compiler.EPOCH_MS_FUNCTION}(TO_TIMESTAMP_LTZ(`ms`, 3))",
            "CAST(EXTRACT(EPOCH FROM TO_TIMESTAMP_LTZ(`ms`, 3)) AS BIGINT) * 1000 "
            "+ CAST(EXTRACT(MILLISECOND FROM TO_TIMESTAMP_LTZ(`ms`, 3)) AS BIGINT)", "`et`", "`p`", "`o`", "`v`", "`ms`"]
    with env.execute_sql("SELECT " + ", ".join(cols) + " FROM src").collect() as results:
        got = [tuple(r) for r in results]
    assert len(got) == len(rows)
    in_range = 0
    for java_s, sql_s, java_d, sql_d, java_ms, sql_ms, et, p, o, v, ms in got:
        assert (java_s, java_d, java_ms) == (sql_s, sql_d, sql_ms), (et, p, o, v)
        assert java_ms == ms
        if None not in (et, p, o, v) and 0 <= et < 10**13 and 0 <= p < 10**5 and o >= 0:
            assert java_s == ir.encode_last(et, p, o, v, "string")
            in_range += 1
    assert in_range > 20 and sum(r[0] is None for r in got) > 20  # both kinds of rows were drawn


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_hw_m2_is_stable_and_merges_in_flink(stack, mode):
    """``HW_M2`` per group against ``ir.tile_from_events``' M2, in both modes, forced into two-phase
    aggregation; streaming's small mini-batches make the global phase ``merge`` (Chan) every batch's
    partial accumulator into a non-empty one, as the job does when it runs without markers."""
    import numpy as np
    from pyflink.table import DataTypes as T

    from streamjobs.job import table_env

    extra = {"table.optimizer.agg-phase-strategy": "TWO_PHASE"}
    if mode == "streaming":
        extra |= {"table.exec.mini-batch.enabled": "true", "table.exec.mini-batch.allow-latency": "50 ms",
                  "table.exec.mini-batch.size": "7"}
    env = table_env(stack, mode=mode, parallelism=2, extra=extra)
    for stmt in compiler.function_ddl():
        env.execute_sql(stmt)
    rng = random.Random(5)
    groups = {
        "equal": [2_500_000.01] * 12,  # sumsq - sum^2/n read a stddev of 0.05 here
        "offset": [1e9 + rng.uniform(-1, 1) for _ in range(300)],
        "spread": [rng.uniform(-1e4, 1e4) for _ in range(300)],
        "one": [-3.5],
        "nulls": [None, None],
    }
    rows = [(g, x) for g, xs in groups.items() for x in xs]
    rng.shuffle(rows)
    env.create_temporary_view("src", env.from_elements(rows, T.ROW([T.FIELD("g", T.STRING()), T.FIELD("x", T.DOUBLE())])))
    field = ir.IRField("x", "m2", "double")
    sql = f"SELECT g, {ir.field_sql(field)} FROM src GROUP BY g"
    with env.execute_sql(sql).collect() as results:
        got: dict[str, float] = {}
        for r in results:  # a streaming aggregate emits updates; the last per group is its value
            got[r[0]] = r[1]
    assert set(got) == set(groups)
    assert got["equal"] == 0.0 and got["nulls"] == 0.0 and got["one"] == 0.0
    assert str(got["one"]) == "0.0"  # not -0.0
    for g in ("offset", "spread"):
        want = ir.tile_from_events([field], {"x": np.array(groups[g], dtype=object)},
                                   [0] * len(groups[g]), [0] * len(groups[g]), list(range(len(groups[g]))))["x__m2"]
        assert math.isclose(got[g], want, rel_tol=1e-9), (g, got[g], want)
        naive = sum(x * x for x in groups[g]) - sum(groups[g]) ** 2 / len(groups[g])
        if g == "offset":  # what the old per-tile formula gave: off by orders of magnitude
            assert not math.isclose(naive, want, rel_tol=1e-3)
