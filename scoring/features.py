"""The feature matrix a model scores: float32, columns in the model's order, NaN for null.

No-data values are not restated here: at start-up the spec fetches an entity that cannot exist
and keeps what ``online_store.reader.fetch`` returned for it (0 for count/sum, null for
mean/min/max/last/stddev, per DESIGN.md). A row has ``no_features`` exactly when every requested
feature equals that no-data value (null where it is null), i.e. the store held nothing for the
row that any requested window could see at ``t``.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from online_store.reader import FetchResult, fetch
from scoring.errors import ScoreConfigError
from streamjobs.plan import FeaturePlan

__all__ = ["MatrixSpec", "assemble", "PROBE_ENTITY"]

#: An id no producer can send (NUL bytes), fetched once to learn each feature's no-data value.
PROBE_ENTITY = "\x00headwater-no-such-entity\x00"


@dataclass(frozen=True)
class MatrixSpec:
    """What one fetch must request and how its result becomes a matrix."""

    refs: tuple[str, ...]  # "view:feature", matrix column order
    entities: tuple[tuple[str, str], ...]  # (entity name, event key field) the refs' views need
    nodata: tuple[float | None, ...]  # per ref: its no-data value, None = null

    @classmethod
    def probe(cls, redis: Any, project: str, plan: FeaturePlan, refs: Sequence[str]) -> MatrixSpec:
        """Resolve ``refs`` against the plan, check they are numeric, and learn no-data values."""
        refs = tuple(refs)
        if not refs:
            raise ScoreConfigError("the model names no features: register it with its feature refs")
        try:
            frefs = plan.features_by_ref(refs)
        except Exception as exc:  # DefinitionError: unknown view or feature
            raise ScoreConfigError(f"model feature refs do not match the repository's plan: {exc}") from exc
        if tuple(f.ref for f in frefs) != refs:
            raise ScoreConfigError("model features must be distinct 'view:feature' refs (no 'view:*'): "
                                   "re-register the model with explicit refs")
        ents: dict[str, str] = {}
        for f in frefs:
            v = plan.view(f.view)
            ents.setdefault(v.entity, v.entity_key)
        res = fetch(redis, project, plan, {e: [PROBE_ENTITY] for e in ents}, refs, at_ms=None)
        nodata: list[float | None] = []
        for ref in refs:
            typ = res.types[ref]
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
                raise ScoreConfigError(f"feature {ref} is of type {typ}; a model matrix takes numeric "
                                       "features only: drop it from the model or encode it upstream")
            v, null = res.numpy(ref)
            nodata.append(None if bool(null[0]) else float(v[0]))
        return cls(refs, tuple(ents.items()), tuple(nodata))


def assemble(result: FetchResult, spec: MatrixSpec, xp: types.ModuleType) -> tuple[Any, np.ndarray]:
    """(X on ``xp``: float32 (rows, len(refs)), NaN = null; no_features: host bool per row)."""
    n = len(result.entities)
    host = np.empty((n, len(spec.refs)), np.float32)
    empty = np.ones(n, bool)
    for j, (ref, nd) in enumerate(zip(spec.refs, spec.nodata)):
        v, null = result.numpy(ref)
        if v.dtype == object:  # last/latest of a numeric column: Python values
            try:  # probe() checked the Arrow type is numeric; nulls are masked below
                v = np.where(null, 0, v).astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ScoreConfigError(f"feature {ref} is not numeric: drop it from the model") from exc
        col = host[:, j]
        col[:] = v
        if null.any():
            col[null] = np.nan
        empty &= null if nd is None else (~null & (v == nd))
    return (host if xp is np else xp.asarray(host)), empty
