"""Parity results: per-feature statistics, a terminal table, JSON, and a self-contained HTML page.

The HTML has two inline SVG plots drawn here (no plotting library, no network): the mismatch
rate over query time (unexplained and late apart) and the histogram of online - offline over
every numeric pair where both sides had a value.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FeatureStats", "ParityReport", "feature_stats"]

#: Mismatches listed in full per class; the counts always cover all of them.
MAX_LISTED = 1000


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


@dataclass(frozen=True)
class FeatureStats:
    ref: str
    compared: int
    exact: int
    null_mismatches: int  # unexplained, one side null
    value_mismatches: int  # unexplained, both present
    late_null: int  # explained by appends after as_of
    late_value: int
    smape: float | None  # mean symmetric abs % error over numeric pairs with both sides present
    diff_p50: float | None
    diff_p90: float | None
    diff_p99: float | None
    diff_max_abs: float | None

    @property
    def unexplained(self) -> int:
        return self.null_mismatches + self.value_mismatches

    @property
    def late(self) -> int:
        return self.late_null + self.late_value


def feature_stats(ref: str, checks: Sequence[Any]) -> FeatureStats:
    pairs = [(a, b) for c in checks if (a := _num(c.online)) is not None and (b := _num(c.offline)) is not None]
    diffs = np.array([a - b for a, b in pairs], dtype=float)
    sm = [0.0 if a == b else 2 * abs(a - b) / (abs(a) + abs(b)) for a, b in pairs]
    pct = (lambda q: float(np.percentile(diffs, q))) if len(diffs) else (lambda q: None)
    count = lambda pred: sum(1 for c in checks if pred(c))  # noqa: E731
    return FeatureStats(
        ref, len(checks), count(lambda c: c.kind == "match"),
        count(lambda c: c.unexplained and c.kind == "null"), count(lambda c: c.unexplained and c.kind == "value"),
        count(lambda c: c.explained and c.kind == "null"), count(lambda c: c.explained and c.kind == "value"),
        100.0 * float(np.mean(sm)) if sm else None, pct(50), pct(90), pct(99),
        float(np.abs(diffs).max()) if len(diffs) else None)


def _check_json(c: Any) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return sorted(v) if isinstance(v, (set, frozenset)) else v
    out = {"ref": c.ref, "entity": c.entity, "t_ms": c.t_ms, "as_of_ms": c.as_of_ms, "kind": c.kind,
           "online": clean(c.online), "offline": clean(c.offline)}
    if c.late:
        out["late_events"] = [asdict(e) for e in c.late]
        out["late_events_fit"] = c.fits  # false: they cannot make this difference (parity.fits)
    return out


@dataclass
class ParityReport:
    features: list[FeatureStats]
    checks: list[Any] = field(repr=False)
    n_fetches: int = 0
    n_stale: int = 0
    timing: Any = None
    source: str = ""
    tiles: str = ""
    created: str = ""

    @classmethod
    def build(cls, checks: Sequence[Any], *, n_fetches: int, n_stale: int = 0, timing: Any = None,
              source: str = "", tiles: str = "") -> ParityReport:
        by_ref: dict[str, list[Any]] = defaultdict(list)
        for c in checks:
            by_ref[c.ref].append(c)
        return cls([feature_stats(r, cs) for r, cs in by_ref.items()], list(checks), n_fetches, n_stale, timing,
                   source, tiles, datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def unexplained(self) -> list[Any]:
        return [c for c in self.checks if c.unexplained]

    @property
    def late(self) -> list[Any]:
        return [c for c in self.checks if c.explained]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    @property
    def fetches_per_s(self) -> float | None:
        """Fetches checked per second of the check itself (a ``--now`` fetch and replay not included)."""
        secs = getattr(self.timing, "check_s", 0.0)
        return self.n_fetches / secs if secs else None

    def to_json(self) -> dict[str, Any]:
        late_events = sorted({(e.entity, e.partition, e.offset, e.event_time_ms, e.append_time_ms)
                              for c in self.late for e in c.late})
        return {
            "ok": self.ok, "created": self.created, "feature_log": self.source, "tiles": self.tiles,
            "fetches_checked": self.n_fetches, "fetches_skipped_other_plan": self.n_stale,
            "values_compared": len(self.checks), "exact": sum(f.exact for f in self.features),
            "unexplained": len(self.unexplained), "late_explained": len(self.late),
            "fetches_per_s": self.fetches_per_s,
            "timing_s": None if self.timing is None else {**{k: v for k, v in asdict(self.timing).items()
                                                            if k != "extra"}, **self.timing.extra,
                                                         "total": self.timing.total_s},
            "features": [{**asdict(f), "unexplained": f.unexplained, "late": f.late} for f in self.features],
            "unexplained_mismatches": [_check_json(c) for c in self.unexplained[:MAX_LISTED]],
            "late_mismatches": [_check_json(c) for c in self.late[:MAX_LISTED]],
            "late_events": [dict(zip(("entity", "partition", "offset", "event_time_ms", "append_time_ms"), e))
                            for e in late_events],
        }

    def write_json(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return Path(path)

    # ------------------------------------------------------------ terminal

    def table(self) -> str:
        head = f"{'feature':52} {'compared':>8} {'exact':>8} {'null≠':>6} {'value≠':>6} {'late':>6} {'SMAPE %':>8} {'p99 diff':>10}"
        lines = [head, "-" * len(head)]
        for f in self.features:
            sm = "-" if f.smape is None else f"{f.smape:.3g}"
            p99 = "-" if f.diff_p99 is None else f"{f.diff_p99:.3g}"
            lines.append(f"{f.ref[:52]:52} {f.compared:>8} {f.exact:>8} {f.null_mismatches:>6} "
                         f"{f.value_mismatches:>6} {f.late:>6} {sm:>8} {p99:>10}")
        verdict = "OK: online equals offline" if self.ok else f"FAIL: {len(self.unexplained)} unexplained mismatches"
        rate = self.fetches_per_s
        lines.append(f"{verdict}; {self.n_fetches:,} fetches, {len(self.checks):,} values, "
                     f"{len(self.late):,} mismatches explained by appends after as_of"
                     + ("" if rate is None else f"; {rate:,.0f} fetches checked/s"))
        for c in self.unexplained[:10]:
            lines.append(f"  UNEXPLAINED {c.ref} entity={c.entity} t={c.t_ms} as_of={c.as_of_ms}: "
                         f"online={c.online!r} offline={c.offline!r}"
                         + (f" ({len(c.late)} append(s) after as_of cannot make this difference)" if c.late else ""))
        return "\n".join(lines)

    # ------------------------------------------------------------ HTML

    def write_html(self, path: str | Path) -> Path:
        from backfill.parity_svg import histogram_svg, rate_svg
        data = self.to_json()
        rows = "".join(
            f"<tr class='{'bad' if f.unexplained else ''}'><td>{html.escape(f.ref)}</td><td>{f.compared}</td>"
            f"<td>{f.exact}</td><td>{f.null_mismatches}</td><td>{f.value_mismatches}</td><td>{f.late}</td>"
            f"<td>{'-' if f.smape is None else f'{f.smape:.3g}'}</td>"
            + "".join(f"<td>{'-' if v is None else f'{v:.3g}'}</td>" for v in (f.diff_p50, f.diff_p90, f.diff_p99,
                                                                               f.diff_max_abs))
            + "</tr>" for f in self.features)

        def listing(items: list[dict[str, Any]], late: bool) -> str:
            if not items:
                return "<p>none</p>"
            cols = ["ref", "entity", "t_ms", "as_of_ms", "kind", "online", "offline"] + (["late_events"] if late else [])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(it.get(k)))}</td>" for k in cols) + "</tr>"
                           for it in items[:200])
            return f"<table><tr>{''.join(f'<th>{k}</th>' for k in cols)}</tr>{body}</table>"

        verdict = ("<p class='ok'>OK: every online value equals the offline recompute</p>" if self.ok else
                   f"<p class='bad'>FAIL: {len(self.unexplained)} unexplained mismatches</p>")
        diffs = [_num(c.online) - _num(c.offline) for c in self.checks
                 if _num(c.online) is not None and _num(c.offline) is not None]
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Headwater parity</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}
.bad{{color:#b00}}.ok{{color:#070}}tr.bad td{{background:#fee}}</style></head><body>
<h1>Online / offline parity</h1>{verdict}
<p>{data['fetches_checked']:,} logged fetches, {data['values_compared']:,} values compared,
{data['exact']:,} exact, {data['unexplained']:,} unexplained, {data['late_explained']:,} explained by appends
after as_of ({len(data['late_events'])} events). Feature log: {html.escape(self.source)}; tiles:
{html.escape(self.tiles)}; {data['fetches_skipped_other_plan']} fetches skipped (other plan hash).
{'' if self.fetches_per_s is None else f'{self.fetches_per_s:,.0f} fetches checked per second.'}
Created {self.created}.</p>
<table><tr><th>feature</th><th>compared</th><th>exact</th><th>null&ne;</th><th>value&ne;</th><th>late</th>
<th>SMAPE %</th><th>p50 diff</th><th>p90 diff</th><th>p99 diff</th><th>max |diff|</th></tr>{rows}</table>
<h2>Mismatch rate over query time</h2>{rate_svg([(c.t_ms, c.unexplained, c.explained) for c in self.checks])}
<h2>online &minus; offline (numeric values present on both sides)</h2>{histogram_svg(diffs)}
<h2>Unexplained mismatches</h2>{listing(data['unexplained_mismatches'], False)}
<h2>Explained by appends after as_of</h2>{listing(data['late_mismatches'], True)}
</body></html>"""
        Path(path).write_text(page, encoding="utf-8")
        return Path(path)
