"""``fetch``: feature values for many entities at time ``t`` from one Redis round trip.

Per view, ``windows.window_tiles`` names the tiles every requested window group needs at ``t``;
that list depends only on ``floor(t, tick)``, never on the entity, so it is computed once per
tick and cached (with its RESP bytes). The request is one ``HGETALL`` or one ``HMGET`` of exactly
those fields per (view, distinct entity) plus one ``HGET as_of`` per view, written to the socket
in one send and read back in order: one round trip whatever the number of entities and views.
Which of the two is cheaper depends on how many tiles entities have stored against how many the
layout names: HGETALL for cold entities and wide requests (every fraud feature names ~128 fields
per card+merchant row, mostly absent), HMGET for hot entities and narrow requests (a scorer's few
features). ``read="auto"`` picks per view from the replies it has seen (``_ReadPolicy``). Tiles the
layout does not name are ignored, so both give the same values.

Values are merged as the DESIGN says: ``ir.merge_many`` (canonical ``(resolution, tile_start)``
left fold) then ``ir.finalize``. ``engine="scalar"`` runs literally those functions per entity;
``engine="vector"`` runs the same fold over an entities x groups x tiles matrix (see
the VECTOR IR section: bit-identical to ``merge_many``/``finalize``, property-tested against them,
and meant to move into ``streamjobs/ir.py``); the default ``engine="auto"`` takes the scalar path
for a view whose replies hold at most ``_SCALAR_TILES`` tiles (a few light entities: numpy's
per-call overhead dominates such tiny matrices) and the vector path otherwise; both give the
same types (property-tested). Nulls are never NaN: ``FetchResult.values`` maps each
``"view:feature"`` to a typed ``pyarrow.Array`` (int64 counts, float64 sums/means, the column's
type for min/max/last) with Arrow nulls; ``FetchResult.numpy`` gives ``(values, null_mask)``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, compress, repeat
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from online_store import keys
from online_store.errors import FetchArgumentError, StoreUnavailableError
from online_store.metrics import ReaderMetrics
from streamjobs import ir, windows
from streamjobs.plan import Feature, FeaturePlan, ViewPlan

__all__ = ["fetch", "FetchResult", "feature_arrow_type"]

_REFS: OrderedDict[tuple[int, Any], tuple[FeaturePlan, tuple[Any, ...], dict[str, tuple[str, ...]]]] = OrderedDict()


def _resolve(plan: FeaturePlan, refs: Sequence[str] | None) -> tuple[tuple[Any, ...], dict[str, tuple[str, ...]]]:
    """``plan.features_by_ref`` and the requested feature names per view, memoised per (plan, refs)."""
    ck = (id(plan), None if refs is None else tuple(refs))
    hit = _REFS.get(ck)
    if hit is not None and hit[0] is plan:
        return hit[1], hit[2]
    frefs = plan.features_by_ref(list(refs) if refs is not None else [f"{v.name}:*" for v in plan.views])
    by_view: dict[str, list[str]] = {}
    for fr in frefs:
        by_view.setdefault(fr.view, []).append(fr.feature.name)
    out = (frefs, {v: tuple(names) for v, names in by_view.items()})
    _REFS[ck] = (plan, *out)
    if len(_REFS) > 256:
        _REFS.popitem(last=False)
    return out

_ARROW = {"int": pa.int64(), "long": pa.int64(), "timestamp": pa.int64(), "float": pa.float64(),
          "double": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}


def feature_arrow_type(f: Feature) -> pa.DataType:
    """A feature's output type, as fetch and training sets type it (the one place it is decided)."""
    if f.op in ("count", "distinct_count"):
        return pa.int64()
    if f.op in ("sum", "mean", "stddev"):
        return pa.float64()
    return _ARROW.get(f.column_type, pa.string())


Column = tuple[np.ndarray, np.ndarray]  # (values, null mask); object dtype for strings


