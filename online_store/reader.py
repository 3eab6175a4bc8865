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
layout does not name are ignored, so both give the same values. The replies are not parsed into
Python objects: their bytes land in one buffer and ``online_store.resp`` finds each tile's value
span in it (a 1,000-row fetch's ~78k reply elements as objects: 44.7 vs 31.2 ms); a client pipeline
(Redis Cluster) or a RESP3 connection is parsed by the client instead, into the same form. Raw
replies are merged a chunk of entities at a time as they arrive (``_chunk``: a quarter of the
view's entities, 32 to 256), so the client merges one chunk while Redis (single-threaded, on the
other core) computes the next: a 1,000-row fetch asks Redis for ~16 ms of work and the client does
about as much, which used to run one after the other.

Values are merged as the DESIGN says: ``ir.merge_many`` (canonical ``(resolution, tile_start)``
left fold) then ``ir.finalize``. ``engine="scalar"`` runs literally those functions per entity;
``engine="compiled"`` runs the same fold for every entity and window group in one compiled pass
over the tiles as they sit in that buffer (``ir.cmerge``/``ir.cmerge_var``, numba:
bit-identical to ``merge_many``/``finalize``, property-tested against them); the default
``engine="auto"`` takes the scalar path for a view whose replies hold at most ``_SCALAR_TILES``
tiles (one or a few light entities: the kernels' fixed cost per call dominates) and the compiled
path otherwise; both give the same types (property-tested). Nulls are never NaN:
``FetchResult.values`` maps each ``"view:feature"`` to a typed ``pyarrow.Array`` (int64 counts,
float64 sums/means, the column's type for min/max/last) with Arrow nulls; ``FetchResult.numpy``
gives ``(values, null_mask)``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import chain, compress, repeat
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from online_store import keys, resp
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
    exact_since_ms: Mapping[str, int] | None = None
    """Per view, the earliest ``t`` the store answers exactly (``keys.exact_since``), read in the
    same round trip by a fetch with ``at_ms``; None for a fetch of now."""

    @property
    def trimmed_views(self) -> tuple[str, ...]:
        """Views whose values at ``t_ms`` may lack trimmed tiles (``t`` before ``exact_since_ms``)."""
        return tuple(v for v, b in (self.exact_since_ms or {}).items() if self.t_ms < b)

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

    def take(self, rows: np.ndarray) -> FetchResult:
        """The same fetch restricted to ``rows`` (indices, in that order)."""
        def pick(ids: Sequence[str]) -> tuple[str, ...]:
            return tuple(ids[i] for i in rows)

        return replace(self, entities=pick(self.entities),
                       columns={f: (v[rows], null[rows]) for f, (v, null) in self.columns.items()},
                       entity_columns=None if self.entity_columns is None else
                       {k: pick(v) for k, v in self.entity_columns.items()})


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
    history_cmd: bytes  # RESP of ``HGET <progress key> history_ms`` (a read of the past: ``exact_since``)
    key_res: np.ndarray  # (resolution, tile_start) of each field, int64, sorted as ``fields`` are
    key_start: np.ndarray


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
    hget = b"*3\r\n$4\r\nHGET\r\n" + _bulk(keys.progress_key(project, view).encode())
    lay = _Layout(view, keys.codec_for(view), keys.entity_key_prefix(project, view).encode(), fields,
                  dict(zip(fields, range(len(fields)))), b"".join(_bulk(f) for f in fields), groups, member, types,
                  tuple((dt, tuple(names)) for dt, names in by_dtype.items()),
                  hget + _bulk(keys.AS_OF_FIELD.encode()), hget + _bulk(keys.HISTORY_FIELD.encode()),
                  np.array([r for r, _ in union], np.int64), np.array([s for _, s in union], np.int64))
    _LAYOUTS[ck] = lay
    if len(_LAYOUTS) > 256:
        _LAYOUTS.popitem(last=False)
    return lay


# ---------------------------------------------------------------- the round trip


_HELD = threading.local()


def _connection(pool: Any) -> tuple[Any, bool]:
    """(connection, held): this thread's own connection of a plain ``ConnectionPool``, checked out
    once and kept; any other pool lends one per fetch. A checkout probes the connection for stray
    data (a zero-timeout read between two socket timeout changes): measured ~80 of the ~260 us a
    1-row round trip took (p50 264 vs 183 us, 3,000 fetches each, interleaved). Holding is safe
    because a fetch that fails mid-read disconnects (no stray replies) and the next send
    reconnects. Per process: a forked child takes its own (the pool resets itself there too)."""
    from redis import ConnectionPool
    if type(pool) is not ConnectionPool:  # a BlockingConnectionPool's slots are the user's to share
        try:
            return pool.get_connection(), False
        except TypeError:  # redis-py < 5.3 wants a command name
            return pool.get_connection("HMGET"), False
    held = getattr(_HELD, "conns", None)
    if held is None:
        held = _HELD.conns = weakref.WeakKeyDictionary()
    entry = held.get(pool)
    if entry is None or entry[1] != os.getpid():
        try:
            conn = pool.get_connection()
        except TypeError:
            conn = pool.get_connection("HMGET")
        held[pool] = entry = (conn, os.getpid())
    return entry[0], True


@dataclass(frozen=True)
class _ViewReply:
    """What one view's replies say: its merged columns, the mean fields per entity an HGETALL
    (``seen``) or an HLEN probe (``probed``) showed (for ``_ReadPolicy``), the published as_of,
    and the writer's history (``keys.HISTORY_FIELD``; read only by a fetch of the past)."""

    columns: dict[str, Column]
    seen: float | None
    probed: float | None
    as_of: int | None
    history: int | None = None


#: ``merge(view index, tiles, entities)``: the columns of those entities (``fetch`` picks the engine).
Merge = Callable[[int, "_Sparse", int], dict[str, Column]]

_CHUNK_MIN, _CHUNK_MAX = 32, 256


def _chunk(n: int) -> int:
    """Entities per merge of a view's raw replies, merged as they arrive: the merge of one chunk
    runs while Redis is still computing the next ones (two processes, two cores). A quarter of the
    view, so a 100-row fetch overlaps too (a fixed 256 left it none: uniform 100 rows p50 2.84-3.41
    vs 3.13-3.82 ms, bench/fetch.py, interleaved); at least 32, since each merge call has a fixed
    cost (~0.1 ms of glue); at most 256 (128-512 measured alike at 1,000 rows)."""
    return min(_CHUNK_MAX, max(_CHUNK_MIN, -(-n // 4)))


def _commands(layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]], reads: Sequence[str],
              history: bool = False) -> tuple[bytes, int]:
    """HGET as_of (and, with ``history``, HGET history_ms), then HMGET (or HGETALL) per (view,
    entity) and HLEN probes, per view: (RESP, replies).

    as_of first: Redis runs a pipeline's commands in order, and as_of only rises while tiles only
    get newer, so an as_of read before the tiles is true of them; read after, the writer's tile
    write and progress raise could land in between and as_of would vouch for events they lack."""
    parts: list[bytes] = []
    n = 0
    for lay, view_ents, read in zip(layouts, ents, reads):
        parts.append(lay.as_of_cmd)
        n += 1
        if history:
            parts.append(lay.history_cmd)
            n += 1
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
    return b"".join(parts), n


def _round_trip(redis: Any, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]], project: str,
                reads: Sequence[str], merge: Merge, history: bool = False) -> list[_ViewReply]:
    """All commands in one send; the replies read raw and merged chunk by chunk as they arrive
    (``_Incoming``, ``online_store.resp``), or parsed by the client where that cannot be done
    (Redis Cluster, RESP3, a client without a pool) and merged once all are in."""
    from redis.cluster import RedisCluster
    from redis.exceptions import ConnectionError, RedisError, TimeoutError

    if isinstance(redis, RedisCluster) or not hasattr(redis, "connection_pool"):
        return _round_trip_pipeline(redis, layouts, ents, project, reads, merge, history)
    payload, n = _commands(layouts, ents, reads, history)
    pool = redis.connection_pool
    for attempt in (0, 1):
        try:  # a checkout connects (redis-py 5.3): Redis down fails here, and must read as it does below
            conn, held = _connection(pool)
        except (ConnectionError, TimeoutError, OSError) as exc:
            if attempt:
                raise _failed(exc) from exc
            continue
        except RedisError as exc:
            raise _failed(exc) from exc
        try:
            conn.send_packed_command([payload], check_health=not held)
            sock = getattr(conn, "_sock", None)
            if sock is None or str(getattr(conn, "protocol", 2) or 2) != "2":
                return _from_replies(layouts, ents, reads, [conn.read_response(disable_decoding=True) for _ in range(n)],
                                     merge, history)
            return _from_incoming(_Incoming(sock, n), layouts, ents, reads, merge, history)
        except (ConnectionError, TimeoutError, OSError) as exc:  # OSError: the raw read's socket errors
            conn.disconnect()  # a held connection reconnects on its next send
            if attempt:
                raise _failed(exc) from exc
        except RedisError as exc:
            conn.disconnect()
            raise _failed(exc) from exc
        except BaseException:
            conn.disconnect()  # never leave unread replies on a connection
            raise
        finally:
            if not held:
                pool.release(conn)
    raise AssertionError("unreachable")


class _Incoming:
    """A fetch's replies as they arrive: the socket's bytes in this thread's buffer, whole replies
    counted as chunks land (``resp.complete``) and taken from the front. The buffer is kept across
    fetches; when it fills, the bytes already taken (merged) make room, else it doubles, so it
    holds about one chunk's replies rather than the whole fetch's."""

    def __init__(self, sock: Any, n: int) -> None:
        buf = getattr(_HELD, "buf", None)
        if buf is None:
            buf = _HELD.buf = np.empty(1 << 16, np.uint8)
        self.sock, self.buf = sock, buf
        self.pos = 0  # start of the first reply not taken yet
        self.size = 0  # bytes received
        self.counted = 0  # end of the whole replies counted so far
        self.ready = 0  # whole replies between pos and counted
        self.left = n  # replies not counted yet

    def need(self, k: int) -> None:
        """Receive until ``k`` whole replies follow ``pos``."""
        while self.ready < k:
            if self.size == len(self.buf):
                self._make_room()
            got = self.sock.recv_into(memoryview(self.buf)[self.size:])
            if not got:
                raise ConnectionError("Redis closed the connection mid-reply")
            self.size += got
            try:
                self.counted, c = resp.complete(self.buf, self.counted, self.size, self.left)
            except ValueError as exc:  # a reply of a kind the fetch never asks for
                raise _failed(exc) from exc
            self.ready += c
            self.left -= c

    def took(self, pos: int, k: int) -> None:
        """``k`` replies were read, up to ``pos``."""
        self.pos = pos
        self.ready -= k

    def scalar(self) -> Any:
        self.need(1)
        try:
            pos, v = resp.scalar(self.buf, self.pos, self.size)
        except ValueError as exc:
            raise _failed(exc) from exc
        self.took(pos, 1)
        if isinstance(v, Exception):
            raise _failed(v)
        return v

    def _make_room(self) -> None:
        buf, keep = self.buf, self.size - self.pos
        new = buf if self.pos >= len(buf) // 2 else np.empty(2 * len(buf), np.uint8)
        new[:keep] = buf[self.pos:self.size]  # numpy copies through a temporary where they overlap
        self.counted -= self.pos
        self.size, self.pos = keep, 0
        self.buf = _HELD.buf = new


def _failed(what: Any) -> StoreUnavailableError:
    return StoreUnavailableError(f"fetch from Redis failed: {what}")


def _from_incoming(inc: _Incoming, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]],
                   reads: Sequence[str], merge: Merge, history: bool = False) -> list[_ViewReply]:
    out = []
    for k, (lay, view_ents, read) in enumerate(zip(layouts, ents, reads)):
        n = len(view_ents)
        seen = probed = None
        raw = inc.scalar()  # as_of comes first (``_commands``)
        hist = inc.scalar() if history else None
        if lay.fields:
            pairs = read == "hgetall"
            parts, elements = [], 0
            chunk = _chunk(n)
            for a in range(0, n or 1, chunk):  # n == 0: one empty chunk, so the view still gets its columns
                m = min(chunk, n - a)
                inc.need(m)
                at = inc.pos
                pos, ent, p, s, e, el, status = resp.tiles(inc.buf, at, inc.size, m, pairs, lay.key_res, lay.key_start)
                if status == resp.ERROR:
                    raise _failed(resp.scalar(inc.buf, pos, inc.size)[1])
                if status < 0:
                    raise _failed(f"unexpected reply bytes at offset {pos - at} of view {lay.view.name!r}")
                parts.append(merge(k, _Sparse(ent, p, inc.buf, s, e, ordered=not pairs), m))
                inc.took(pos, m)  # merged: the buffer may reuse those bytes
                elements += el
            columns = _concat(parts)
            if pairs and n:
                seen = elements / 2 / n
            probes = _probes(read, n)
            if probes:
                probed = sum(inc.scalar() for _ in range(probes)) / probes
        else:
            columns = merge(k, _Sparse.of(np.zeros(0, np.intp), np.zeros(0, np.intp), []), n)
        out.append(_ViewReply(columns, seen, probed, _int(raw), _int(hist)))
    return out


