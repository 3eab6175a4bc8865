"""The op registry: tile IR fields, vectorised update, merge, finalize and the SQL per field.

The only place aggregation meaning lives (STYLE.md, "Five rules"). A tile IR is a plain
``dict[str, value]`` keyed ``<column>__<kind>``; treat it as immutable: every function here
returns new dicts and never mutates its inputs.

Field kinds (shared across ops on one column: count/mean/stddev share ``cnt``)::

    cnt      BIGINT         COUNT(col)                                 empty 0
    sum      DOUBLE         COALESCE(SUM(CAST(col AS DOUBLE)), 0)      empty 0.0
    m2       DOUBLE         HW_M2(CAST(col AS DOUBLE))                 empty 0.0
    min/max  column type    MIN(col) / MAX(col)                        empty None
    last     STRING         MAX(<composite key, see encode_last>)      empty None
    distinct ARRAY<STRING>  HW_DISTINCT(CAST(col AS STRING))           empty frozenset() (Python)

``m2`` is the tile's sum of squared deviations from its mean, which stddev needs:
``HW_M2`` (``M2_FUNCTION``, ``M2Agg`` in ``streamjobs/java``) updates (n, mean, M2) per value by
Welford's method and combines partial accumulators by Chan et al., the formula :func:`merge`
applies to tiles. Tiles once kept ``SUM(x*x)`` and took ``sumsq - sum^2/n``, which cancels when the
spread is small against the values (twelve equal charges of 2,500,000.01 in one tile read a
stddev of 0.05, not 0).

``HW_DISTINCT`` (``DISTINCT_FUNCTION``) is the set of distinct non-null values as a sorted array,
NULL when empty: a Java aggregate in ``streamjobs/java`` (``DistinctSetAgg``). Flink's
``ARRAY_AGG(DISTINCT ...)`` gives the same sets, but with it the whole features job measured
3.1-3.4k instead of 5.5k events/s streaming and 5.3-6.0k instead of 8.2k replaying
(bench/flink_job.py, bench/replay.py, 2-core machine, 2026-11-22).
Engines without it (DuckDB in benchmarks) take ``field_sql(..., engine="ansi")``, the standard
``ARRAY_AGG(DISTINCT ...) FILTER (WHERE col IS NOT NULL)``.

NULL column values are ignored by every field (SQL semantics). ``m2`` merges by Chan et al.'s
pairwise formula, which reads the column's ``cnt`` and ``sum`` (stddev always has all three).
No data finalizes to count 0 and sum 0.0; every other op (distinct_count too) to None, never NaN.
Imports only the standard library, numpy and ``streamjobs.errors`` (and numba, on first use of the
compiled merge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache, reduce
from operator import add
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from streamjobs.errors import IRError, UnknownOpError

__all__ = [
    "IR", "COLUMN_TYPES", "NUMERIC_TYPES", "ORDERED_TYPES", "SCALAR_TYPES", "FIELD_KINDS",
    "LAST_TS_DIGITS", "LAST_PARTITION_DIGITS", "LAST_OFFSET_DIGITS", "LAST_KEY_LEN",
    "IRField", "Op", "OPS", "SqlInputs", "LastEntry", "FeatureLike",
    "get_op", "fields_for", "ir_fields", "field_sql", "last_key_sql", "DISTINCT_FUNCTION", "DISTINCT_CLASS",
    "LAST_KEY_FUNCTION", "LAST_KEY_CLASS", "M2_FUNCTION", "M2_CLASS",
    "value_to_str", "str_to_value", "encode_last", "decode_last",
    "empty_ir", "tile_from_events", "update", "merge", "merge_many", "merge_columns", "finalize", "finalize_op",
    "to_row", "from_row", "cmerge", "cmerge_var", "vfinalize",
]

IR = Mapping[str, Any]

#: Column types Headwater understands (Avro-derived; ``timestamp`` = epoch-ms long).
COLUMN_TYPES = ("int", "long", "float", "double", "timestamp", "string", "boolean", "other")
NUMERIC_TYPES = frozenset({"int", "long", "float", "double"})
ORDERED_TYPES = NUMERIC_TYPES | {"timestamp"}
SCALAR_TYPES = ORDERED_TYPES | {"string", "boolean"}
_INT_TYPES = frozenset({"int", "long", "timestamp"})
_SQL_TYPES = MappingProxyType({
    "int": "INT", "long": "BIGINT", "float": "FLOAT", "double": "DOUBLE",
    "timestamp": "BIGINT", "string": "STRING", "boolean": "BOOLEAN",
})
#: Canonical field order inside one column (plan and tile schema follow it).
FIELD_KINDS = ("cnt", "sum", "m2", "min", "max", "last", "distinct")


@dataclass(frozen=True)
class IRField:
    """One IR column of a tile: ``<column>__<kind>``."""

    column: str
    kind: str
    column_type: str

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise IRError(f"unknown IR field kind {self.kind!r}; known: {', '.join(FIELD_KINDS)}")
        if self.column_type not in COLUMN_TYPES:
            raise IRError(f"unknown column type {self.column_type!r} for {self.column}")

    @cached_property
    def name(self) -> str:  # cached: the online writer asks for it per field per tile
        return f"{self.column}__{self.kind}"

    @property
    def sql_type(self) -> str:
        """Flink SQL type of the aggregate this field's SQL produces."""
        if self.kind == "cnt":
            return "BIGINT"
        if self.kind in ("sum", "m2"):
            return "DOUBLE"
        if self.kind in ("min", "max"):
            return _SQL_TYPES[self.column_type]
        if self.kind == "last":
            return "STRING"
        return "ARRAY<STRING>"

    @property
    def empty(self) -> Any:
        return {"cnt": 0, "sum": 0.0, "m2": 0.0, "distinct": frozenset()}.get(self.kind)