@dataclass(frozen=True)
class FetchResult:
    """Values of ``features`` (``"view:feature"`` refs, in request order) for ``entities`` at ``t_ms``.

    ``values[ref]`` is a typed ``pyarrow.Array`` whose nulls are the no-data values (built on
    first access); ``numpy(ref)`` gives ``(values, null_mask)`` without Arrow, for matrix assembly.
    ``as_of_ms[view]``: the published as_of of that view (None until the writer published one);
    ``min_as_of_ms`` is None when any view has none.
    """

    features: tuple[str, ...]
    entities: tuple[str, ...]
    columns: Mapping[str, Column]
    types: Mapping[str, pa.DataType]
    as_of_ms: Mapping[str, int | None]
    t_ms: int
    entity_columns: Mapping[str, tuple[str, ...]] | None = None
    """Row-aligned ids per entity name when ``fetch`` got a mapping (``entities`` is then the first)."""

    @cached_property
    def values(self) -> dict[str, pa.Array]:
        out = {}
        for f in self.features:
            v, null = self.columns[f]
            out[f] = pa.array(v.tolist(), self.types[f]) if v.dtype == object else pa.array(v, self.types[f], mask=null)
        return out

    def numpy(self, ref: str) -> Column:
        """``(values, null mask)`` of one feature; values under the mask are meaningless (0 or None)."""
        return self.columns[ref]

    @property
    def min_as_of_ms(self) -> int | None:
        vals = list(self.as_of_ms.values())
        return None if not vals or any(v is None for v in vals) else min(vals)  # type: ignore[type-var]

    def to_arrow(self) -> pa.Table:
        ids = self.entity_columns or {"entity": self.entities}
        return pa.table({**{k: pa.array(v, pa.string()) for k, v in ids.items()},
                         **{f: self.values[f] for f in self.features}})

    def rows(self) -> list[dict[str, Any]]:
        return self.to_arrow().to_pylist()


# ---------------------------------------------------------------- read layout (per view, per tick)


@dataclass(frozen=True)
class _Group:
    features: tuple[Feature, ...]  # the requested features of this window group
    fields: tuple[ir.IRField, ...]
    positions: frozenset[int]  # layout positions of the tiles it reads (position order = canonical order)


@dataclass(frozen=True)
class _Layout:
    view: ViewPlan
    codec: keys.TileCodec
    prefix: bytes
    fields: tuple[bytes, ...]
    pos: Mapping[bytes, int]  # field -> position in ``fields``
    packed: bytes  # RESP bulk strings of ``fields``
    groups: tuple[_Group, ...]
    member: np.ndarray  # (groups, fields + 1) bool: the group reads that field (last column: padding)
    types: Mapping[str, pa.DataType]  # "view:feature" -> output type, for every requested feature
    by_dtype: tuple[tuple[Any, tuple[str, ...]], ...]  # requested feature names per column dtype (None: objects)
    as_of_cmd: bytes  # RESP of ``HGET <progress key> as_of``


_LAYOUTS: OrderedDict[tuple[Any, ...], _Layout] = OrderedDict()


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _needed(fields: tuple[ir.IRField, ...], feats: tuple[Feature, ...]) -> tuple[ir.IRField, ...]:
    """Only the IR fields the requested features finalize from: a count asked alone must not pay
    for merging its window group's distinct sets (measured: fetch is half the scorer's time)."""
    names = {fld.name for f in feats for fld in ir.fields_for(f.op, f.column, f.column_type)}
    return tuple(fld for fld in fields if fld.name in names)


def _layout(project: str, view: ViewPlan, names: tuple[str, ...], t: int) -> _Layout:
    ck = (project, view.name, view.plan_hash, names, windows.tile_start(t, view.tick_ms))
    lay = _LAYOUTS.get(ck)
    if lay is not None:
        return lay
    wanted = set(names)
    per_group = []
    for g in view.groups:
        feats = tuple(f for f in g.features if f.name in wanted)
        if not feats:
            continue
        since = None if g.window_ms is not None else t - keys.lookback_ms(view, g.hop_ms)
        tiles = windows.window_tiles(t, g.window_ms, g.hop_ms, view.ladder, view.tick_ms, since_ms=since)
        per_group.append((g, feats, tuple(sorted(tiles))))
    union = sorted({k for _, _, tiles in per_group for k in tiles})
    pos = {k: i for i, k in enumerate(union)}
    fields = tuple(keys.tile_field(r, s).encode() for r, s in union)
    groups = tuple(_Group(feats, _needed(g.fields, feats), frozenset(pos[k] for k in tiles)) for g, feats, tiles in per_group)
    member = np.zeros((len(groups), len(fields) + 1), dtype=bool)
    for i, g in enumerate(groups):
        member[i, sorted(g.positions)] = True
    types = {f"{view.name}:{f.name}": feature_arrow_type(f) for g in groups for f in g.features}
    by_dtype: dict[Any, list[str]] = {}
    for g in groups:
        for f in g.features:
            by_dtype.setdefault(_column_dtype(f), []).append(f.name)
    as_of_cmd = b"*3\r\n$4\r\nHGET\r\n" + _bulk(keys.progress_key(project, view).encode()) + _bulk(keys.AS_OF_FIELD.encode())
    lay = _Layout(view, keys.codec_for(view), keys.entity_key_prefix(project, view).encode(), fields,
                  dict(zip(fields, range(len(fields)))), b"".join(_bulk(f) for f in fields), groups, member, types,
                  tuple((dt, tuple(names)) for dt, names in by_dtype.items()), as_of_cmd)
    _LAYOUTS[ck] = lay
    if len(_LAYOUTS) > 256:
        _LAYOUTS.popitem(last=False)
    return lay