def _int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _concat(parts: list[dict[str, Column]]) -> dict[str, Column]:
    if len(parts) == 1:
        return parts[0]
    return {name: (np.concatenate([p[name][0] for p in parts]), np.concatenate([p[name][1] for p in parts]))
            for name in parts[0]}


def _from_replies(layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]], reads: Sequence[str],
                  replies: list[Any], merge: Merge, history: bool = False) -> list[_ViewReply]:
    """The same from replies a client parsed (``_round_trip_pipeline``, RESP3)."""
    out = []
    i = 0
    for k, (lay, view_ents, read) in enumerate(zip(layouts, ents, reads)):
        n = len(view_ents)
        rows: list[Any] = []
        seen = probed = None
        raw = replies[i]  # as_of comes first (``_commands``)
        i += 1
        hist = None
        if history:
            hist, i = replies[i], i + 1
        if lay.fields:
            rows, i = replies[i:i + n], i + n
            if read == "hgetall" and n:
                seen = sum(len(r) if isinstance(r, dict) else len(r) // 2 for r in rows) / n
            probes = _probes(read, n)
            if probes:
                probed = sum(replies[i:i + probes]) / probes
                i += probes
        out.append(_ViewReply(merge(k, _sparse(lay, rows, read), n), seen, probed, _int(raw), _int(hist)))
    return out


def _round_trip_pipeline(redis: Any, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]],
                         project: str, reads: Sequence[str], merge: Merge, history: bool = False) -> list[_ViewReply]:
    """Same commands through a client pipeline (Redis Cluster: one round trip per node, in parallel).
    Redis errors become ``StoreUnavailableError``, as on the single-node path (the scorer retries those)."""
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    try:
        if isinstance(redis, RedisCluster):  # nodes answer in parallel: as_of in a round trip of its own, first
            as_of = redis.pipeline(transaction=False)
            for lay in layouts:
                for field in _meta_fields(history):
                    as_of.execute_command("HGET", keys.progress_key(project, lay.view), field)
            replies = _pipeline_tiles(redis, layouts, ents, project, reads, as_of.execute(), history)
        else:
            replies = _pipeline_tiles(redis, layouts, ents, project, reads, None, history)
    except (RedisError, RedisClusterException) as exc:
        raise _failed(exc) from exc
    return _from_replies(layouts, ents, reads, replies, merge, history)


