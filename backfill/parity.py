"""Parity checker: every logged online fetch, recomputed offline from replay tiles, must be equal.

For each feature-log record (entity, t, as_of, values) the same features are recomputed at the
same t by ``backfill.training_set`` (the point-in-time join; this module has no merge code of its
own). A value that differs is *explained* only when the online read may legitimately have lacked
events: the events topic holds an on-time event of that entity inside the feature's window
(``windows.window_bounds``) whose Kafka append time is after the fetch's ``as_of`` (DESIGN: online
covers ``[floor(t - W, h), min(floor(t, tick), as_of))``), *and* the difference is one those
events can make (``fits``): offline read every event online did plus some of them, so a count or
distinct count may only be higher offline, by at most their number; a sum may differ by at most
the sum of their absolute values; an offline min, max or last must be one of their values (with
online's min no lower, max no higher); an offline mean must lie between online's mean and their
values (a union's mean is a weighted mean of its parts'); a stddev where online had no data must
be at most half their range; offline null where online has a value never fits. A stddev over
online's events plus some late ones has no bound without online's mean and range (the IR): any
late event of the column explains it. Those
mismatches are reported apart as "late", with the events' keys; every other difference is
unexplained and fails the check.

Equality: floats within 1e-9 relative (or 1e-9 absolute, for values that are 0 up to rounding,
e.g. a stddev of identical amounts), everything else exact; null vs value is its own class.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from backfill.errors import BackfillError
from streamjobs import windows

__all__ = ["ParityError", "LateAppend", "Check", "EventIndex", "classify", "fits", "compare", "offline_values",
           "read_events_after", "check", "REL_TOL", "ABS_TOL"]

REL_TOL = 1e-9
ABS_TOL = 1e-9
Kind = Literal["match", "null", "value"]


class ParityError(BackfillError):
    """A parity run that cannot start: no log records, no tiles, or a feature the plan lacks."""


@dataclass(frozen=True)
class LateAppend:
    """An event appended after a fetch's as_of: the online read may not have seen it."""

    entity: str
    partition: int
    offset: int
    event_time_ms: int
    append_time_ms: int


@dataclass(frozen=True)
class Check:
    """One (logged fetch, feature) comparison."""

    ref: str
    entity: str
    t_ms: int
    as_of_ms: int
    online: Any
    offline: Any
    kind: Kind
    late: tuple[LateAppend, ...] = ()
    fits: bool = True  # the late appends can make this difference (``fits``)

    @property
    def explained(self) -> bool:
        return self.kind != "match" and bool(self.late) and self.fits

    @property
    def unexplained(self) -> bool:
        return self.kind != "match" and not self.explained


def _is_float(v: Any) -> bool:
    return isinstance(v, (float, np.floating))


def classify(online: Any, offline: Any, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> Kind:
    """``match``, ``null`` (one side null, the other not) or ``value`` (both present, different)."""
    if online is None or offline is None:
        return "match" if online is None and offline is None else "null"
    if _is_float(online) or _is_float(offline):
        a, b = float(online), float(offline)
        if math.isnan(a) or math.isnan(b):
            return "match" if math.isnan(a) and math.isnan(b) else "value"
        return "match" if math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol) else "value"
    if isinstance(online, (list, set, tuple)) or isinstance(offline, (list, set, tuple)):
        return "match" if sorted(online) == sorted(offline) else "value"
    return "match" if online == offline else "value"