# ---------------------------------------------------------------- the round trip


def _round_trip(redis: Any, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]], project: str,
                reads: Sequence[str]) -> list[Any]:
    """HMGET (or HGETALL) per (view, entity), then HGET as_of, per view; replies in that order."""
    from redis.cluster import RedisCluster
    from redis.exceptions import ConnectionError, RedisError, TimeoutError

    if isinstance(redis, RedisCluster) or not hasattr(redis, "connection_pool"):
        return _round_trip_pipeline(redis, layouts, ents, project, reads)
    parts: list[bytes] = []
    n = 0
    for lay, view_ents, read in zip(layouts, ents, reads):
        if lay.fields:
            hmget = read != "hgetall"
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(lay.fields)) if hmget else b"*2\r\n$7\r\nHGETALL\r\n"
            tail = lay.packed if hmget else b""
            for e in view_ents:
                parts += (head, _bulk(lay.prefix + e + b"}"), tail)
            n += len(view_ents)
            for e in view_ents[:_probes(read, len(view_ents))]:
                parts += (b"*2\r\n$4\r\nHLEN\r\n", _bulk(lay.prefix + e + b"}"))
                n += 1
        parts.append(lay.as_of_cmd)
        n += 1
    payload = b"".join(parts)
    pool = redis.connection_pool
    for attempt in (0, 1):
        try:
            conn = pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            conn = pool.get_connection("HMGET")
        try:
            conn.send_packed_command([payload])
            return [conn.read_response(disable_decoding=True) for _ in range(n)]
        except (ConnectionError, TimeoutError) as exc:
            conn.disconnect()
            if attempt:
                raise StoreUnavailableError(f"fetch from Redis failed: {exc}") from exc
        except RedisError as exc:
            conn.disconnect()
            raise StoreUnavailableError(f"fetch from Redis failed: {exc}") from exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")


def _round_trip_pipeline(redis: Any, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]],
                         project: str, reads: Sequence[str]) -> list[Any]:
    """Same commands through a client pipeline (Redis Cluster: one round trip per node, in parallel)."""
    pipe = redis.pipeline(transaction=False)
    for lay, view_ents, read in zip(layouts, ents, reads):
        if lay.fields:
            for e in view_ents:
                if read != "hgetall":
                    pipe.execute_command("HMGET", lay.prefix + e + b"}", *lay.fields)
                else:
                    pipe.execute_command("HGETALL", lay.prefix + e + b"}")
            for e in view_ents[:_probes(read, len(view_ents))]:
                pipe.execute_command("HLEN", lay.prefix + e + b"}")
        pipe.execute_command("HGET", keys.progress_key(project, lay.view), keys.AS_OF_FIELD)
    return pipe.execute()


# ---------------------------------------------------------------- read="auto"


class _ReadPolicy:
    """``read="auto"``: HMGET or HGETALL per (view, requested features), from what the replies show.

    HGETALL costs ~ the fields an entity has stored (S), HMGET ~ the fields the layout names (L),
    absent ones cheaper. Measured on the fraud plan, 100 rows, before the greedy body cover
    (``windows.window_tiles``) cut L: HGETALL 16.3 vs HMGET 23.4 ms for every feature of cold
    entities (S ~ 33, L = 206), but 11.7 vs 9.0 ms for the scorer's five features of hot ones
    (S ~ 100, L = 129) and 12.7 vs 7.4 ms for two 10 m counts (L = 69). So: HMGET while the mean
    S seen is at least ``L / 2``. S comes from HGETALL replies and, while HMGET is chosen, from an
    ``HLEN`` of up to ``_SAMPLE`` of the entities every ``_PROBE`` fetches (in the same round trip;
    an HGETALL probe instead made every 16th scorer fetch twice as slow: p99 34 vs 18 ms), its
    mean weighted over about the last eight observations."""

    _PROBE = 16

    def __init__(self) -> None:
        self.stored: float | None = None  # mean fields per entity in HGETALL replies or HLEN samples
        self.fetches = 0

    def choose(self, n_fields: int) -> str:
        """``hgetall``, ``hmget``, or ``hmget+hlen`` (HMGET, plus the probe)."""
        self.fetches += 1
        if self.stored is None or self.stored < n_fields / 2:
            return "hgetall"
        return "hmget+hlen" if self.fetches % self._PROBE == 0 else "hmget"

    def observe(self, stored_per_entity: float) -> None:
        self.stored = stored_per_entity if self.stored is None else 0.875 * self.stored + 0.125 * stored_per_entity


