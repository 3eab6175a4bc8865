"""``HW_DISTINCT`` (``streamjobs/java``) on a real Flink MiniCluster, batch and streaming.

The pipeline tests check it through whole tiles; this one aims at the accumulator itself: its
bytewise order (code point order, as Python's ``sorted`` orders ``str``, which Java's
``String.compareTo`` does not for characters beyond the BMP), items longer and shorter than
Flink's 7-byte inline limit, NULLs, the empty string, and the two-phase merge and exchange of
accumulators (its own serializer) in both modes.
"""

from __future__ import annotations

import random

import pytest

from streamjobs import ir

pytestmark = [pytest.mark.integration, pytest.mark.flink]

_ITEMS = ["", "a", "b", "é", "\ue000", "\U0001f600", "\U0001f600x", "merchant-000123", "merchant-000124",
          "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "Ω" * 40]


def _rows(seed: int = 7) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    rows = []
    for g in range(12):
        pool = rng.sample(_ITEMS, rng.randint(1, len(_ITEMS)))
        for _ in range(rng.randint(1, 60)):
            rows.append((f"g{g}", None if rng.random() < 0.1 else rng.choice(pool)))
    rows.append(("nulls-only", None))
    rng.shuffle(rows)
    return rows


def _expected(rows):
    out: dict[str, list[str] | None] = {}
    for g, v in rows:
        out.setdefault(g, None)
        if v is not None:
            out[g] = sorted(set(out[g] or []) | {v})
    return out


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_hw_distinct_is_the_sorted_set_of_non_null_items(stack, mode):
    from pyflink.common import RowKind
    from pyflink.table import DataTypes

    from streamjobs.job import table_env

    extra = {"table.optimizer.agg-phase-strategy": "TWO_PHASE"}  # local + global: merge and exchange
    if mode == "streaming":
        extra.update({"table.exec.mini-batch.enabled": "true", "table.exec.mini-batch.allow-latency": "100 ms",
                      "table.exec.mini-batch.size": "17"})
    env = table_env(stack, mode=mode, extra=extra)
    env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION {ir.DISTINCT_FUNCTION} AS '{ir.DISTINCT_CLASS}' LANGUAGE JAVA")
    rows = _rows()
    env.create_temporary_view("src", env.from_elements(rows, DataTypes.ROW([
        DataTypes.FIELD("g", DataTypes.STRING()), DataTypes.FIELD("v", DataTypes.STRING())])))
    got: dict[str, list[str] | None] = {}
    with env.execute_sql(f"SELECT g, {ir.DISTINCT_FUNCTION}(v) AS d FROM src GROUP BY g").collect() as results:
        for row in results:  # streaming: a changelog; the last row of a group is its final value
            if row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                got[row[0]] = None if row[1] is None else list(row[1])
    assert got == _expected(rows)
