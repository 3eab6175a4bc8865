"""Redis layout of the online store: keys, fields, retention and the tile value encoding.

Layout (``<h>`` = the view's 16-hex ``plan_hash``; ``hw1`` = layout version 1, bumped when the
value encoding changes so an upgraded writer never compares versions with bytes it cannot read)::

    hw1:<project>:<view>:<h>:{<entity>}     HASH, one per (project, view, plan, entity)
        <resolution_ms>:<tile_start>        tile value (encoding below), e.g. "60000:1704067200000"
        _n                                  newest tile_start written (ms, decimal): the trim anchor
        TTL                                 key_ttl_ms(view), refreshed by every write: idle entities vanish
    hw1:<project>:progress:<view>:<h>       HASH, one per (project, view, plan)
        p:<source partition>                newest append time (ms) the Flink job aggregated from it
        as_of                               min over the p:* fields (published after the settle rule)
        l:<source partition>                events of it the job has dropped as late (the newest
                                            late-count record; a restarted writer's gauge starts here)
        history_ms                          the history the writer keeps beyond what "now" needs
                                            (``run_writer(history_ms=...)``; ``exact_since`` reads it)

* **Plan hash in the key**, not in a field (DESIGN, "Five rules" 3; STYLE 11): a changed plan reads
  and writes a fresh keyspace, so old and new jobs can run side by side (blue/green) and a reader
  can never merge tiles of other semantics; the old keys expire by TTL. A "plan" field would make
  two writers of different plans fight over one hash.
* **Hash tag on the entity** (``{<entity>}``): in Redis Cluster every view of one entity id hashes to
  one slot, so a 1-entity fetch of all views is answered by one node (its p99 is one node's, not
  the slowest of several), and a write script can touch one entity's views together. Entities
  still spread over slots; a hot entity is hot whatever the tag. Project and view names may not
  contain ``{``, ``}`` or ``:`` (checked); an entity may contain anything (Redis takes the tag up to
  the first ``}``, which is still the same for every view of that entity).

Tile value (little-endian; fixed part first so the reader decodes many tiles with one
``np.frombuffer``)::

    n_events int64 | max_append_ms int64          the version, compared server-side by the writer's Lua
    per numeric IR field, in ViewPlan.fields order: cnt int64 | sum, m2 float64 |
        min/max int64 (int, long, timestamp) or float64 (float, double) plus a uint8 null flag
    var part                                      only when the view has last/distinct fields, in
                                                  field order: 0x01 then the fields joined by 0x1e, a
                                                  distinct's sorted items joined by 0x1f, a null last
                                                  empty (split, no per-byte parsing); or 0x02 then a
                                                  JSON array when some string holds 0x1e/0x1f or is ""

Retention (why a tile may be deleted). A query at ``t`` reads, for a window ``W`` with hop ``h``,
tiles of ``h`` and coarser rungs from ``floor(t - W, h)`` on (the greedy body of
``windows.window_tiles``) and, for each finer rung ``r``, ``r`` tiles only after
``floor(t, next rung above r)`` (the head). Fetches are served for ``t >= newest -
allowed_lateness``, so a tile of resolution ``r`` is needed only while ``tile_start >= newest -
R(r)`` with ``R(r) = need(r) + lateness + r``: ``need`` is the longest ``W`` whose hop is ``r`` or
finer, or the next coarser rung when ``r`` only serves heads (1 s tiles live ~10 s + lateness,
not a day). Unbounded windows (latest without TTL) read back ``lookback_ms`` (the key TTL
rounded up to the hop): the store forgets an entity idle longer than its TTL anyway, so online
"latest ever" means "latest within the store retention"; give the view a ``ttl`` to extend it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any, Mapping, Sequence

import numpy as np

from online_store.errors import CorruptTileError, LayoutError
from streamjobs import ir
from streamjobs.plan import ViewPlan

__all__ = [
    "PREFIX", "NEWEST_FIELD", "AS_OF_FIELD", "VERSION", "check_project", "entity_key", "entity_key_prefix",
    "progress_key", "exact_since", "project_pattern", "tile_field", "parse_tile_field", "retention_ms",
    "key_ttl_ms", "lookback_ms", "TileCodec", "codec_for", "WRITE_LUA", "PROGRESS_LUA", "IDLE_LUA",
]

#: Key prefix: "hw" + the layout version.
PREFIX = "hw1"
NEWEST_FIELD = "_n"
AS_OF_FIELD = "as_of"
PARTITION_PREFIX = "p:"
LATE_PREFIX = "l:"
HISTORY_FIELD = "history_ms"
#: The version header every tile value starts with; the writer's Lua reads it with struct '<i8i8'.
VERSION = struct.Struct("<qq")
_NAME_RE = re.compile(r"^[^{}:\s]+$")
_SEP = re.compile("[\x1e\x1f]")


def check_project(project: str) -> str:
    if not isinstance(project, str) or not _NAME_RE.match(project):
        raise LayoutError(f"project name {project!r} cannot be used in Redis keys: avoid ':', '{{', '}}' and spaces")
    return project


def entity_key_prefix(project: str, view: ViewPlan) -> str:
    """Everything before the entity: ``hw1:<project>:<view>:<plan_hash>:{``."""
    return f"{PREFIX}:{check_project(project)}:{view.name}:{view.plan_hash}:{{"


def entity_key(project: str, view: ViewPlan, entity: str) -> str:
    return f"{entity_key_prefix(project, view)}{entity}}}"


def progress_key(project: str, view: ViewPlan) -> str:
    return f"{PREFIX}:{check_project(project)}:progress:{view.name}:{view.plan_hash}"


def exact_since(view: ViewPlan, history_ms: int | None, now_ms: int) -> int:
    """The earliest query time a fetch of ``view`` is exact for whatever entity it reads: tiles are
    trimmed behind each entity's newest tile, which is never past the writer's clock, so
    ``now - allowed_lateness - history_ms`` (``history_ms``: the writer's, from the progress key's
    ``HISTORY_FIELD``; None when absent). Earlier times may read trimmed tiles: counts and sums
    too small, with no error."""
    return int(now_ms) - view.allowed_lateness_ms - int(history_ms or 0)


def project_pattern(project: str) -> str:
    """SCAN pattern matching every key of a project (tests and ``online drop`` use it)."""
    return f"{PREFIX}:{check_project(project)}:*"


def tile_field(resolution_ms: int, tile_start: int) -> str:
    return f"{int(resolution_ms)}:{int(tile_start)}"


def parse_tile_field(field: str | bytes) -> tuple[int, int] | None:
    """``(resolution_ms, tile_start)`` of a tile field; None for meta fields such as ``_n``."""
    text = field.decode() if isinstance(field, bytes) else field
    r, sep, s = text.partition(":")
    if not sep or not r.isdigit():
        return None
    return int(r), int(s)


# ---------------------------------------------------------------- retention


def key_ttl_ms(view: ViewPlan) -> int:
    """Idle expiry of an entity key: longest window + lateness + allowed_future + coarsest hop, or the
    view's ``ttl`` if longer. ``allowed_future``: an entity's last event may be timed that far past
    its append (the writer's clock), and stays in windows until its own time + the window."""
    derived = view.longest_window_ms + view.allowed_lateness_ms + view.allowed_future_ms + max(view.ladder)
    return max(derived, view.ttl_ms or 0)


def lookback_ms(view: ViewPlan, hop_ms: int) -> int:
    """How far back an unbounded window reads: the key TTL rounded up to whole hops (see module doc)."""
    return -(-key_ttl_ms(view) // hop_ms) * hop_ms


@lru_cache(maxsize=256)
def retention_ms(view: ViewPlan) -> dict[int, int]:
    """``R(r)`` per ladder resolution: tiles with ``tile_start < newest - R(r)`` are never read again."""
    ladder = tuple(sorted(view.ladder))
    need = {r: 0 for r in ladder}
    for g in view.groups:
        w = g.window_ms if g.window_ms is not None else lookback_ms(view, g.hop_ms)
        for r in ladder:
            if r >= g.hop_ms:  # the body: the hop and coarser rungs, as far back as the window starts
                need[r] = max(need[r], w)
        for finer, coarser in zip(ladder, ladder[1:]):
            if coarser <= g.hop_ms:
                need[finer] = max(need[finer], coarser)
    return {r: need[r] + view.allowed_lateness_ms + r for r in ladder}


# ---------------------------------------------------------------- server side of the layout
# The writer's scripts live here because they are the layout: field names, the '<i8i8' version
# header, the '_n' anchor, retention and TTL. ``online_store.writer`` explains the semantics.

WRITE_LUA = """
-- KEYS: entity hashes. ARGV: now_ms, ttl_ms, nres, (resolution, retention) x nres, then per tile
-- 6 args: key index, resolution, tile_start, n_events, max_append_ms, value (starts '<i8i8' version)
local now, ttl, nres = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local res, R = {}, {}
for i = 1, nres do res[i] = tonumber(ARGV[2 + 2 * i]); R[res[i]] = tonumber(ARGV[3 + 2 * i]) end
local base = 4 + 2 * nres
local newest, old, touched = {}, {}, {}
for o = base, #ARGV, 6 do
  local k, s = tonumber(ARGV[o]), math.min(tonumber(ARGV[o + 2]), now)
  if newest[k] == nil or s > newest[k] then newest[k] = s end
end
for k, s in pairs(newest) do
  local prev = tonumber(redis.call('HGET', KEYS[k], '_n'))
  old[k] = prev
  if prev ~= nil and prev > s then newest[k] = prev end
end
local written, stale, too_old, deleted = 0, 0, 0, 0
for o = base, #ARGV, 6 do
  local k, r, s = tonumber(ARGV[o]), tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  if R[r] == nil or s < newest[k] - R[r] then
    too_old = too_old + 1
  else
    local field = ARGV[o + 1] .. ':' .. ARGV[o + 2]
    local cur = redis.call('HGET', KEYS[k], field)
    local newer = true
    if cur then
      local n, a = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
      local cn, ca = struct.unpack('<i8i8', cur)
      newer = n > cn or (n == cn and a > ca)
    end
    if newer then
      redis.call('HSET', KEYS[k], field, ARGV[o + 5]); written = written + 1; touched[k] = true
    else
      stale = stale + 1
    end
  end
end
for k, nw in pairs(newest) do
  local key, prev = KEYS[k], old[k]
  if prev ~= nil and nw > prev then
    local dels, scan = {}, false
    for i = 1, nres do
      local r = res[i]
      local lo, hi = math.ceil((prev - R[r]) / r) * r, math.ceil((nw - R[r]) / r) * r
      if (hi - lo) / r > 256 then scan = true; break end
      for s = lo, hi - r, r do dels[#dels + 1] = string.format('%d:%d', r, s) end
    end
    if scan then
      dels = {}
      for _, f in ipairs(redis.call('HKEYS', key)) do
        local r, s = string.match(f, '^(%d+):(-?%d+)$')
        if r and R[tonumber(r)] and tonumber(s) < nw - R[tonumber(r)] then dels[#dels + 1] = f end
      end
    end
    for i = 1, #dels, 1000 do
      deleted = deleted + redis.call('HDEL', key, unpack(dels, i, math.min(i + 999, #dels)))
    end
  end
  if touched[k] then
    if prev == nil or nw > prev then redis.call('HSET', key, '_n', string.format('%d', nw)) end
    redis.call('PEXPIRE', key, ttl)
  end
end
return {written, stale, too_old, deleted}
"""

# as_of = min over the source partitions' 'p:' values, once all expected partitions have one.
_AS_OF_LUA = """
local all, m, n = redis.call('HGETALL', KEYS[1]), nil, 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'p:' then
    n = n + 1
    local v = tonumber(all[i + 1])
    if m == nil or v < m then m = v end
  end
end
if m ~= nil and n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'as_of', string.format('%d', m))
  return string.format('%d', m)
end
return false
"""

PROGRESS_LUA = """
-- KEYS[1]: progress hash. ARGV: expected source partitions (0 = unknown), then per partition
-- (partition, append_ms, next_offset): 'p:' complete-through ms and 'o:' next offset, both max.
local function raise(f, v)
  local cur = tonumber(redis.call('HGET', KEYS[1], f))
  if cur == nil or tonumber(v) > cur then redis.call('HSET', KEYS[1], f, v) end
end
for i = 2, #ARGV, 3 do
  raise('p:' .. ARGV[i], ARGV[i + 1])
  raise('o:' .. ARGV[i], ARGV[i + 2])
end
""" + _AS_OF_LUA

IDLE_LUA = """
-- KEYS[1]: progress hash. ARGV: expected source partitions, until_ms (a time before the end
-- offsets were read, less a margin), then per source partition (partition, low, high). A
-- partition whose settled progress is exactly at its end offset (or that is empty and never
-- reported) holds no event appended up to until_ms that is not in Redis: 'p:' rises to until_ms.
-- Equality, not >=: a next offset past the end means the topic was recreated or truncated.
local now = ARGV[2]
for i = 3, #ARGV, 3 do
  local f = 'p:' .. ARGV[i]
  local o = tonumber(redis.call('HGET', KEYS[1], 'o:' .. ARGV[i]))
  local low, high = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if (o ~= nil and o == high) or (o == nil and high <= low) then
    local cur = tonumber(redis.call('HGET', KEYS[1], f))
    if cur == nil or tonumber(now) > cur then redis.call('HSET', KEYS[1], f, now) end
  end
end
""" + _AS_OF_LUA



# ---------------------------------------------------------------- tile values

_NUMERIC = ("cnt", "sum", "m2", "min", "max")
_INT_TYPES = ("int", "long", "timestamp")


@dataclass(frozen=True)
class _Slot:
    field: ir.IRField
    fmt: str  # struct code: q or d
    nullable: bool


class TileCodec:
    """Encodes one view's tile IRs to Redis values and back (scalar and bulk)."""

    def __init__(self, view: ViewPlan) -> None:
        self.view = view
        slots: list[_Slot] = []
        for f in view.fields:
            if f.kind in _NUMERIC:
                if f.kind in ("min", "max") and f.column_type not in ir.NUMERIC_TYPES | {"timestamp"}:
                    raise LayoutError(f"view {view.name!r}: {f.name} of type {f.column_type} has no tile encoding")
                fmt = "q" if f.kind == "cnt" or (f.kind in ("min", "max") and f.column_type in _INT_TYPES) else "d"
                slots.append(_Slot(f, fmt, f.kind in ("min", "max")))
        self.slots = tuple(slots)
        self.var_fields = tuple(f for f in view.fields if f.kind in ("last", "distinct"))
        self._slot_names = tuple((s.field.name, s.nullable) for s in slots)  # encode's hot loop
        self._var_names = tuple((f.name, f.kind == "distinct") for f in self.var_fields)
        self._struct = struct.Struct("<qq" + "".join(s.fmt + ("B" if s.nullable else "") for s in slots))
        self.pack_fixed = self._struct.pack  # (n_events, max_append_ms, slot values...) -> the fixed part
        self.fixed_size = self._struct.size
        self._empty = self._struct.pack(0, 0, *(x for sl in slots for x in ((0, 1) if sl.nullable else (0,))))
        dt: list[tuple[str, str]] = [("_n", "<i8"), ("_a", "<i8")]
        for s in slots:
            dt.append((s.field.name, "<i8" if s.fmt == "q" else "<f8"))
            if s.nullable:
                dt.append((s.field.name + "__null", "u1"))
        self.dtype = np.dtype(dt)
        assert self.dtype.itemsize == self.fixed_size

    def encode(self, version: tuple[int, int], tile: Mapping[str, Any]) -> bytes:
        """Value bytes of a tile IR (as ``ir.from_row`` returns it) at ``version``."""
        args: list[Any] = [int(version[0]), int(version[1])]
        for name, nullable in self._slot_names:
            v = tile[name]
            if nullable:
                args += [0 if v is None else v, 1 if v is None else 0]
            else:
                args.append(v)
        out = self._struct.pack(*args)
        if self.var_fields:
            var = [sorted(tile[name]) if distinct else tile[name] for name, distinct in self._var_names]
            strings = [x for v in var if v is not None for x in (v if isinstance(v, list) else [v])]
            if not all(strings) or _SEP.search("".join(strings)):  # one search: joined, same answer
                out += b"\x02" + json.dumps(var, ensure_ascii=False, separators=(",", ":")).encode()
            else:
                out += b"\x01" + "\x1e".join("" if v is None else v if isinstance(v, str) else "\x1f".join(v)
                                             for v in var).encode()
        return out

    def decode(self, value: bytes) -> tuple[tuple[int, int], dict[str, Any]]:
        """``(version, tile IR)``; the IR has exactly ``view.fields`` with ``ir.from_row`` types."""
        try:
            vals = self._struct.unpack_from(value)
            var = [None if x is None else x.decode() if isinstance(x, bytes) else [i.decode() for i in x]
                   for x in self.decode_var(value)] if self.var_fields else []
        except (struct.error, ValueError, IndexError) as exc:
            raise CorruptTileError(f"view {self.view.name!r}: tile value of {len(value)} bytes does not decode "
                                   f"({exc}); rebuild the store with `headwater online rebuild`") from exc
        out: dict[str, Any] = {}
        i = 2
        for s in self.slots:
            v = vals[i]
            if s.nullable:
                v = None if vals[i + 1] else v
                i += 2
            else:
                i += 1
            out[s.field.name] = v
        for f, v in zip(self.var_fields, var):
            out[f.name] = frozenset(v) if f.kind == "distinct" else v
        return (vals[0], vals[1]), {f.name: out[f.name] for f in self.view.fields}

    def decode_columns(self, values: Sequence[bytes], *, raw_distinct: bool = False) -> dict[str, list[Any]]:
        """``decode`` of many values as columns: ``out[name][i] == decode(values[i])[1][name]``, same
        types, keys in ``view.fields`` order. The fixed parts in one ``np.frombuffer``, the var parts
        in one split: the online reader's per-entity path (``decode`` per value cost ~4.4 us a tile).

        ``raw_distinct``: distinct columns hold what :meth:`distinct_items` turns into the set, so a
        caller builds only the sets it merges (a card's 1 h tiles carry its merchants for a window
        that does not ask for them: building every set was most of a hot entity's decode)."""
        table = self.decode_fixed(values)
        out: dict[str, list[Any]] = {}
        for sl in self.slots:
            col = table[sl.field.name].tolist()
            if sl.nullable:
                col = [None if z else v for v, z in zip(col, table[sl.field.name + "__null"].tolist())]
            out[sl.field.name] = col
        if self.var_fields:
            parts = self.split_var(values)
            if parts is None:  # some value in the JSON form (or malformed): one by one, same errors
                irs = [self.decode(v)[1] for v in values]
                parts = [[x[f.name] for x in irs] for f in self.var_fields]
            else:
                try:
                    parts = [(col if raw_distinct else list(map(self.distinct_items, col)))
                             if f.kind == "distinct" else [x.decode() if x else None for x in col]
                             for f, col in zip(self.var_fields, parts)]
                except UnicodeDecodeError as exc:
                    raise self._corrupt_var(exc) from exc
            out.update(zip((f.name for f in self.var_fields), parts))
        return {f.name: out[f.name] for f in self.view.fields}

    def distinct_items(self, raw: bytes | frozenset[str]) -> frozenset[str]:
        """A distinct column entry of ``decode_columns(raw_distinct=True)`` as the IR's set."""
        return self.distinct_union((raw,))

    def distinct_union(self, raws: Sequence[bytes | frozenset[str]]) -> frozenset[str]:
        """The union of several such entries with one join and one split (a busy merchant's cards
        over 60 one-minute tiles: building a set per tile, then their union, cost more than twice)."""
        joined = b"\x1f".join([r for r in raws if r and not isinstance(r, frozenset)])
        try:
            out = frozenset(joined.decode().split("\x1f")) if joined else frozenset()
        except UnicodeDecodeError as exc:
            raise self._corrupt_var(exc) from exc
        decoded = [r for r in raws if isinstance(r, frozenset)]  # JSON-form tiles: decoded already
        return out.union(*decoded) if decoded else out

    def _corrupt_var(self, exc: Exception) -> CorruptTileError:
        return CorruptTileError(f"view {self.view.name!r}: a stored tile's var part is not UTF-8 ({exc}); "
                                "rebuild the store with `headwater online rebuild`")

    def decode_fixed(self, values: Sequence[bytes], *, pad: bool = False) -> np.ndarray:
        """The fixed parts of many values as one structured array (one ``np.frombuffer``).

        ``pad`` appends one empty tile (cnt 0, sums 0.0, min/max null): the row absent tiles point at."""
        size = self.fixed_size
        parts = list(values) if not self.var_fields else [v[:size] for v in values]
        if pad:
            parts.append(self._empty)
        buf = b"".join(parts)
        if len(buf) != size * len(parts):
            raise CorruptTileError(f"view {self.view.name!r}: a stored tile is shorter than {size} bytes; "
                                   "rebuild the store with `headwater online rebuild`")
        return np.frombuffer(buf, dtype=self.dtype) if parts else np.zeros(0, self.dtype)

    def decode_var(self, value: bytes) -> list[Any]:
        """The var part in ``var_fields`` order, as UTF-8 bytes: a last key (or None), a distinct's items.

        Bytes, not str: UTF-8 byte order is code point order, so ``max`` of last keys and the size
        of a distinct union are the same as on the decoded strings, and only winners get decoded.
        """
        tail = value[self.fixed_size:]
        if tail[:1] == b"\x01":
            out: list[Any] = tail[1:].split(b"\x1e")
            for i, f in enumerate(self.var_fields):
                x = out[i]
                out[i] = (x.split(b"\x1f") if x else []) if f.kind == "distinct" else (x or None)
            return out
        var = json.loads(tail[1:])
        return [None if x is None else x.encode() if isinstance(x, str) else [i.encode() for i in x] for x in var]

    def split_var(self, values: Sequence[bytes]) -> list[list[Any]] | None:
        """Var parts of many values, per var field, with one join + split: a last key (b"" = null) or a
        distinct's items joined by 0x1f. None when some value uses the JSON form (then: decode_var)."""
        size, nv = self.fixed_size, len(self.var_fields)
        if not values:
            return [[] for _ in range(nv)]
        if not all(map(bytes.startswith, values, repeat(b"\x01"), repeat(size))):  # C loop, no slices
            return None
        flat = b"\x1e".join([v[size + 1:] for v in values]).split(b"\x1e")
        if len(flat) != nv * len(values):
            raise CorruptTileError(f"view {self.view.name!r}: a stored tile has a malformed var part; "
                                   "rebuild the store with `headwater online rebuild`")
        return [flat[j::nv] for j in range(nv)]

    def joined_spans(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Joined | None:
        """The values at ``buf[starts[i]:ends[i]]`` (a fetch's received bytes, read in place): the
        fixed parts as ``decode_fixed`` gives them (one numpy gather, no per-value slice) and each
        var field's span per value, found by one compiled scan. None when some value is in the
        JSON form (then: ``split_var``/``decode_var``)."""
        size, nv, n = self.fixed_size, len(self.var_fields), len(starts)
        if n and int((ends - starts).min()) < size + (1 if nv else 0):
            raise CorruptTileError(f"view {self.view.name!r}: a stored tile is shorter than {size} bytes; "
                                   "rebuild the store with `headwater online rebuild`")
        raw = np.empty((n, size), np.uint8)
        if n:
            _jit_gather()(buf, np.ascontiguousarray(starts, np.int64), size, raw)
        fixed = raw.view(self.dtype).reshape(-1)
        span_s = np.empty((n, nv), np.int64)
        span_e = np.empty((n, nv), np.int64)
        if nv and n:
            status = _jit_spans()(buf, starts, ends, size, nv, span_s, span_e)
            if status == 1:
                return None
            if status == 2:
                raise CorruptTileError(f"view {self.view.name!r}: a stored tile has a malformed var part; "
                                       "rebuild the store with `headwater online rebuild`")
        return Joined(buf, fixed, span_s, span_e)


@dataclass(frozen=True)
class Joined:
    """``TileCodec.joined_spans``: the buffer the values sit in; ``fixed`` per value; ``start``/``end``
    (values x var fields) the byte span of each var field's part (a last key, or items joined by 0x1f)."""

    buf: np.ndarray
    fixed: np.ndarray
    start: np.ndarray
    end: np.ndarray


def _var_spans(buf, starts, ends, size, nv, out_s, out_e):  # pragma: no cover - compiled
    """0 = every value in the 0x01 form, spans filled; 1 = some value in the JSON form; 2 = malformed."""
    for t in range(starts.shape[0]):
        i = starts[t] + size
        if buf[i] != 1:
            return 1
        i += 1
        j, s0 = 0, i
        while i <= ends[t]:
            if i == ends[t] or buf[i] == 0x1E:
                if j >= nv:
                    return 2
                out_s[t, j] = s0
                out_e[t, j] = i
                j += 1
                s0 = i + 1
            i += 1
        if j != nv:
            return 2
    return 0


def _gather(buf, starts, size, out):  # pragma: no cover - compiled
    """``out[t] = buf[starts[t]:starts[t] + size]``: the fixed parts, without numpy's (n, size) index array."""
    for t in range(starts.shape[0]):
        s = starts[t]
        for j in range(size):
            out[t, j] = buf[s + j]


@lru_cache(maxsize=None)
def _jit_gather() -> Any:
    import numba
    return numba.njit(cache=True)(_gather)


@lru_cache(maxsize=None)
def _jit_spans() -> Any:
    import numba
    return numba.njit(cache=True)(_var_spans)


@lru_cache(maxsize=256)
def codec_for(view: ViewPlan) -> TileCodec:
    return TileCodec(view)