def fits(op: str, online: Any, offline: Any, late_values: Sequence[Any], rel_tol: float = REL_TOL,
         abs_tol: float = ABS_TOL) -> bool:
    """Whether late appends with these column values can account for ``online != offline`` of a
    feature with ``op`` (module docstring): the offline side read a superset of online's events."""
    vals = [v for v in late_values if v is not None]
    if not vals or offline is None:
        return False
    if op in ("count", "distinct_count"):
        more = int(offline) - int(online or 0)
        return 0 < more <= (len(vals) if op == "count" else len(set(map(str, vals))))
    if op == "sum":
        return abs(float(offline) - float(online or 0.0)) <= sum(abs(float(v)) for v in vals) * (1 + rel_tol) + abs_tol
    if op in ("min", "max", "last", "latest"):
        if online is not None and op in ("min", "max") and (online < offline if op == "min" else online > offline):
            return False
        return any(classify(v, offline, rel_tol, abs_tol) == "match" for v in vals)
    nums = [float(v) for v in vals]
    if op == "mean":  # the mean of a union lies between the means of its parts: online's and the added events'
        hull = nums + ([float(online)] if online is not None else [])
        return _within(float(offline), min(hull), max(hull), rel_tol, abs_tol)
    if op == "stddev" and online is None:  # offline = the population stddev of some of these events only
        return _within(float(offline), 0.0, (max(nums) - min(nums)) / 2, rel_tol, abs_tol)
    return True  # stddev over online's events and some late ones: no bound without online's mean and range


def _within(x: float, lo: float, hi: float, rel_tol: float, abs_tol: float) -> bool:
    slack = max(abs(lo), abs(hi)) * rel_tol + abs_tol
    return lo - slack <= x <= hi + slack


# ---------------------------------------------------------------- events appended after as_of