# ---------------------------------------------------------------- value <-> string (last, distinct)

def value_to_str(value: Any, column_type: str) -> str:
    """Python twin of the SQL ``CAST(col AS STRING)`` used in ``last`` and ``distinct``.

    Doubles (and floats, widened to double first, as the SQL does) use ``repr``; Flink emits Java's
    ``Double.toString``. The strings differ in form ("1e-05" vs "1.0E-5") but both parse back to the
    same double with ``float()``, which is all ``last`` needs. Booleans are 'TRUE'/'FALSE' as in Flink.
    """
    if column_type in _INT_TYPES:
        return str(int(value))
    if column_type in ("float", "double"):
        return repr(float(value))
    if column_type == "boolean":
        return "TRUE" if bool(value) else "FALSE"
    return str(value)


def str_to_value(text: str, column_type: str) -> Any:
    """Inverse of the SQL/Python string forms: ``int()``, ``float()`` (exact round trip), bool, str."""
    if column_type in _INT_TYPES:
        return int(text)
    if column_type in ("float", "double"):
        return float(text)
    if column_type == "boolean":
        return text.strip().upper() == "TRUE"
    return text


# ---------------------------------------------------------------- composite `last` key
LAST_TS_DIGITS, LAST_PARTITION_DIGITS, LAST_OFFSET_DIGITS = 13, 5, 19
LAST_KEY_LEN = LAST_TS_DIGITS + LAST_PARTITION_DIGITS + LAST_OFFSET_DIGITS


class LastEntry(NamedTuple):
    event_time_ms: int
    partition: int
    offset: int
    value: Any


def encode_last(event_time_ms: int, partition: int, offset: int, value: Any, column_type: str) -> str:
    """``<event_time 13 digits><partition 5><offset 19><value string>``: string order = (ts, p, o) order."""
    ts, p, o = int(event_time_ms), int(partition), int(offset)
    if not (0 <= ts < 10**LAST_TS_DIGITS and 0 <= p < 10**LAST_PARTITION_DIGITS and 0 <= o < 10**LAST_OFFSET_DIGITS):
        raise IRError(f"last key out of range: event_time={ts} partition={p} offset={o}")
    return f"{ts:013d}{p:05d}{o:019d}{value_to_str(value, column_type)}"


def _check_last(text: str) -> None:
    if len(text) < LAST_KEY_LEN or not text[:LAST_KEY_LEN].isdigit():
        raise IRError(f"corrupt last key {text[:60]!r}: expected {LAST_KEY_LEN} digits then the value")


def last_value(text: str, column_type: str) -> Any:
    """The value a last key carries (``decode_last(text).value`` without building the entry)."""
    _check_last(text)
    return str_to_value(text[LAST_KEY_LEN:], column_type)


def decode_last(text: str, column_type: str) -> LastEntry:
    """Parse exactly what :func:`last_key_sql` (or :func:`encode_last`) builds."""
    _check_last(text)
    a, b = LAST_TS_DIGITS, LAST_TS_DIGITS + LAST_PARTITION_DIGITS
    return LastEntry(int(text[:a]), int(text[a:b]), int(text[b:LAST_KEY_LEN]),
                     str_to_value(text[LAST_KEY_LEN:], column_type))


@dataclass(frozen=True)
class SqlInputs:
    """SQL expressions the compiler binds for the ``last`` key (all BIGINT/INT, non-negative)."""

    event_time_ms: str = "`event_time_ms`"
    partition: str = "`partition`"
    offset: str = "`offset`"


def _value_sql(column_sql: str, column_type: str) -> str:
    if column_type == "float":  # widen first so Java prints the double Python will parse
        return f"CAST(CAST({column_sql} AS DOUBLE) AS STRING)"
    return f"CAST({column_sql} AS STRING)"


def last_key_sql(column_sql: str, column_type: str, inputs: SqlInputs = SqlInputs(),
                 engine: Literal["flink", "ansi"] = "ansi") -> str:
    """The composite key expression; NULL when the value is NULL (``||`` propagates NULL).

    ``engine="flink"``: :data:`LAST_KEY_FUNCTION`, a Java function giving the same string without
    Flink's per-part Java strings (proven equal to this spelling in Flink by tests/test_flink_udfs.py)."""
    if engine == "flink":
        return (f"{LAST_KEY_FUNCTION}(CAST({inputs.event_time_ms} AS BIGINT), CAST({inputs.partition} AS INT), "
                f"CAST({inputs.offset} AS BIGINT), {_value_sql(column_sql, column_type)})")
    return (
        f"LPAD(CAST({inputs.event_time_ms} AS STRING), {LAST_TS_DIGITS}, '0') || "
        f"LPAD(CAST({inputs.partition} AS STRING), {LAST_PARTITION_DIGITS}, '0') || "
        f"LPAD(CAST({inputs.offset} AS STRING), {LAST_OFFSET_DIGITS}, '0') || "
        f"{_value_sql(column_sql, column_type)}"
    )


