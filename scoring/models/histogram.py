"""Reference histograms with fixed bins, stored in meta.json at training time.

Drift monitoring later bins live values with the *same* edges (``bin_counts``) and compares the
two distributions (PSI), so the edges are part of the model version, never recomputed.
Edges are training-set quantiles (equal mass per bin, the usual choice for PSI); nulls (NaN)
are counted apart because "no data" is itself a signal that can drift.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_histogram", "bin_counts"]


def reference_histogram(values, bins: int = 10) -> dict:
    """``{"edges": [...], "counts": [...], "nulls": n, "total": n}``; counts has len(edges) + 1
    entries: (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[~np.isnan(v)]
    if finite.size:
        qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique(qs)
    else:
        edges = np.array([], dtype=np.float64)
    return {"edges": [float(e) for e in edges], "counts": bin_counts(v, edges).tolist(),
            "nulls": int(v.size - finite.size), "total": int(v.size)}


def bin_counts(values, edges) -> np.ndarray:
    """Counts of non-null ``values`` per bin of ``edges`` (len(edges) + 1 bins, left-closed)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)
