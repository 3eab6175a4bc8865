"""Every shared conformance vector through the tile path (what the online reader does) and the oracle."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

try:
    from oracle import MemoryTiler, feature_view_from_case, oracle_values, view_spec_from_case, view_spec_from_view
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.oracle import (MemoryTiler, feature_view_from_case, oracle_values, view_spec_from_case,
                              view_spec_from_view)

from streamjobs.plan import build_view_plan

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
#: Headwater's own vectors, same format, for rules DESIGN.md does not state (tests/vectors/)
OWN_VECTORS = sorted((Path(__file__).resolve().parent / "vectors").glob("*.json"))
CASES = sorted(CONFORMANCE.glob("*.json")) + OWN_VECTORS if CONFORMANCE.is_dir() else []
INT_OPS = {"count", "distinct_count"}


def assert_value(name: str, op: str, expected: Any, got: Any, where: str) -> None:
    """None exact; ints exact (count/distinct_count must be int); floats 1e-9 relative."""
    if expected is None or got is None:
        assert got is expected, f"{where} {name}: expected {expected!r}, got {got!r}"
    elif op in INT_OPS:
        assert type(got) is int and got == expected, f"{where} {name}: expected {expected!r}, got {got!r}"
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where} {name}: got {got!r}"
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=0.0), f"{where} {name}: expected {expected!r}, got {got!r}"
    else:
        assert got == expected, f"{where} {name}: expected {expected!r}, got {got!r}"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _check(case: dict[str, Any], answer) -> None:  # type: ignore[no-untyped-def]
    spec = view_spec_from_case(case)
    ops = {f.name: f.op for f in spec.features}
    for q in case["queries"]:
        entity = q[spec.entity_field]
        got = answer(entity, q["t_ms"])
        for name, expected in q["expected"].items():
            assert_value(name, ops[name], expected, got[name], f"{case['name']} {entity}@{q['t_ms']}")


needs_vectors = pytest.mark.skipif(not CASES, reason=f"conformance vectors not found at {CONFORMANCE}")


@needs_vectors
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_oracle_reproduces_vector(path: Path) -> None:
    case = _load(path)
    spec = view_spec_from_case(case)
    _check(case, lambda entity, t: oracle_values(spec, case["events"], entity, t))


@needs_vectors
@pytest.mark.parametrize("one_by_one", [False, True], ids=["batched", "one_by_one"])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_tile_path_reproduces_vector(path: Path, one_by_one: bool) -> None:
    case = _load(path)
    view = feature_view_from_case(case)
    # The DSL + plan keep the vector's names, ops, windows and explicit hops verbatim.
    assert view_spec_from_view(view).features == view_spec_from_case(case).features
    tiler = MemoryTiler(build_view_plan(view))
    tiler.ingest(case["events"], one_by_one=one_by_one)
    _check(case, tiler.query)
    # as_of at or after floor(t, tick) changes nothing: the parity checker's cut is a no-op when complete.
    _check(case, lambda entity, t: tiler.query(entity, t, as_of_ms=t))


@needs_vectors
def test_every_op_is_covered_by_some_vector() -> None:
    ops = {a["op"] for p in CASES for a in _load(p)["view"]["aggregations"]}
    assert ops >= {"count", "sum", "mean", "min", "max", "last", "stddev", "distinct_count"}