_POLICIES: dict[tuple[str, str, str, tuple[str, ...]], _ReadPolicy] = {}

#: ``hmget+hlen``: at most this many entities of the view are probed with HLEN.
_SAMPLE = 64


def _probes(read: str, n: int) -> int:
    return min(n, _SAMPLE) if read == "hmget+hlen" else 0


def _policy(project: str, view: ViewPlan, names: tuple[str, ...]) -> _ReadPolicy:
    """One policy per (project, view, requested features), kept across ticks (layouts are per tick).
    Keyed by the view's name and plan hash: hashing the ViewPlan itself walked its nested
    dataclasses on every call (~25 us per view, a tenth of a 1-entity fetch)."""
    key = (project, view.name, view.plan_hash, names)
    pol = _POLICIES.get(key)
    if pol is None:
        if len(_POLICIES) >= 256:
            _POLICIES.clear()
        pol = _POLICIES[key] = _ReadPolicy()
    return pol


# ---------------------------------------------------------------- fetch


def _ids(values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(map(str, values))  # Flink casts entity keys to STRING; str(s) is s


def fetch(redis: Any, project: str, plan: FeaturePlan, entities: Sequence[str] | Mapping[str, Sequence[str]],
          refs: Sequence[str] | None = None, at_ms: int | None = None, *,
          engine: Literal["auto", "vector", "scalar"] = "auto", read: Literal["auto", "hgetall", "hmget"] = "auto",
          metrics: ReaderMetrics | None = None) -> FetchResult:
    """Feature values at ``at_ms`` (None = now) for ``entities``; unknown entities get the no-data values.

    ``entities``: ids used for every view, or a mapping entity name -> row-aligned ids (a scoring
    batch's cards *and* merchants in the same round trip; each view reads its entity's ids).
    ``refs``: ``"view:feature"`` or ``"view:*"`` (``plan.features_by_ref``); None = every feature.
    ``read``: ``hgetall`` reads each entity's stored tiles (cost ~ tiles stored, which the writer's
    trimming keeps close to what windows need) and keeps those ``window_tiles`` names; ``hmget``
    asks for exactly those fields (cost ~ entities x fields named, ~128 per row for every fraud
    feature, mostly absent); ``auto`` (default) picks per view from the sizes its replies show
    (``_ReadPolicy``). Same values whichever is used.
    ``redis`` must not decode responses (tile values are bytes).
    """
    t0 = time.perf_counter()
    t = int(time.time() * 1000) if at_ms is None else int(at_ms)
    frefs, by_view = _resolve(plan, refs)
    layouts = [_layout(project, plan.view(v), names, t) for v, names in by_view.items()]
    columns = {k: _ids(v) for k, v in entities.items()} if isinstance(entities, Mapping) else None
    if columns is not None:
        if len({len(v) for v in columns.values()}) > 1:
            raise FetchArgumentError("fetch: the id lists of an entities mapping must have the same length (one row each)")
        missing = sorted({lay.view.entity for lay in layouts} - set(columns))
        if missing:
            raise FetchArgumentError(f"fetch: no ids for entity {missing[0]!r}; pass entities={{{missing[0]!r}: [...], ...}}")
        per_view = [columns[lay.view.entity] for lay in layouts]
        ents = next(iter(columns.values()), ())
    else:
        ents = _ids(entities)
        per_view = [ents] * len(layouts)
    uniq: list[dict[str, int]] = []  # per view: distinct ids (a batch repeats hot entities) -> row
    inverse: list[np.ndarray] = []
    for ids in per_view:
        index = dict(zip(dict.fromkeys(ids), range(len(ids))))  # first-seen order; loops in C
        inverse.append(np.fromiter(map(index.__getitem__, ids), dtype=np.intp, count=len(ids)))
        uniq.append(index)
    if read == "auto":
        policies = [_policy(project, lay.view, names) for lay, names in zip(layouts, by_view.values())]
        reads = [pol.choose(len(lay.fields)) for pol, lay in zip(policies, layouts)]
    elif read in ("hgetall", "hmget"):  # a forced mode never probes
        policies, reads = [], [read] * len(layouts)
    else:
        raise FetchArgumentError(f"fetch: read={read!r} is not one of auto, hgetall, hmget")
    wire = [[e.encode() for e in u] for u in uniq]
    replies = _round_trip(redis, layouts, wire, project, reads) if layouts else []
    values: dict[str, Column] = {}
    types: dict[str, pa.DataType] = {}
    as_of: dict[str, int | None] = {}
    i = 0
    for k, (lay, u, inv, mode) in enumerate(zip(layouts, uniq, inverse, reads)):
        rows: list[Any] = []
        if lay.fields:
            rows, i = replies[i:i + len(u)], i + len(u)
            if policies and mode == "hgetall" and u:
                policies[k].observe(sum(len(r) if isinstance(r, dict) else len(r) // 2 for r in rows) / len(u))
            probed = _probes(mode, len(u))
            if probed:
                policies[k].observe(sum(replies[i:i + probed]) / probed)
                i += probed
        raw = replies[i]
        i += 1
        as_of[lay.view.name] = None if raw is None else int(raw)
        tiles = _sparse(lay, rows, mode)
        merge = _merge_vector if engine == "vector" or (engine == "auto" and len(tiles.vals) > _SCALAR_TILES) \
            else _merge_scalar
        dup = len(u) != len(inv)
        for name, (v, null) in merge(lay, tiles, len(u), t).items():
            values[f"{lay.view.name}:{name}"] = (v[inv], null[inv]) if dup else (v, null)
        types.update(lay.types)
    if metrics is not None:
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.entities.inc(len(ents))
    return FetchResult(tuple(fr.ref for fr in frefs), ents, values, types, as_of, t, columns)


@dataclass(frozen=True)
class _Sparse:
    """The tiles one view's replies hold: entity row and layout position of each, and its bytes."""

    ent: np.ndarray
    pos: np.ndarray
    vals: list[bytes]


def _sparse(lay: _Layout, rows: list[Any], mode: str) -> _Sparse:
    nf = len(lay.fields)
    if mode != "hgetall":
        flat = list(chain.from_iterable(rows))
        present = np.frombuffer(bytes(map(bool, flat)), dtype=np.bool_)  # a tile value is never empty
        where = np.flatnonzero(present)
        return _Sparse(where // max(nf, 1), where % max(nf, 1), list(compress(flat, present)))
    # HGETALL replies, flattened once: loops run in C (map, compress, numpy), not per field in Python
    rows = [[x for kv in r.items() for x in kv] if isinstance(r, dict) else r for r in rows]  # RESP3 maps
    flat = list(chain.from_iterable(rows))
    pos_all = np.fromiter(map(lay.pos.get, flat[0::2], repeat(-1)), dtype=np.intp, count=len(flat) // 2)
    ent_all = np.repeat(np.arange(len(rows), dtype=np.intp), [len(r) // 2 for r in rows])
    keep = pos_all >= 0  # fields the layout does not name (other resolutions, "_n") are ignored
    return _Sparse(ent_all[keep], pos_all[keep], list(compress(flat[1::2], keep.tolist())))


def _merge_scalar(lay: _Layout, tiles: _Sparse, n: int, t: int) -> dict[str, Column]:
    """The DESIGN path, literally: per entity and group, ``ir.merge_many`` (as ``merge_columns``:
    an entity's tiles decoded once into columns in position order, which is the canonical order,
    each group taking its slice) then ``ir.finalize``."""
    per_entity: list[dict[int, bytes]] = [{} for _ in range(n)]
    for e, p, v in zip(tiles.ent.tolist(), tiles.pos.tolist(), tiles.vals):
        per_entity[e][p] = v
    cols: dict[str, list[Any]] = {f.name: [] for g in lay.groups for f in g.features}
    codec = lay.codec
    for row in per_entity:
        ps = sorted(row)
        dec = codec.decode_columns([row[p] for p in ps], raw_distinct=True)
        for g in lay.groups:
            at = g.positions
            take = [i for i, p in enumerate(ps) if p in at]
            part = {}
            for fld in g.fields:
                col = dec[fld.name]
                if fld.kind == "distinct":  # the group's sets pre-unioned: union is exact in any grouping
                    part[fld.name] = [codec.distinct_union([col[i] for i in take])] if take else []
                else:
                    part[fld.name] = col if len(take) == len(ps) else [col[i] for i in take]
            out = ir.finalize(g.features, ir.merge_columns(part, g.fields), t_ms=t)
            for f in g.features:
                cols[f.name].append(out[f.name])
    return _typed(lay.by_dtype, cols)


_NUMPY = {pa.int64(): np.int64, pa.float64(): np.float64, pa.bool_(): np.bool_}


def _column_dtype(f: Feature) -> Any:
    """The vector path's column type: numeric ops and distinct counts int64/float64 (0 under the null
    mask), ``last``/``latest`` objects (None)."""
    return None if f.op in ("last", "latest") else _NUMPY.get(feature_arrow_type(f))


def _typed(by_dtype: Sequence[tuple[Any, tuple[str, ...]]], cols: Mapping[str, list[Any]]) -> dict[str, Column]:
    """Python values per feature -> columns of the vector path's types, one ``np.array`` per dtype
    (not per feature: for a 1-entity fetch the per-call cost was 27 us of a ~150 us view merge)."""
    out: dict[str, Column] = {}
    for dt, names in by_dtype:
        if dt is None:
            for name in names:
                out[name] = _objects(cols[name])
            continue
        rows = [cols[name] for name in names]
        null = np.array([[v is None for v in r] for r in rows], dtype=bool)  # (features, entities)
        vals = np.array([[0 if v is None else v for v in r] for r in rows], dtype=dt)
        for i, name in enumerate(names):
            out[name] = (vals[i], null[i])
    return out


def _objects(values: list[Any]) -> Column:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr, np.array([v is None for v in values], dtype=bool)


#: ``engine="auto"``: a view's replies with at most this many tiles are merged by the scalar
#: path (numpy's per-call overhead dominates small matrices), more by the vector path. Measured
#: per view merge (fraud plan, 2026-11-22, scalar over decoded columns with lazily built distinct
#: sets), median us scalar vs vector: one card of 96-111 tiles 248 vs 362, of 128+ 419 vs 438; one
#: merchant of 96-111 142 vs 164, of 112+ 234 vs 216; 8 cards holding 128-159 tiles 554 vs 630,
#: 256-287 tiles 790 vs 757; 8 merchants holding 32-63 tiles 174 vs 142.
_SCALAR_TILES = 128

#: Entities with at most this many tiles in a view are folded in a narrow matrix, the rest apart:
#: matrices are (entities x groups x most tiles of one entity), so one hot entity must not widen all.
_NARROW = 16


def _merge_vector(lay: _Layout, tiles: _Sparse, n: int, t: int) -> dict[str, Column]:
    """Decode every present tile at once, then fold all window groups together over an
    (entities x groups x W) matrix holding, per (entity, group), its present tiles in canonical
    order (W = the most any row has); padding is the identity tile."""
    vals = tiles.vals
    n_tiles, n_groups = len(vals), len(lay.groups)
    order = np.lexsort((tiles.pos, tiles.ent))  # canonical order = field position order
    ent, pos = tiles.ent[order], tiles.pos[order]
    member = lay.member[:, pos]  # (groups, tiles)
    seen = np.cumsum(member, axis=1)
    counts = np.zeros((n_groups, n), dtype=np.intp)  # present tiles per (group, entity)
    for g in range(n_groups):
        counts[g] = np.bincount(ent[member[g]], minlength=n)
    before = np.cumsum(counts, axis=1) - counts  # member tiles of earlier entities, per group
    rank = seen - 1 - before[:, ent] if n_tiles else seen  # (groups, tiles): place in its row
    widest = counts.max(axis=0, initial=0)
    table = lay.codec.decode_fixed(vals, pad=True)  # row n_tiles: the empty tile
    var: dict[str, Any] = {}  # var parts per var field, split on first use by a group that needs them
    out: dict[str, Column] = {}
    narrow = widest <= _NARROW
    for members in (np.flatnonzero(narrow), np.flatnonzero(~narrow)):
        if not len(members) and n:
            continue
        nb, width = len(members), int(widest[members].max(initial=0))
        row = np.full(n, -1, dtype=np.intp)
        row[members] = np.arange(nb)
        idx3 = np.full((nb, n_groups, width), n_tiles, dtype=np.intp)
        for g in range(n_groups):
            sel = member[g] & (row[ent] >= 0)
            idx3[row[ent[sel]], g, rank[g, sel]] = order[sel]
        block = _merge_block(lay, table, vals, var, idx3, nb, t)
        if nb == n:
            return block
        for name, (v, null) in block.items():
            if name not in out:
                out[name] = (np.empty(n, v.dtype), np.empty(n, bool))
            out[name][0][members], out[name][1][members] = v, null
    return out


def _merge_block(lay: _Layout, table: np.ndarray, vals: list[bytes], var: dict[str, Any], idx3: np.ndarray,
                 n: int, t: int) -> dict[str, Column]:
    dec = table[idx3]  # (entities, groups, P) records, one gather
    mats: dict[str, np.ndarray] = {}
    for s in lay.codec.slots:
        mats[s.field.name] = dec[s.field.name]
        if s.nullable:
            mats[s.field.name + "__null"] = dec[s.field.name + "__null"] != 0
    with np.errstate(all="ignore"):  # IEEE results as Python floats give them (inf - inf = nan)
        merged = ir.vmerge([s.field for s in lay.codec.slots], mats)
    out: dict[str, Column] = {}
    for gi, g in enumerate(lay.groups):
        var_fields = [f for f in g.fields if f.kind in ("last", "distinct")]
        merged_var = _merge_var(lay.codec, var_fields, var, vals, idx3[:, gi, :]) if var_fields else {}
        with np.errstate(all="ignore"):
            for f in g.features:
                if f.op in ("last", "latest"):
                    name = f"{f.column}__last"
                    out[f.name] = _objects([ir.finalize((f,), {name: k}, t_ms=t)[f.name] for k in merged_var[name]])
                elif f.op == "distinct_count":
                    out[f.name] = ir.vfinalize(f, merged_var, 0)
                else:
                    out[f.name] = ir.vfinalize(f, merged, gi)
    return out


def _merge_var(codec: keys.TileCodec, fields: list[ir.IRField], var: dict[str, Any], vals: list[bytes],
               idx: np.ndarray) -> dict[str, Any]:
    """``last`` (the max key, decoded; None when no tile has one) and ``distinct`` (the union's size,
    (entities, 1), for ``ir.vfinalize``) per entity over its present tiles. Per entity in Python, but
    each a few C calls: a join, a split and a set (measured faster than dictionary-coding every item
    with Arrow and counting unique (entity, code) pairs: 5 vs 2.8 ms for 100 cards + merchants).

    ``var`` caches ``codec.split_var(vals)`` (or, for JSON-form tiles, per-tile ``decode_var``)."""
    if not var:
        cols = codec.split_var(vals)
        if cols is None:  # some tile in the JSON form: per-tile decode, same representation
            per_tile = [codec.decode_var(v) for v in vals]
            cols = [[(x[j] or b"") if f.kind == "last" else x[j] for x in per_tile]
                    for j, f in enumerate(codec.var_fields)]
        var.update(zip((f.name for f in codec.var_fields), cols))
    n = len(idx)
    ents, ks = np.nonzero(idx < len(vals))
    tids = idx[ents, ks].tolist()
    bounds = np.searchsorted(ents, np.arange(n + 1)).tolist()
    spans = list(zip(bounds[:-1], bounds[1:]))
    out: dict[str, Any] = {}
    for f in fields:
        col = var[f.name]
        sel = [col[t] for t in tids]  # every entity's parts, in entity order: one gather, then slices
        if f.kind == "last":
            res: list[Any] = []
            for a, b in spans:
                best = max(sel[a:b], default=b"")
                res.append(best.decode() if best else None)
            out[f.name] = res
            continue
        if sel and isinstance(sel[0], bytes):
            sep, join = b"\x1f", b"\x1f".join
            sizes = []
            for a, b in spans:
                items = set(join(sel[a:b]).split(sep))
                items.discard(b"")  # empty tiles; "" itself is never an item in the 0x01 form
                sizes.append(len(items))
        else:
            sizes = [len({i for p in sel[a:b] for i in p}) for a, b in spans]
        out[f.name] = np.array(sizes, np.int64).reshape(n, 1)
    return out