#: the distinct-set aggregate every Flink job registers (``streamjobs.compiler.function_ddl``)
DISTINCT_FUNCTION = "HW_DISTINCT"
DISTINCT_CLASS = "io.headwater.flink.DistinctSetAgg"
#: the ``last`` key's Java spelling (``last_key_sql(..., engine="flink")``), registered alongside
LAST_KEY_FUNCTION = "HW_LAST_KEY"
LAST_KEY_CLASS = "io.headwater.flink.LastKey"
#: the per-tile M2 aggregate (Welford within a tile, Chan between partial accumulators), registered alongside
M2_FUNCTION = "HW_M2"
M2_CLASS = "io.headwater.flink.M2Agg"


def field_sql(field: IRField, column_sql: str | None = None, inputs: SqlInputs = SqlInputs(),
              last_key_column: str | None = None, engine: Literal["flink", "ansi"] = "flink") -> str:
    """The Flink SQL aggregate expression computing ``field`` over one tile's rows.

    ``last_key_column``: a column already holding :func:`last_key_sql` for this field (the
    compiler computes it once per event instead of once per resolution). ``engine="ansi"``: the
    standard-SQL spellings of ``m2`` and ``distinct`` for engines without :data:`M2_FUNCTION` and
    :data:`DISTINCT_FUNCTION`."""
    c = column_sql or f"`{field.column}`"
    if field.kind == "last" and last_key_column is not None:
        return f"MAX({last_key_column})"
    d = f"CAST({c} AS DOUBLE)"
    if field.kind == "cnt":
        return f"COUNT({c})"
    if field.kind == "sum":
        return f"COALESCE(SUM({d}), CAST(0 AS DOUBLE))"
    if field.kind == "m2":
        if engine == "flink":
            return f"{M2_FUNCTION}({d})"  # ignores NULLs; 0.0 when there is no value
        return f"COALESCE(VAR_POP({d}) * COUNT({c}), CAST(0 AS DOUBLE))"
    if field.kind in ("min", "max"):
        return f"{field.kind.upper()}({c})"
    if field.kind == "last":
        return f"MAX({last_key_sql(c, field.column_type, inputs, engine)})"
    if engine == "flink":
        return f"{DISTINCT_FUNCTION}({_value_sql(c, field.column_type)})"  # ignores NULLs itself
    # ARRAY_AGG keeps NULLs by default; the FILTER keeps SQL's "NULL is ignored" rule.
    return f"ARRAY_AGG(DISTINCT {_value_sql(c, field.column_type)}) FILTER (WHERE {c} IS NOT NULL)"


# ---------------------------------------------------------------- ops

def _stat(ir: IR, column: str) -> tuple[int, float, float]:
    """(n, sum, M2) of an IR's column (M2 0.0 when n is 0)."""
    n = int(ir[f"{column}__cnt"])
    s = float(ir[f"{column}__sum"])
    return n, s, float(ir[f"{column}__m2"]) if n else 0.0


def _fin_mean(ir: IR, c: str, t: str) -> float | None:
    n = int(ir[f"{c}__cnt"])
    return float(ir[f"{c}__sum"]) / n if n else None


def _fin_stddev(ir: IR, c: str, t: str) -> float | None:
    n, _, m2 = _stat(ir, c)
    return math.sqrt(m2 / n) if n else None


def _fin_last(ir: IR, c: str, t: str) -> Any:
    key = ir[f"{c}__last"]
    return None if key is None else last_value(key, t)


@dataclass(frozen=True)
class Op:
    """One op: the field kinds it reads, the column types it accepts, and its finalize."""

    name: str
    kinds: tuple[str, ...]
    accepts: frozenset[str]
    finalize: Callable[[IR, str, str], Any]
    doc: str


_ALL_TYPES = frozenset(COLUMN_TYPES)
OPS: Mapping[str, Op] = MappingProxyType({op.name: op for op in (
    Op("count", ("cnt",), _ALL_TYPES, lambda ir, c, t: int(ir[f"{c}__cnt"]), "non-null values; 0 when empty"),
    Op("sum", ("sum",), NUMERIC_TYPES, lambda ir, c, t: float(ir[f"{c}__sum"]), "double sum; 0.0 when empty"),
    Op("mean", ("cnt", "sum"), NUMERIC_TYPES, _fin_mean, "sum/cnt; None when empty"),
    Op("min", ("min",), ORDERED_TYPES, lambda ir, c, t: ir[f"{c}__min"], "None when empty"),
    Op("max", ("max",), ORDERED_TYPES, lambda ir, c, t: ir[f"{c}__max"], "None when empty"),
    Op("last", ("last",), SCALAR_TYPES, _fin_last, "value with greatest (event_time, partition, offset)"),
    Op("latest", ("last",), SCALAR_TYPES, _fin_last, "as last; finalize applies the TTL"),
    Op("stddev", ("cnt", "sum", "m2"), NUMERIC_TYPES, _fin_stddev,
       "population; per-tile M2 by Welford (HW_M2), tiles combined by Chan et al."),
    Op("distinct_count", ("distinct",), SCALAR_TYPES, lambda ir, c, t: len(ir[f"{c}__distinct"]) or None,
       "exact: set of CAST(col AS STRING); None when empty (conformance randomized_small)"),
)})


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}; known ops: {', '.join(OPS)}") from None


def fields_for(op: str, column: str, column_type: str) -> tuple[IRField, ...]:
    return tuple(IRField(column, k, column_type) for k in get_op(op).kinds)


