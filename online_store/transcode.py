"""Tile record bytes -> Redis write arguments in one generated function per view.

The online writer's per-record path was: the Avro record to a dict (``schemas/fastread.py``), the
dict to a tile IR (``ir.from_row``), the IR to the value bytes (``keys.TileCodec.encode``). Three
passes and two dicts of every field for each of the ~2 tile records an event makes: 31-39 s of
writer CPU per million records of a 10k events/s run's tiles topic (``bench/writer.py``), i.e.
0.6-0.8 of a core at that rate, which the Flink job needs (18-22 s with this path). This module
generates, from the view's tile schema, one function that reads the Avro bytes once and packs
the value directly: numbers into the fixed part, strings as byte slices into the var part (no
str decode and re-encode; one UTF-8 check over the joined part). A distinct set is kept as
``HW_DISTINCT`` sent it when a C-level check finds it strictly sorted, else sorted as bytes: byte
order is code point order for UTF-8, the order ``encode`` sorts the strings in.

It only takes the common case and returns None for everything else, which the writer then
sends down the full path (so errors, counters and the JSON var form keep one owner): a progress
record, another view or plan hash, a string that is empty or holds 0x1e / 0x1f, bad UTF-8, a
number out of int64 range, a record that does not end where the bytes do. Its output is
byte-identical to the full path's (property-tested in ``tests/test_transcode.py``).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from itertools import islice
from typing import Any

from online_store.keys import TileCodec
from online_store.tiles import HEADER_FIELDS, tile_value_schema
from schemas.fastread import ENV, Emitter, FastReadError

__all__ = ["Transcoded", "compile_transcoder", "ERRORS"]

#: ``(entity, resolution_ms, tile_start, n_events, max_append_ms, value)``
Transcoded = tuple[str, int, int, int, int, bytes]
Transcoder = Callable[[bytes], "Transcoded | None"]
#: What a generated function may raise on bytes that are not a record: the caller falls back.
ERRORS = (IndexError, struct.error, FastReadError, UnicodeDecodeError)


def _plain(t: Any) -> Any:
    """``["null", T]`` -> T (the IR fields are all nullable in the tile schema)."""
    return t[1] if isinstance(t, list) and len(t) == 2 and t[0] == "null" else None


def compile_transcoder(codec: TileCodec) -> Transcoder | None:
    """``tx(framed) -> Transcoded | None`` for values written with ``tile_value_schema(codec.view)``;
    the caller has checked the 5-byte header (magic byte, that schema's id). None: a view whose
    tile schema this generator does not cover."""
    view = codec.view
    schema = tile_value_schema(view)
    names = [f["name"] for f in schema["fields"]]
    assert tuple(names[:len(HEADER_FIELDS)]) == HEADER_FIELDS and names[len(HEADER_FIELDS):] == [
        f.name for f in view.fields]
    em = Emitter()
    put, varint = em.put, em.varint

    def raw_string(dst: str) -> None:  # a string's bytes, not decoded
        varint(1, "ln")
        put(1, "if ln < 0: return None")
        put(1, "e = p + ln")
        put(1, "if e > n: return None")
        put(1, f"{dst} = b[p:e]")
        put(1, "p = e")

    put(0, "def tx(b):")
    put(1, "n = len(b)")
    put(1, "p = 5")
    raw_string("vw")
    put(1, "if vw != VIEW: return None")
    raw_string("ent")
    varint(1, "res")
    put(1, "if res <= 0: return None")  # progress (settle rule) and late counts: the full path
    varint(1, "ts")
    raw_string("ph")
    put(1, "if ph != PLAN: return None")
    varint(1, "ne")
    varint(1, "am")
    fixed: list[str] = ["ne", "am"]
    var: list[str] = []
    distinct: list[str] = []
    slots = {s.field.name: s for s in codec.slots}
    for i, f in enumerate(view.fields):
        avro = _plain(schema["fields"][len(HEADER_FIELDS) + i]["type"])
        v = f"f{i}"
        varint(1, "br")
        put(1, "if br == 0:")
        if f.name in slots:
            sl = slots[f.name]
            if sl.nullable:
                put(2, f"{v}, {v}n = 0, 1")
            else:
                put(2, f"{v} = {'0' if sl.fmt == 'q' else '0.0'}")  # ir.from_row: NULL cnt/sum -> 0
            put(1, "elif br == 1:")
            if avro in ("int", "long"):
                varint(2, v)
            elif avro in ("double", "float"):
                # ir.from_row's ``float(v or 0.0)`` turns a -0.0 sum into 0.0; min/max keep it
                put(2, f"{v} = {'_D' if avro == 'double' else '_F'}(b, p)[0]{'' if sl.nullable else ' or 0.0'}")
                put(2, f"p += {8 if avro == 'double' else 4}")
            else:
                return None
            if sl.nullable:
                put(2, f"{v}n = 0")
            put(1, "else: return None")
            fixed += [v, f"{v}n"] if sl.nullable else [v]
        elif f.kind == "last":
            put(2, f"{v} = b''")
            put(1, "elif br == 1:")
            varint(2, "ln")
            put(2, "if ln <= 0: return None")  # "" takes the JSON form: the full path
            put(2, "e = p + ln")
            put(2, "if e > n: return None")
            put(2, f"{v} = b[p:e]")
            put(2, "p = e")
            put(1, "else: return None")
            var.append(v)
        else:  # distinct: array of ["null", "string"]
            put(2, f"{v} = ()")
            put(1, "elif br == 1:")
            put(2, f"{v} = []")
            put(2, "while True:")
            varint(3, "cnt")
            put(3, "if cnt == 0: break")
            put(3, "if cnt < 0:")
            put(4, "cnt = -cnt")
            varint(4, "sz")
            put(3, "for _ in range(cnt):")
            put(4, "ib = b[p]")
            put(4, "p += 1")
            put(4, "if ib == 0: continue")  # a null item: from_row drops it
            put(4, "if ib != 2: return None")
            varint(4, "ln")
            put(4, "if ln <= 0: return None")
            put(4, "e = p + ln")
            put(4, "if e > n: return None")
            put(4, f"{v}.append(b[p:e])")
            put(4, "p = e")
            put(1, "else: return None")
            # HW_DISTINCT sends its items sorted as bytes: check that in C, sort only if not
            put(1, f"if not all(map(_LT, {v}, _islice({v}, 1, None))): {v} = sorted(set({v}))")
            var.append(f"b'\\x1f'.join({v})")
            distinct.append(v)
    put(1, "if p != n: return None")
    tail = ""
    if var:
        put(1, f"vp = b'\\x1e'.join(({', '.join(var)},))")
        seps = " + ".join(f"max(len({d}) - 1, 0)" for d in distinct) or "0"
        put(1, f"if vp.count(b'\\x1e') != {len(var) - 1} or vp.count(b'\\x1f') != {seps}: return None")
        put(1, "vp.decode()")  # bad UTF-8 raises: the caller takes the full path, which says why
        tail = " + b'\\x01' + vp"
    put(1, f"return ent.decode(), res, ts, ne, am, PACK({', '.join(fixed)}){tail}")
    ns = dict(ENV)
    ns.update(_LT=operator.lt, _islice=islice, VIEW=view.name.encode(), PLAN=view.plan_hash.encode(), PACK=codec.pack_fixed)
    exec(compile("\n".join(em.lines), f"<tile transcoder {view.name}>", "exec"), ns)  # noqa: S102
    return ns["tx"]  # type: ignore[no-any-return]