def _meta_fields(history: bool) -> tuple[str, ...]:
    return (keys.AS_OF_FIELD, keys.HISTORY_FIELD) if history else (keys.AS_OF_FIELD,)


def _pipeline_tiles(redis: Any, layouts: Sequence[_Layout], ents: Sequence[Sequence[bytes]], project: str,
                    reads: Sequence[str], meta: list[Any] | None, history: bool = False) -> list[Any]:
    """The replies in ``_commands`` order; ``meta``: as_of (and history) per view, already read
    (else HGETs first in the pipeline)."""
    pipe = redis.pipeline(transaction=False)
    fields = _meta_fields(history)
    for lay, view_ents, read in zip(layouts, ents, reads):
        if meta is None:
            for field in fields:
                pipe.execute_command("HGET", keys.progress_key(project, lay.view), field)
        if lay.fields:
            for e in view_ents:
                if read != "hgetall":
                    pipe.execute_command("HMGET", lay.prefix + e + b"}", *lay.fields)
                else:
                    pipe.execute_command("HGETALL", lay.prefix + e + b"}")
            for e in view_ents[:_probes(read, len(view_ents))]:
                pipe.execute_command("HLEN", lay.prefix + e + b"}")
    replies = pipe.execute()
    if meta is None:
        return replies
    out, i = [], 0
    for k, (lay, view_ents, read) in enumerate(zip(layouts, ents, reads)):
        n = (len(view_ents) + _probes(read, len(view_ents))) if lay.fields else 0
        out += [*meta[k * len(fields):(k + 1) * len(fields)], *replies[i:i + n]]
        i += n
    return out


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
          engine: Literal["auto", "compiled", "scalar"] = "auto", read: Literal["auto", "hgetall", "hmget"] = "auto",
          metrics: ReaderMetrics | None = None) -> FetchResult:
    """Feature values at ``at_ms`` (None = now) for ``entities``; unknown entities get the no-data values.
    With ``at_ms``, ``exact_since_ms``/``trimmed_views`` on the result say whether the store still
    holds every tile that far back (read in the same round trip).

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
    if engine not in ("auto", "compiled", "scalar"):
        raise FetchArgumentError(f"fetch: engine={engine!r} is not one of auto, compiled, scalar")
    wire = [[e.encode() for e in u] for u in uniq]

    def merge(k: int, tiles: _Sparse, n: int) -> dict[str, Column]:
        compiled = engine == "compiled" or (engine == "auto" and len(tiles.ent) > _SCALAR_TILES)
        return (_merge_compiled if compiled else _merge_scalar)(layouts[k], tiles, n, t)

    past = at_ms is not None  # a read of the past also asks how far back the store is exact
    replies = _round_trip(redis, layouts, wire, project, reads, merge, past) if layouts else []
    values: dict[str, Column] = {}
    types: dict[str, pa.DataType] = {}
    as_of: dict[str, int | None] = {}
    for k, (lay, u, inv, rep) in enumerate(zip(layouts, uniq, inverse, replies)):
        if policies:
            for stored in (rep.seen, rep.probed):
                if stored is not None:
                    policies[k].observe(stored)
        as_of[lay.view.name] = rep.as_of
        dup = len(u) != len(inv)
        for name, (v, null) in rep.columns.items():
            values[f"{lay.view.name}:{name}"] = (v[inv], null[inv]) if dup else (v, null)
        types.update(lay.types)
    if metrics is not None:
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.entities.inc(len(ents))
    since = None
    if past:
        now = int(time.time() * 1000)
        since = {lay.view.name: keys.exact_since(lay.view, rep.history, now) for lay, rep in zip(layouts, replies)}
    return FetchResult(tuple(fr.ref for fr in frefs), ents, values, types, as_of, t, columns, since)


@dataclass(frozen=True)
class _Sparse:
    """The tiles one view's replies hold: entity row and layout position of each, and its value as
    the span ``buf[start:end]`` (the received bytes themselves on the raw path). ``ordered``: already
    in (entity, position) order, as HMGET replies are."""

    ent: np.ndarray
    pos: np.ndarray
    buf: np.ndarray
    start: np.ndarray
    end: np.ndarray
    ordered: bool = False

    @property
    def vals(self) -> list[bytes]:
        buf = self.buf
        return [buf[s:e].tobytes() for s, e in zip(self.start.tolist(), self.end.tolist())]

    @classmethod
    def of(cls, ent: np.ndarray, pos: np.ndarray, vals: list[bytes], ordered: bool = False) -> _Sparse:
        lens = np.fromiter(map(len, vals), np.int64, len(vals))
        end = np.cumsum(lens)
        return cls(ent, pos, np.frombuffer(b"".join(vals), np.uint8), end - lens, end, ordered)


def _sparse(lay: _Layout, rows: list[Any], mode: str) -> _Sparse:
    """The parsed-reply front end (a client pipeline: Redis Cluster, RESP3)."""
    nf = len(lay.fields)
    if mode != "hgetall":
        flat = list(chain.from_iterable(rows))
        present = np.frombuffer(bytes(map(bool, flat)), dtype=np.bool_)  # a tile value is never empty
        where = np.flatnonzero(present)
        return _Sparse.of(where // max(nf, 1), where % max(nf, 1), list(compress(flat, present)), ordered=True)
    # HGETALL replies, flattened once: loops run in C (map, compress, numpy), not per field in Python
    rows = [[x for kv in r.items() for x in kv] if isinstance(r, dict) else r for r in rows]  # RESP3 maps
    flat = list(chain.from_iterable(rows))
    pos_all = np.fromiter(map(lay.pos.get, flat[0::2], repeat(-1)), dtype=np.intp, count=len(flat) // 2)
    ent_all = np.repeat(np.arange(len(rows), dtype=np.intp), [len(r) // 2 for r in rows])
    keep = pos_all >= 0  # fields the layout does not name (other resolutions, "_n") are ignored
    return _Sparse.of(ent_all[keep], pos_all[keep], list(compress(flat[1::2], keep.tolist())))


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
    """The compiled path's column type: numeric ops and distinct counts int64/float64 (0 under the null
    mask), ``last``/``latest`` objects (None)."""
    return None if f.op in ("last", "latest") else _NUMPY.get(feature_arrow_type(f))


def _typed(by_dtype: Sequence[tuple[Any, tuple[str, ...]]], cols: Mapping[str, list[Any]]) -> dict[str, Column]:
    """Python values per feature -> columns of the compiled path's types, one ``np.array`` per dtype
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
#: path (the compiled path's fixed cost per call, ~100-200 us of glue, dominates), more by the
#: compiled path. Measured per view merge (fraud plan, bench/fetch.py's data, 2026-11-23 morning),
#: median us scalar vs compiled: 1 card (~21 tiles) 161 vs 217, 2 cards (~41) 384 vs 296, 4 (~83)
#: 550 vs 268, 16 (~324) 3,322 vs 518; 1 merchant (~13) 50 vs 115, 2 (~24) 111 vs 148, 4 (~46) 307
#: vs 264, 16 (~189) 1,100 vs 224.
_SCALAR_TILES = 32