def ir_fields(features: Iterable[tuple[str, str, str]]) -> tuple[IRField, ...]:
    """Deduplicated fields for ``(op, column, column_type)`` triples, ordered by (column, kind order)."""
    out: dict[str, IRField] = {}
    types: dict[str, str] = {}
    for op, column, column_type in features:
        prev = types.setdefault(column, column_type)
        if prev != column_type:
            raise IRError(f"column {column!r} used with two types: {prev} and {column_type}")
        for f in fields_for(op, column, column_type):
            out.setdefault(f.name, f)
    return tuple(sorted(out.values(), key=lambda f: (f.column, FIELD_KINDS.index(f.kind))))


# ---------------------------------------------------------------- build, update, merge

def empty_ir(fields: Iterable[IRField]) -> dict[str, Any]:
    return {f.name: f.empty for f in fields}


def _valid_mask(values: Any) -> np.ndarray:
    """Non-null rows of a column batch: masked arrays use their mask, object arrays ``None``.
    NaN is a value, not NULL (as in SQL)."""
    if isinstance(values, np.ma.MaskedArray):
        return ~np.ma.getmaskarray(values)
    arr = np.asarray(values)
    if arr.dtype == object:
        return np.fromiter((v is not None for v in arr), dtype=bool, count=arr.size)
    return np.ones(arr.shape, dtype=bool)


def _typed(vals: np.ndarray, column_type: str) -> np.ndarray:
    if column_type in _INT_TYPES:
        return vals.astype(np.int64)
    if column_type in ("float", "double"):
        return vals.astype(np.float64)
    return vals


def _lt(x: Any, y: Any) -> bool:
    """Total order with -0.0 < 0.0 (as Java's Double.compare), so min/max are commutative bit for bit."""
    return x < y or (x == y and isinstance(x, float) and isinstance(y, float)
                     and math.copysign(1.0, x) < math.copysign(1.0, y))


def _extreme(typed: np.ndarray, kind: str) -> Any:
    if not typed.size:
        return None
    v = (typed.min() if kind == "min" else typed.max()).item()
    if v == 0 and typed.dtype.kind == "f":  # numpy's pick among signed zeros depends on order
        neg = np.signbit(typed[typed == 0])
        v = -0.0 if (neg.any() if kind == "min" else neg.all()) else 0.0
    return v


def tile_from_events(
    fields: Sequence[IRField],
    columns: Mapping[str, Any],
    event_time_ms: Any,
    partition: Any,
    offset: Any,
) -> dict[str, Any]:
    """Vectorised IR of one tile's events (arrays aligned row by row; NULL = None or masked)."""
    ts = np.asarray(event_time_ms, dtype=np.int64)
    part = np.asarray(partition, dtype=np.int64)
    off = np.asarray(offset, dtype=np.int64)
    out: dict[str, Any] = {}
    for f in fields:
        raw = columns[f.column]
        if f.kind == "last":
            mask = _valid_mask(raw)
            if not mask.any():
                out[f.name] = None
                continue
            idx = np.flatnonzero(mask)
            best = idx[np.lexsort((off[idx], part[idx], ts[idx]))[-1]]
            # (partition, offset) is unique in Kafka; should a record repeat, the max string wins as in merge.
            ties = idx[(ts[idx] == ts[best]) & (part[idx] == part[best]) & (off[idx] == off[best])]
            vals_obj = np.asarray(raw, dtype=object)
            out[f.name] = max(encode_last(ts[i], part[i], off[i], vals_obj[i], f.column_type) for i in ties)
            continue
        vals = np.asarray(raw)[_valid_mask(raw)]
        if f.kind == "cnt":
            out[f.name] = int(vals.size)
        elif f.kind == "sum":
            out[f.name] = float(np.sum(vals.astype(np.float64))) if vals.size else 0.0
        elif f.kind == "m2":  # two passes, shifted by the first value (equal values give exactly 0,
            d = vals.astype(np.float64)  # as HW_M2's one Welford pass does); the two agree to rounding
            with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN propagate, as in Java
                d = d - d[0] if d.size else d
                out[f.name] = float(np.sum(np.square(d - np.mean(d)))) + 0.0 if d.size else 0.0
        elif f.kind in ("min", "max"):
            out[f.name] = _extreme(_typed(vals, f.column_type), f.kind)
        else:  # distinct
            out[f.name] = frozenset(value_to_str(v, f.column_type) for v in vals.tolist())
    return out


def update(ir: IR, fields: Sequence[IRField], columns: Mapping[str, Any], event_time_ms: Any,
           partition: Any, offset: Any) -> dict[str, Any]:
    """``merge(ir, tile_from_events(...))``: a new tile IR with exactly the stored fields, as the SQL
    would produce; upserting a tile means writing this whole dict."""
    return merge(ir, tile_from_events(fields, columns, event_time_ms, partition, offset))


@lru_cache(maxsize=4096)  # a handful of field names, parsed on every merge: the scalar fetch's top cost
def _kind(key: str) -> tuple[str, str]:
    column, _, kind = key.rpartition("__")
    return column, kind


