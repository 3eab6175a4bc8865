"""The compiler's Java scalar functions give exactly what the SQL they replace gives, in Flink.

``HW_LAST_KEY`` against ``ir.last_key_sql``'s standard spelling (``LPAD``s and ``||``), and
``HW_EPOCH_MS`` against ``EXTRACT(EPOCH) * 1000 + EXTRACT(MILLISECOND)``, over the values a job
sees and the edges (negative and over-wide numbers, which ``LPAD`` truncates, NULL parts, text
beyond the BMP, a double's string form), and the key against Python's ``ir.encode_last``.
"""

from __future__ import annotations

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