def warm(project: str, plan: FeaturePlan) -> None:
    """Load the compiled merge (numba and its on-disk cache, or compile it on a new machine) now,
    not on the first large fetch: a serving process's first batch took ~1 s more without this.
    Merges one empty tile per view through exactly the calls a fetch makes."""
    t = int(time.time() * 1000)
    for vp in plan.views:
        lay = _layout(project, vp, tuple(f.name for f in vp.features), t)
        if lay.fields:
            value = lay.codec.encode((0, 0), ir.empty_ir(vp.fields))
            _merge_compiled(lay, _Sparse.of(np.zeros(1, np.intp), np.zeros(1, np.intp), [value]), 1, t)
    ping = np.frombuffer(b":1\r\n", np.uint8)  # the raw reply kernels, likewise
    resp.complete(ping, 0, 4, 1)
    resp.tiles(ping, 0, 4, 0, False, np.zeros(0, np.int64), np.zeros(0, np.int64))


def _merge_compiled(lay: _Layout, tiles: _Sparse, n: int, t: int) -> dict[str, Column]:
    """Every window group of every entity in one compiled pass over the tiles in canonical order
    (``ir.cmerge`` for the numeric fields, ``ir.cmerge_var`` per last/distinct field), the values
    read in place from the received bytes (``TileCodec.joined_spans``): no per-tile Python object. Falls
    back to the scalar path when some tile is in the JSON form."""
    codec = lay.codec
    if tiles.ordered:
        ent, pos, starts, ends = tiles.ent, tiles.pos, tiles.start, tiles.end
    else:
        order = np.lexsort((tiles.pos, tiles.ent))  # canonical order = field position order
        ent, pos, starts, ends = tiles.ent[order], tiles.pos[order], tiles.start[order], tiles.end[order]
    joined = codec.joined_spans(tiles.buf, starts, ends)
    if joined is None:  # rare: a string holding a separator (or empty) made some tile JSON
        return _merge_scalar(lay, tiles, n, t)
    rowptr = np.searchsorted(ent, np.arange(n + 1))
    fx = joined.fixed
    mats = {}
    for sl in codec.slots:
        mats[sl.field.name] = fx[sl.field.name]
        if sl.nullable:
            mats[sl.field.name + "__null"] = fx[sl.field.name + "__null"] != 0
    merged = ir.cmerge([sl.field for sl in codec.slots], rowptr, pos, lay.member, mats)
    var_index = {f.name: j for j, f in enumerate(codec.var_fields)}
    var_out: dict[str, np.ndarray] = {}
    for fld in codec.var_fields:  # only the groups that read it
        need = np.array([any(f.name == fld.name for f in g.fields) for g in lay.groups], bool)
        if need.any():
            j = var_index[fld.name]
            var_out[fld.name] = ir.cmerge_var(joined.buf, joined.start[:, j], joined.end[:, j], rowptr, pos,
                                             lay.member & need[:, None], fld.kind)
    out: dict[str, Column] = {}
    buf = joined.buf
    with np.errstate(all="ignore"):
        for gi, g in enumerate(lay.groups):
            for f in g.features:
                if f.op in ("last", "latest"):
                    name = f"{f.column}__last"
                    try:
                        keys_ = [None if a < 0 else buf[a:b].tobytes().decode() for a, b in var_out[name][:, gi].tolist()]
                    except UnicodeDecodeError as exc:
                        raise codec._corrupt_var(exc) from exc
                    out[f.name] = _objects(ir.finalize_last(f, keys_, t))
                elif f.op == "distinct_count":
                    out[f.name] = ir.vfinalize(f, {f"{f.column}__distinct": var_out[f"{f.column}__distinct"]}, gi)
                else:
                    out[f.name] = ir.vfinalize(f, merged, gi)
    return out