@lru_cache(maxsize=1024)
def _merge_plan(keys: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Per key of an IR: its kind, ``m2`` keys last (their merge reads the inputs' cnt and sum,
    never the output's); and the columns whose M2 a merge carries."""
    kinds = tuple((k, _kind(k)[1]) for k in keys)
    present = set(keys)
    for k, kind in kinds:
        if kind not in FIELD_KINDS:
            raise IRError(f"unknown IR field {k!r}")
        c = _kind(k)[0]
        if kind == "m2" and not {f"{c}__cnt", f"{c}__sum"} <= present:
            raise IRError(f"IR field {k!r} needs {c}__cnt and {c}__sum to merge")
    stats = tuple(_kind(k)[0] for k, kind in kinds if kind == "m2")
    return tuple((k, kind) for k, kind in kinds if kind != "m2"), stats


def _min2(x: Any, y: Any) -> Any:
    """The smaller of two min states (None = no value yet)."""
    if x is None:
        return y
    if y is None:
        return x
    return y if _lt(y, x) else x


def _max2(x: Any, y: Any) -> Any:
    if x is None:
        return y
    if y is None:
        return x
    return y if _lt(x, y) else x


def _last2(x: Any, y: Any) -> Any:
    """The larger of two last keys (strings: a total order)."""
    if x is None:
        return y
    if y is None:
        return x
    return max(x, y)


_PICK = {"min": _min2, "max": _max2, "last": _last2}


def _chan(na: int, sa: float, m2a: float, nb: int, sb: float, m2b: float) -> float:
    """M2 of two parts: ``M2a + M2b + d^2 * na * nb / n``, ``d = sb/nb - sa/na`` (Chan, Golub & LeVeque)."""
    if na == 0 or nb == 0:
        return m2a if nb == 0 else m2b
    d = sb / nb - sa / na
    return m2a + m2b + d * d * (na * nb) / (na + nb)  # int product: symmetric bit for bit


def _merge2(a: IR, b: IR, kinds: tuple[tuple[str, str], ...], stats: tuple[str, ...]) -> dict[str, Any]:
    """``merge`` once the key sets are known to match (``_fold_csr`` is the compiled twin of these
    formulas and ``merge_many``'s column folds apply the same ones: all property-tested bit-identical)."""
    out: dict[str, Any] = {}
    for key, kind in kinds:
        x, y = a[key], b[key]
        if kind == "cnt" or kind == "sum":
            out[key] = x + y
        elif kind == "distinct":
            out[key] = x | y
        else:
            out[key] = _PICK[kind](x, y)
    for column in stats:
        out[f"{column}__m2"] = _chan(*_stat(a, column), *_stat(b, column))
    return out


def merge(a: IR, b: IR) -> dict[str, Any]:
    """Associative, commutative, pure merge of two IRs with the same fields.

    Exact for cnt/min/max/last/distinct. Float sums are commutative but their rounding depends on
    grouping, which is why :func:`merge_many` fixes the order. ``m2`` merges by :func:`_chan`.
    """
    ka = list(a)
    kb = set(b)
    if len(ka) != len(kb) or not kb.issuperset(ka):
        raise IRError(f"cannot merge IRs with different fields: {sorted(set(ka) ^ kb)}")
    return _merge2(a, b, *_merge_plan(tuple(ka)))


def _first(kv: tuple[tuple[int, int], Any]) -> tuple[int, int]:
    return kv[0]


def merge_many(
    tiles: Mapping[tuple[int, int], IR] | Iterable[tuple[tuple[int, int], IR]],
    fields: Sequence[IRField],
) -> dict[str, Any]:
    """Merge tiles keyed ``(resolution_ms, tile_start)`` into one window IR, projected onto ``fields``.

    Canonical order: a left fold from ``empty_ir(fields)`` over tiles sorted by
    ``(resolution, tile_start)``, so the same tiles give bit-identical floats online and offline,
    whatever order a store returned them in. Missing tiles are simply absent (empty). Each step is
    :func:`merge` of the accumulator and the tile projected onto ``fields`` (property-tested bit for
    bit), computed one field at a time by :func:`merge_columns`.
    """
    items = list(tiles.items() if isinstance(tiles, Mapping) else tiles)
    if len({k for k, _ in items}) != len(items):
        raise IRError("merge_many got the same (resolution, tile_start) twice")
    ordered = [tile for _, tile in sorted(items, key=_first)]
    try:
        return merge_columns({f.name: [t[f.name] for t in ordered] for f in fields}, fields)
    except KeyError as exc:
        raise IRError(f"tile lacks IR field {exc.args[0]!r}; was it written by another plan?") from exc


def merge_columns(columns: Mapping[str, Sequence[Any]], fields: Sequence[IRField]) -> dict[str, Any]:
    """The fold of :func:`merge_many` over tiles given as columns (``columns[name][i]``: field
    ``name`` of the i-th tile in canonical order). Fields are independent except M2, so the fold
    runs one field at a time: C-level ``reduce`` for the sums, one union for distinct sets, the
    None-aware pickers for min/max/last, and M2 by ``_chan`` over the running count and sum. The online reader decodes an entity's tiles into columns once
    and passes each window group its slice. A distinct column may hold any partition of the tiles'
    sets already unioned (the reader passes one set per group): set union is exact in any grouping."""
    acc: dict[str, Any] = empty_ir(fields)
    kinds, stats = _merge_plan(tuple(f.name for f in fields))
    if not kinds or not len(columns[kinds[0][0]]):
        return acc
    for key, kind in kinds:
        col = columns[key]
        if kind == "cnt" or kind == "sum":
            acc[key] = reduce(add, col, acc[key])  # a left fold (``sum`` of floats may compensate)
        elif kind == "distinct":
            acc[key] = acc[key].union(*col)  # one pass; a fold of ``|`` copies the growing set per tile
        else:
            acc[key] = reduce(_PICK[kind], col, acc[key])
    for column in stats:
        na, sa, m2 = 0, 0.0, 0.0  # _stat of the empty accumulator
        for nb, sb, qb in zip(columns[f"{column}__cnt"], columns[f"{column}__sum"], columns[f"{column}__m2"]):
            nb, sb = int(nb), float(sb)
            m2 = _chan(na, sa, m2, nb, sb, float(qb) if nb else 0.0)  # _stat of a tile
            na, sa = na + nb, sa + sb
        acc[f"{column}__m2"] = m2
    return acc


# ---------------------------------------------------------------- finalize

class FeatureLike(Protocol):
    """What finalize needs of a feature (``plan.Feature`` satisfies it)."""

    name: str
    op: str
    column: str
    column_type: str


def finalize_op(op: str, column: str, column_type: str, ir: IR) -> Any:
    return get_op(op).finalize(ir, column, column_type)


def finalize(features: Iterable[FeatureLike], ir: IR, *, t_ms: int | None = None) -> dict[str, Any]:
    """Feature values from a merged IR. ``latest`` with ``ttl_ms`` needs ``t_ms``: the entry must be
    at or after ``t - ttl`` (DESIGN: inclusive), else None. Never NaN for no data."""
    out: dict[str, Any] = {}
    for f in features:
        if f.op == "latest" and getattr(f, "ttl_ms", None) is not None:
            out[f.name] = finalize_last(f, (ir[f"{f.column}__last"],), t_ms)[0]
        else:
            out[f.name] = finalize_op(f.op, f.column, f.column_type, ir)
    return out


def finalize_last(f: FeatureLike, keys: Sequence[str | None], t_ms: int | None = None) -> list[Any]:
    """``finalize`` of one last/latest feature over many merged keys (the online reader's batch form):
    the key's value, None for no key, and for ``latest`` with a TTL None when older than ``t - ttl``."""
    ttl = getattr(f, "ttl_ms", None) if f.op == "latest" else None
    ctype = f.column_type
    if ttl is None:
        return [None if k is None else last_value(k, ctype) for k in keys]
    if t_ms is None:
        raise IRError(f"finalize of latest feature {f.name!r} with a TTL needs t_ms")
    since = t_ms - ttl
    out = []
    for k in keys:
        v = None if k is None else last_value(k, ctype)  # checks the key, which starts with its event time
        out.append(v if v is not None and int(k[:LAST_TS_DIGITS]) >= since else None)
    return out


# ---------------------------------------------------------------- rows (SQL / Parquet / Redis) <-> IR

def to_row(ir: IR) -> dict[str, Any]:
    """Tile IR to a serialisable row: ``distinct`` as a sorted list."""
    out: dict[str, Any] = {}
    for key, value in ir.items():
        out[key] = sorted(value) if _kind(key)[1] == "distinct" else value
    return out


def from_row(fields: Sequence[IRField], row: Mapping[str, Any]) -> dict[str, Any]:
    """Row from SQL/Parquet/Redis to a tile IR: NULL cnt/sum -> 0, NULL array -> empty set."""
    out: dict[str, Any] = {}
    for f in fields:
        v = row.get(f.name)
        if f.kind == "cnt":
            out[f.name] = int(v or 0)
        elif f.kind in ("sum", "m2"):
            out[f.name] = float(v or 0.0)
        elif f.kind in ("min", "max"):
            if v is not None and f.column_type in _INT_TYPES:
                v = int(v)
            elif v is not None and f.column_type in NUMERIC_TYPES:
                v = float(v)  # FLOAT widens to double, as everywhere else
            out[f.name] = v
        elif f.kind == "last":
            out[f.name] = None if v is None else str(v)
        else:
            out[f.name] = frozenset(str(x) for x in (v or ()) if x is not None)
    return out


# ---------------------------------------------------------------- finalize of compiled merges

def vfinalize(f: FeatureLike, m: Mapping[str, Any], g: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) of a numeric op from ``cmerge`` output (window group ``g`` on axis 1);
    ``distinct_count`` from ``m["<col>__distinct"]``, the sizes of the merged sets."""
    c = f.column
    if f.op == "distinct_count":  # OPS["distinct_count"]: len(set) or None
        v = m[f"{c}__distinct"][:, g]
        return v, v == 0
    if f.op in ("count", "sum"):
        v = m[f"{c}__{'cnt' if f.op == 'count' else 'sum'}"][:, g]
        return v, np.zeros(len(v), bool)
    if f.op in ("min", "max"):
        return m[f"{c}__{f.op}"][:, g], m[f"{c}__{f.op}__null"][:, g]
    cnt = m[f"{c}__cnt"][:, g]
    safe = np.where(cnt > 0, cnt, 1)
    if f.op == "mean":
        return m[f"{c}__sum"][:, g] / safe, cnt == 0
    if f.op == "stddev":
        return np.sqrt(m[f"{c}__m2"][:, g] / safe), cnt == 0
    raise IRError(f"no vectorised finalize for op {f.op!r}")


# ---------------------------------------------------------------- compiled merge (online reader, numba)
# ``merge_many`` for many rows and window groups at once, over tiles in CSR form: row ``e``'s
# tiles are ``rowptr[e]:rowptr[e+1]`` in canonical order, tile ``t`` sits at layout position
# ``pos[t]``, and window group ``g`` folds the tiles with ``member[g, pos[t]]``. One pass, no
# padding, no gathers; the loops below are plain Python that numba compiles (``_jit``), with the
# fold's formulas as ``merge_columns`` applies them: sums a left fold from 0, min/max by ``_lt``
# (NaN sticks only when first), M2 by ``_chan`` over the running (count, sum). Checked bit for bit
# against ``merge_many``/``finalize`` by tests/test_online_store.py and tests/test_ir.py.

_ADD_I, _ADD_F, _MAX_F, _MIN_F, _MAX_I, _MIN_I, _M2_OP = range(7)


def _fold_csr(rowptr, pos, member, ints, floats, nulls, prog, out_i, out_f, out_null):  # pragma: no cover - compiled
    n, n_groups, k_ops = rowptr.shape[0] - 1, member.shape[0], prog.shape[0]
    na = np.zeros(k_ops, np.int64)
    sa = np.zeros(k_ops, np.float64)
    for e in range(n):
        for g in range(n_groups):
            for k in range(k_ops):
                out_i[e, g, k] = 0
                out_f[e, g, k] = 0.0
                out_null[e, g, k] = True
                na[k] = 0
                sa[k] = 0.0
            for t in range(rowptr[e], rowptr[e + 1]):
                if not member[g, pos[t]]:
                    continue
                for k in range(k_ops):
                    op, c = prog[k, 0], prog[k, 1]
                    if op == 0:  # _ADD_I: cnt
                        out_i[e, g, k] += ints[t, c]
                    elif op == 1:  # _ADD_F: sum
                        out_f[e, g, k] = out_f[e, g, k] + floats[t, c]
                    elif op == 2 or op == 3:  # _MAX_F, _MIN_F
                        if nulls[t, prog[k, 2]]:
                            continue
                        y = floats[t, c]
                        if out_null[e, g, k]:
                            out_f[e, g, k] = y
                            out_null[e, g, k] = False
                            continue
                        x = out_f[e, g, k]
                        if op == 3:
                            x, y = y, x
                        if x < y or (x == y and math.copysign(1.0, x) < math.copysign(1.0, y)):  # _lt(x, y)
                            out_f[e, g, k] = floats[t, c]
                    elif op == 4 or op == 5:  # _MAX_I, _MIN_I
                        if nulls[t, prog[k, 2]]:
                            continue
                        v = ints[t, c]
                        if out_null[e, g, k]:
                            out_i[e, g, k] = v
                            out_null[e, g, k] = False
                        elif (op == 4 and out_i[e, g, k] < v) or (op == 5 and v < out_i[e, g, k]):
                            out_i[e, g, k] = v
                    else:  # _M2_OP: c = m2, prog[k, 3] = cnt (ints), prog[k, 4] = sum (floats)
                        nb, sb = ints[t, prog[k, 3]], floats[t, prog[k, 4]]
                        if nb != 0:
                            m2b = floats[t, c]
                            if na[k] == 0:  # _chan with an empty left side
                                out_f[e, g, k] = m2b
                            else:
                                d = sb / nb - sa[k] / na[k]
                                out_f[e, g, k] = out_f[e, g, k] + m2b + d * d * (na[k] * nb) / (na[k] + nb)
                        na[k] += nb
                        sa[k] = sa[k] + sb


def _var_csr(buf, start, end, rowptr, pos, member, sep, want_last, out_last, out_count):  # pragma: no cover - compiled
    """Per (row, group): ``last``, the span of the greatest key (UTF-8 bytes order = code point
    order; -1 when no tile has one); ``distinct``, the size of the union of the tiles' items
    (``sep``-separated, FNV-1a hashed into an open-addressing set, compared byte for byte where
    hashes are equal: exact). A row's items are hashed once for all its groups, in scratch arrays
    allocated once per call (a sort of the hashes per group, as before, was most of the kernel's
    time on hot merchants' sets of cards)."""
    n, n_groups = rowptr.shape[0] - 1, member.shape[0]
    cap = 1
    if not want_last:
        for e in range(n):
            c = 0
            for t in range(rowptr[e], rowptr[e + 1]):
                c += end[t] - start[t] + 1  # items in a span <= its bytes + 1
            cap = max(cap, c)
    hs = np.empty(cap, np.uint64)
    s0 = np.empty(cap, np.int64)
    s1 = np.empty(cap, np.int64)
    tp = np.empty(cap, np.int64)  # layout position of the item's tile
    tsize = 8
    while tsize < 2 * cap:
        tsize *= 2
    table = np.empty(tsize, np.int64)  # item index per slot, -1 empty
    for e in range(n):
        a, b = rowptr[e], rowptr[e + 1]
        for g in range(n_groups):
            out_last[e, g, 0] = -1
            out_last[e, g, 1] = -1
            out_count[e, g] = 0
        if want_last:
            for g in range(n_groups):
                bs, be = -1, -1
                for t in range(a, b):
                    if not member[g, pos[t]] or start[t] == end[t]:
                        continue
                    if bs < 0:
                        bs, be = start[t], end[t]
                        continue
                    i, j, greater = start[t], bs, False
                    while True:
                        if i == end[t]:
                            break  # a prefix (or equal): not greater
                        if j == be:
                            greater = True
                            break
                        if buf[i] != buf[j]:
                            greater = buf[i] > buf[j]
                            break
                        i += 1
                        j += 1
                    if greater:
                        bs, be = start[t], end[t]
                out_last[e, g, 0] = bs
                out_last[e, g, 1] = be
            continue
        m = 0
        for t in range(a, b):
            if start[t] == end[t]:
                continue
            used = False
            for g in range(n_groups):
                if member[g, pos[t]]:
                    used = True
                    break
            if not used:
                continue
            i0 = start[t]
            for i in range(start[t], end[t] + 1):
                if i == end[t] or buf[i] == sep:
                    h = np.uint64(14695981039346656037)
                    for q in range(i0, i):
                        h = (h ^ np.uint64(buf[q])) * np.uint64(1099511628211)  # FNV-1a
                    hs[m], s0[m], s1[m], tp[m] = h, i0, i, pos[t]
                    m += 1
                    i0 = i + 1
        if m == 0:
            continue
        size = 8
        while size < 2 * m:
            size *= 2
        mask = np.uint64(size - 1)
        for g in range(n_groups):  # an open-addressing set of the group's items: count the new ones
            for i in range(size):
                table[i] = -1
            count = 0
            for x in range(m):
                if not member[g, tp[x]]:
                    continue
                h = hs[x]
                slot = np.int64((h ^ (h >> np.uint64(32))) & mask)
                while True:
                    y = table[slot]
                    if y < 0:
                        table[slot] = x
                        count += 1
                        break
                    if hs[y] == h and s1[x] - s0[x] == s1[y] - s0[y]:
                        same = True
                        for q in range(s1[x] - s0[x]):
                            if buf[s0[x] + q] != buf[s0[y] + q]:
                                same = False
                                break
                        if same:
                            break  # already counted
                    slot = (slot + 1) & (size - 1)
            out_count[e, g] = count


@lru_cache(maxsize=None)
def _jit() -> Any:
    """The compiled kernels (numba, cached on disk next to this module: compiled once per machine)."""
    import numba
    from types import SimpleNamespace
    return SimpleNamespace(fold=numba.njit(cache=True)(_fold_csr), var=numba.njit(cache=True)(_var_csr))


@lru_cache(maxsize=256)
def _fold_program(fields: tuple[IRField, ...]) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(ops, int field names, float field names, nullable field names) for ``_fold_csr``."""
    ints = tuple(f.name for f in fields if f.kind == "cnt" or (f.kind in ("min", "max") and f.column_type in _INT_TYPES))
    floats = tuple(f.name for f in fields if f.kind in ("sum", "m2") or (f.kind in ("min", "max") and f.name not in ints))
    nulls = tuple(f.name for f in fields if f.kind in ("min", "max"))
    names = {f.name for f in fields}
    prog = []
    for f in fields:
        if f.kind == "cnt":
            prog.append((_ADD_I, ints.index(f.name), 0, 0, 0))
        elif f.kind == "sum":
            prog.append((_ADD_F, floats.index(f.name), 0, 0, 0))
        elif f.kind == "m2":
            c = f.column
            if not {f"{c}__cnt", f"{c}__sum"} <= names:
                raise IRError(f"IR field {f.name!r} needs {c}__cnt and {c}__sum to merge")
            prog.append((_M2_OP, floats.index(f.name), 0, ints.index(f"{c}__cnt"), floats.index(f"{c}__sum")))
        elif f.kind in ("min", "max"):
            is_int = f.name in ints
            op = (_MAX_I if f.kind == "max" else _MIN_I) if is_int else (_MAX_F if f.kind == "max" else _MIN_F)
            prog.append((op, (ints if is_int else floats).index(f.name), nulls.index(f.name), 0, 0))
    return np.array(prog, np.int64).reshape(-1, 5), ints, floats, nulls


def cmerge(fields: Sequence[IRField], rowptr: np.ndarray, pos: np.ndarray, member: np.ndarray,
           tiles: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Merged numeric IRs as (rows, groups) arrays from tiles in CSR form (see the section comment):
    ``tiles[name]`` holds one value per tile, ``tiles[name + "__null"]`` the null flags of min/max."""
    fields = tuple(f for f in fields if f.kind in ("cnt", "sum", "m2", "min", "max"))
    prog, ints, floats, nulls = _fold_program(fields)
    t = len(pos)
    ia = np.stack([tiles[x] for x in ints], 1).astype(np.int64, copy=False) if ints else np.zeros((t, 0), np.int64)
    fa = np.stack([tiles[x] for x in floats], 1).astype(np.float64, copy=False) if floats else np.zeros((t, 0))
    na = np.stack([tiles[x + "__null"] for x in nulls], 1).astype(bool, copy=False) if nulls else np.zeros((t, 0), bool)
    n, n_groups, k = len(rowptr) - 1, len(member), len(prog)
    out_i = np.empty((n, n_groups, k), np.int64)
    out_f = np.empty((n, n_groups, k), np.float64)
    out_null = np.empty((n, n_groups, k), bool)
    _jit().fold(np.asarray(rowptr, np.int64), np.asarray(pos, np.int64), np.ascontiguousarray(member, bool),
                ia, fa, na, prog, out_i, out_f, out_null)
    out: dict[str, Any] = {}
    for j, f in enumerate(fields):
        is_int = f.name in ints
        out[f.name] = (out_i if is_int else out_f)[:, :, j]
        if f.kind in ("min", "max"):
            out[f.name + "__null"] = out_null[:, :, j]
    return out


def cmerge_var(buf: np.ndarray, start: np.ndarray, end: np.ndarray, rowptr: np.ndarray, pos: np.ndarray,
               member: np.ndarray, kind: str, sep: int = 0x1F) -> np.ndarray:
    """One var field over CSR tiles whose values are spans of ``buf`` (uint8): ``last`` -> (rows,
    groups, 2) spans of the greatest key (-1: none); ``distinct`` -> (rows, groups) union sizes."""
    n, n_groups = len(rowptr) - 1, len(member)
    out_last = np.empty((n, n_groups, 2), np.int64)
    out_count = np.empty((n, n_groups), np.int64)
    _jit().var(buf, np.asarray(start, np.int64), np.asarray(end, np.int64), np.asarray(rowptr, np.int64),
               np.asarray(pos, np.int64), np.ascontiguousarray(member, bool), np.uint8(sep), kind == "last",
               out_last, out_count)
    return out_last if kind == "last" else out_count