class EventIndex:
    """Events per (entity key field, entity), sorted by event time, for the late-append lookup;
    the other columns' values too, for ``fits``."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], tuple[np.ndarray, ...]] = {}
        self._values: dict[str, list[Any]] = {}  # column -> its value in every indexed event (None: absent)
        self._n = 0

    def add(self, events: pa.Table, key_fields: Sequence[str], event_time_field: str) -> EventIndex:
        """Index ``events`` (``read_events_after``'s columns) under each key field it has."""
        if events.num_rows == 0:
            return self
        et = events[event_time_field].to_numpy(zero_copy_only=False).astype(np.int64)
        app = events["_append_ms"].to_numpy().astype(np.int64)
        part = events["_partition"].to_numpy().astype(np.int64)
        off = events["_offset"].to_numpy().astype(np.int64)
        base, n = self._n, events.num_rows
        for name in events.column_names:  # event ``base + i`` of every column; None where a table lacks it
            if not name.startswith("_"):
                self._values.setdefault(name, [None] * base).extend(events[name].to_pylist())
        for col in self._values.values():
            col.extend([None] * (base + n - len(col)))
        self._n = base + n
        for key in key_fields:
            if key not in events.column_names:
                continue
            groups: dict[str, list[int]] = defaultdict(list)
            for i, e in enumerate(events[key].to_pylist()):
                groups[str(e)].append(i)
            for e, rows in groups.items():
                idx = np.array(rows, dtype=np.intp)
                idx = idx[np.argsort(et[idx], kind="stable")]
                self._by[(key, e)] = (et[idx], app[idx], part[idx], off[idx], base + idx)
        return self

    def _late(self, key: str, entity: str, lo: int | None, hi: int, as_of_ms: int,
              allowed_lateness_ms: int, allowed_future_ms: int) -> tuple[np.ndarray, ...] | None:
        got = self._by.get((key, entity))
        if got is None:
            return None
        et = got[0]
        a = 0 if lo is None else int(np.searchsorted(et, lo, "left"))
        b = int(np.searchsorted(et, hi, "left"))
        et, app, part, off, row = (x[a:b] for x in got)
        hit = (app > as_of_ms) & windows.on_time(et, app, allowed_lateness_ms, allowed_future_ms)
        return et[hit], app[hit], part[hit], off[hit], row[hit]

    def late_for(self, key: str, entity: str, lo: int | None, hi: int, as_of_ms: int,
                 allowed_lateness_ms: int, allowed_future_ms: int) -> tuple[LateAppend, ...]:
        """On-time events with ``lo <= event_time < hi`` (no lower bound when ``lo`` is None)
        appended after ``as_of_ms``."""
        got = self._late(key, entity, lo, hi, as_of_ms, allowed_lateness_ms, allowed_future_ms)
        if got is None:
            return ()
        return tuple(LateAppend(entity, int(p), int(o), int(t), int(x)) for t, x, p, o, _ in zip(*got))

    def late_values(self, column: str, key: str, entity: str, lo: int | None, hi: int, as_of_ms: int,
                    allowed_lateness_ms: int, allowed_future_ms: int) -> list[Any]:
        """``column``'s values of the events ``late_for`` finds (empty when it was not read)."""
        got = self._late(key, entity, lo, hi, as_of_ms, allowed_lateness_ms, allowed_future_ms)
        col = self._values.get(column)
        return [] if got is None or col is None else [col[i] for i in got[4].tolist()]


def read_events_after(conn: Any, topic: str, after_ms: int, columns: Sequence[str], codec: Any,
                      end_offsets: Mapping[int, int] | None = None) -> pa.Table:
    """Events with Kafka timestamp > ``after_ms`` up to the current end (or ``end_offsets``), decoded
    columnar, with ``_partition``, ``_offset`` and ``_append_ms``; only ``columns`` are kept."""
    from headwater.topic_read import read_to_end
    from schemas import ColumnarCodec

    values, parts, offs, apps = [], [], [], []
    # bounded and position-ended (a transactional producer's last offset is a marker), committed
    # records only (librdkafka reads read_committed), a throwaway group: nobody's offsets move
    for batch in read_to_end(conn.bootstrap_servers, topic, start_ms=after_ms + 1, ends=end_offsets,
                             timeout_s=600, error=ParityError):
        for m in batch:
            values.append(m.value() or b"")
            parts.append(m.partition())
            offs.append(m.offset())
            apps.append(m.timestamp()[1])
    # records under another schema version resolve as the job resolved them into tiles
    table, ok, _ = (ColumnarCodec.from_codec(codec).decode_batch(values, resolve=codec) if values
                    else (None, np.zeros(0, bool), []))
    if table is None:
        return pa.table({**{k: pa.array([], pa.string()) for k in columns}, "_partition": pa.array([], pa.int64()),
                         "_offset": pa.array([], pa.int64()), "_append_ms": pa.array([], pa.int64())})
    table = table.select([k for k in columns if k in table.column_names])
    table = table.append_column("_partition", pa.array(parts, pa.int64())).append_column(
        "_offset", pa.array(offs, pa.int64())).append_column("_append_ms", pa.array(apps, pa.int64()))
    return table.filter(pa.array(ok))  # records the job skipped never reached a tile either


# ---------------------------------------------------------------- offline values and comparison


def _column(table: pa.Table, ref: str) -> str | None:
    if ref in table.column_names:
        return ref
    bare = ref.partition(":")[2]
    return bare if bare in table.column_names else None


def offline_values(repo: Any, rows: Sequence[Mapping[str, Any]], plan: Any, tiles: Any) -> list[dict[str, Any]]:
    """Per log row, its features recomputed by ``backfill.training_set`` at the row's ``t_ms``;
    one training-set call per view, spine = the distinct (entity, t) pairs of that view's rows."""
    from backfill import training_set
    from backfill.coverage import CoverageError

    out: list[dict[str, Any]] = [{} for _ in rows]
    by_view: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["features"]:
            by_view[r["features"][0].partition(":")[0]].append(i)
    for view, idx in by_view.items():
        vp = plan.view(view)
        refs = list(dict.fromkeys(ref for i in idx for ref in rows[i]["features"]))
        pairs = list(dict.fromkeys((rows[i]["entity"], rows[i]["t_ms"]) for i in idx))
        spine = pa.table({vp.entity_key: pa.array([e for e, _ in pairs], pa.string()),
                          "ts": pa.array([t for _, t in pairs], pa.timestamp("ms", tz="UTC"))})
        try:
            got = training_set(repo, spine, refs, tiles=tiles, timestamp_column="ts")
        except CoverageError as exc:  # a recompute past the replay would report mismatches that are not there
            raise ParityError(f"{exc.detail.replace('spine rows', 'logged fetches')}: replay again into {tiles} "
                              f"(`headwater replay --out {tiles} --replace`) once the logged fetches are "
                              "past, or run parity --now") from exc
        cols = {ref: got[_column(got, ref)].to_pylist() for ref in refs if _column(got, ref) is not None}
        missing = [ref for ref in refs if ref not in cols]
        if missing:
            raise ParityError(f"training_set returned no column for {missing[0]}: its naming changed; "
                              f"update backfill/parity.py _column")
        at = {p: j for j, p in enumerate(pairs)}
        for i in idx:
            j = at[(rows[i]["entity"], rows[i]["t_ms"])]
            out[i] = {ref: cols[ref][j] for ref in rows[i]["features"]}
    return out


def compare(rows: Sequence[Mapping[str, Any]], offline: Sequence[Mapping[str, Any]], plan: Any,
            events: EventIndex | Mapping[str, EventIndex] | None = None, rel_tol: float = REL_TOL,
            abs_tol: float = ABS_TOL) -> list[Check]:
    """Checks of every requested feature of every log row (``read``'s rows: values by ref)."""
    feats = {}
    checks: list[Check] = []
    for row, off in zip(rows, offline):
        for ref in row["features"]:
            if ref not in feats:
                fr = plan.features_by_ref(ref)[0]
                feats[ref] = (plan.view(fr.view), fr.feature)
            vp, f = feats[ref]
            on, of = row.get(ref), off.get(ref)
            kind = classify(on, of, rel_tol, abs_tol)
            late: tuple[LateAppend, ...] = ()
            ok = True
            if kind != "match" and events is not None:
                t = int(row["t_ms"])
                hi = windows.tile_start(t, vp.tick_ms)
                lo = None if f.window_ms is None else windows.window_bounds(t, f.window_ms, f.hop_ms, vp.tick_ms)[0]
                where = (vp.entity_key, str(row["entity"]), lo, hi, int(row["as_of_ms"]), vp.allowed_lateness_ms,
                         vp.allowed_future_ms)
                # per topic where given: two topics may share an entity key (transactions, logins)
                idx = events.get(vp.topic, EventIndex()) if isinstance(events, Mapping) else events
                late = idx.late_for(*where)
                ok = bool(late) and fits(f.op, on, of, idx.late_values(f.column, *where), rel_tol, abs_tol)
            checks.append(Check(ref, str(row["entity"]), int(row["t_ms"]), int(row["as_of_ms"]), on, of, kind, late, ok))
    return checks


def _check_tiles(tiles: Any, plan: Any, views: set[str]) -> None:
    """The replay output must hold each logged view, under the current plan, as readable files:
    an offline side silently full of no-data values would report online bugs that are not there."""
    from backfill import layout
    for name in sorted(views):
        m = layout.read_manifest(tiles, name)
        if m is None:
            raise ParityError(f"no replay of view {name!r} under {tiles}: run `headwater replay --out {tiles}` "
                              f"over the logged range first")
        if m.plan_hash != plan.view(name).plan_hash:
            raise ParityError(f"tiles of view {name!r} under {tiles} are from plan {m.plan_hash}, the log and "
                              f"definitions from {plan.view(name).plan_hash}: replay again into a fresh directory")
        if m.events_read > 0 and not layout.tile_files(tiles, name):
            raise ParityError(f"the replay of view {name!r} read {m.events_read:,} events but {tiles} holds no tile "
                              f"files at {layout.view_dir(tiles, name)}/resolution_ms=*/date=*/: the replay output "
                              f"does not follow the layout")


@dataclass
class Timing:
    read_log_s: float = 0.0
    offline_s: float = 0.0
    events_s: float = 0.0
    compare_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def check_s(self) -> float:
        """The check itself: read the log, recompute offline, read later appends, compare."""
        return self.read_log_s + self.offline_s + self.events_s + self.compare_s

    @property
    def total_s(self) -> float:
        return self.check_s + sum(self.extra.values())


def check(repo: Any, *, feature_log: Any = "topic", tiles: Any, sample: int | None = None, seed: int = 0,
          conn: Any = None, say: Any = print) -> Any:
    """Run the whole check; returns a ``parity_report.ParityReport`` (``.ok`` is the verdict)."""
    from backfill.parity_report import ParityReport
    from headwater.config import RepoConfig, load_connection, load_repo
    from headwater.repo_schemas import codec_for
    from online_store import feature_log as flog
    from streamjobs.repo import load_definitions

    repo = repo if isinstance(repo, RepoConfig) else load_repo(repo)
    conn = conn or load_connection()
    plan = load_definitions(repo).plan
    timing = Timing()
    t0 = time.perf_counter()
    log = feature_log if isinstance(feature_log, pa.Table) else flog.read(feature_log, connection=conn, repo=repo)
    rows = log.to_pylist()
    timing.read_log_s = time.perf_counter() - t0
    if not rows:
        raise ParityError(f"the feature log {feature_log!r} is empty: log fetches first "
                          f"(`headwater fetch ... --log`, the scoring consumer, or `parity --now`)")
    current = {v.plan_hash for v in plan.views}
    stale = [r for r in rows if r["plan_hash"] not in current]
    rows = [r for r in rows if r["plan_hash"] in current]
    if not rows:
        raise ParityError(f"none of the {len(stale):,} logged fetches is of the current definitions (plan hashes "
                          f"{', '.join(sorted(current))}): log new fetches, or check out the definitions they were made with")
    if sample is not None and sample < 1:
        raise ParityError(f"--sample {sample}: sample at least one logged fetch")
    if sample is not None and sample < len(rows):
        rows = random.Random(seed).sample(rows, sample)
    unreadable = flog.skipped(log)
    say(f"parity: {len(rows):,} logged fetches to check ({len(stale):,} skipped: other plan hash"
        + (f"; {unreadable:,} unreadable feature-log records skipped" if unreadable else "") + ")")
    _check_tiles(tiles, plan, {r["features"][0].partition(":")[0] for r in rows if r["features"]})
    t0 = time.perf_counter()
    offline = offline_values(repo, rows, plan, tiles)
    timing.offline_s = time.perf_counter() - t0
    say(f"parity: offline recompute (training_set over {tiles}) {timing.offline_s:.1f}s")
    t0 = time.perf_counter()
    after = min(int(r["as_of_ms"]) for r in rows)
    topics = {v.topic for v in plan.views}
    events = {topic: EventIndex() for topic in topics}
    for topic in topics:  # every view of the example reads one topic; several are read one by one
        role = next((k for k, s in repo.topics.all().items() if s.name == topic or k == topic), "events")
        vps = [v for v in plan.views if v.topic == topic]
        cols = sorted({v.entity_key for v in vps} | {vps[0].event_time_field} | {f.column for v in vps for f in v.features})
        table = read_events_after(conn, repo.topics.all()[role].name, after, cols, codec_for(repo, role))
        events[topic].add(table, [v.entity_key for v in vps], vps[0].event_time_field)
        say(f"parity: {table.num_rows:,} events appended after the oldest as_of ({after}) read from "
            f"{repo.topics.all()[role].name}")
    timing.events_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    checks = compare(rows, offline, plan, events)
    timing.compare_s = time.perf_counter() - t0
    return ParityReport.build(checks, n_fetches=len(rows), n_stale=len(stale), timing=timing,
                              source=str(feature_log if not isinstance(feature_log, pa.Table) else "table"),
                              tiles=str(tiles))
