"""Two small inline-SVG plots for the parity report (no plotting library: the page stays one file)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

__all__ = ["rate_svg", "histogram_svg"]

W, H, PAD = 640, 220, 40


def _frame(body: str, xlabel: str, ylabel: str, x0: str, x1: str, ymax: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' font-size='11'>"
            f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - 10}' y2='{H - PAD}' stroke='#333'/>"
            f"<line x1='{PAD}' y1='10' x2='{PAD}' y2='{H - PAD}' stroke='#333'/>{body}"
            f"<text x='{PAD}' y='{H - PAD + 14}'>{html.escape(x0)}</text>"
            f"<text x='{W - 10}' y='{H - PAD + 14}' text-anchor='end'>{html.escape(x1)}</text>"
            f"<text x='{W / 2}' y='{H - 6}' text-anchor='middle'>{html.escape(xlabel)}</text>"
            f"<text x='4' y='18'>{html.escape(ymax)}</text>"
            f"<text x='4' y='{H - PAD}'>0</text>"
            f"<text x='12' y='{H / 2}' transform='rotate(-90 12 {H / 2})' text-anchor='middle'>{html.escape(ylabel)}</text>"
            "</svg>")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def rate_svg(points: Sequence[tuple[int, bool, bool]], bins: int = 30) -> str:
    """points: (t_ms, unexplained, explained) per compared value -> stacked bars of the rates per bin."""
    if not points:
        return "<p>no values compared</p>"
    t = np.array([p[0] for p in points], dtype=np.int64)
    bad = np.array([p[1] for p in points], dtype=bool)
    late = np.array([p[2] for p in points], dtype=bool)
    lo, hi = int(t.min()), int(t.max())
    edges = np.linspace(lo, hi + 1, bins + 1)
    which = np.clip(np.searchsorted(edges, t, "right") - 1, 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    r_bad = np.bincount(which, bad, minlength=bins) / np.maximum(n, 1)
    r_late = np.bincount(which, late, minlength=bins) / np.maximum(n, 1)
    top = max(float((r_bad + r_late).max()), 1e-3)
    bw = (W - 10 - PAD) / bins
    scale = (H - PAD - 10) / top
    body = []
    for i in range(bins):
        if not n[i]:
            continue
        x = PAD + i * bw
        hb, hl = r_bad[i] * scale, r_late[i] * scale
        tip = f"{_iso(edges[i])}: {n[i]} values, {r_bad[i]:.2%} unexplained, {r_late[i]:.2%} late"
        body.append(f"<g><title>{html.escape(tip)}</title>"
                    f"<rect x='{x:.1f}' y='{H - PAD - hb:.1f}' width='{bw - 1:.1f}' height='{hb:.1f}' fill='#c33'/>"
                    f"<rect x='{x:.1f}' y='{H - PAD - hb - hl:.1f}' width='{bw - 1:.1f}' height='{hl:.1f}' fill='#e90'/>"
                    f"<rect x='{x:.1f}' y='{H - PAD - 2:.1f}' width='{bw - 1:.1f}' height='2' fill='#8c8'/></g>")
    legend = (f"<text x='{W - 10}' y='20' text-anchor='end'><tspan fill='#c33'>■ unexplained</tspan> "
              f"<tspan fill='#e90'>■ late (appended after as_of)</tspan> <tspan fill='#8c8'>▬ bin has values</tspan></text>")
    return _frame("".join(body) + legend, "query time t (UTC)", "mismatch rate", _iso(lo), _iso(hi), f"{top:.1%}")


def histogram_svg(diffs: Sequence[float], bins: int = 40) -> str:
    """Counts of online - offline; bar heights on a log scale so a few mismatches stay visible."""
    d = np.array([x for x in diffs if np.isfinite(x)], dtype=float)
    if not len(d):
        return "<p>no numeric values present on both sides</p>"
    lo, hi = float(d.min()), float(d.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(d, bins=bins, range=(lo, hi))
    top = float(np.log10(counts.max() + 1))
    bw = (W - 10 - PAD) / bins
    scale = (H - PAD - 10) / max(top, 1e-9)
    body = []
    for i, c in enumerate(counts):
        if not c:
            continue
        h = np.log10(c + 1) * scale
        tip = f"[{edges[i]:.4g}, {edges[i + 1]:.4g}): {c}"
        body.append(f"<rect x='{PAD + i * bw:.1f}' y='{H - PAD - h:.1f}' width='{bw - 1:.1f}' height='{h:.1f}' "
                    f"fill='#369'><title>{html.escape(tip)}</title></rect>")
    exact = int((d == 0).sum())
    note = f"<text x='{W - 10}' y='20' text-anchor='end'>{exact:,} of {len(d):,} differences are exactly 0</text>"
    return _frame("".join(body) + note, "online - offline", "count (log)", f"{lo:.4g}", f"{hi:.4g}",
                  f"{int(counts.max()):,}")
