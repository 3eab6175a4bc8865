"""A plain-Avro record reader generated per schema, for records of the reader's own schema.

``fastavro.schemaless_reader`` has a per-call set-up that dominates small records, and the online
writer decoded every tile record the Flink job emits: that decode was 44 % of the writer's
samples (py-spy) at 5k events/s, the process that fell behind (its common case now goes through
``online_store.transcode``, which generates its code with this module's ``Emitter``). This module turns a schema into
the source of one Python function (``read(b, p) -> (record, end)``) with every field's reads
inlined: a card tile record through ``AvroCodec.decode`` 5.2-5.8 us vs 7.4-9.4 us with fastavro
(alternating loops of 30,000, 2026-11-23; 4.9 vs 7.0 us for the bare readers). It covers flat records of
``null boolean int long float double bytes string``, two-branch unions with ``null``, and arrays
of those (a distinct set is ``["null", {"type": "array", "items": ["null", "string"]}]``); for
anything else :func:`compile_reader` returns None and :class:`~schemas.codec.AvroCodec` keeps
fastavro. Values equal fastavro's (property-tested, ``tests/test_fastread.py``); bad bytes raise
``IndexError``/``struct.error`` (ran out), ``UnicodeDecodeError`` or :class:`FastReadError`,
which the codec maps to its ``DecodeError`` reasons. Logical types are already stripped by the
codec (plain Avro values).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["compile_reader", "FastReadError", "Emitter", "ENV"]

Reader = Callable[[bytes, int], tuple[dict, int]]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class FastReadError(ValueError):
    """Bytes that are not a record of the schema (bad union branch, negative length, long varint)."""


def _vtail(b: bytes, p: int, x: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``x`` had the continuation bit."""
    x &= 0x7F
    shift = 7
    while True:
        c = b[p]
        p += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, p
        shift += 7
        if shift >= 70:
            raise FastReadError("varint longer than 10 bytes")


def _negative(what: str, n: int) -> FastReadError:
    return FastReadError(f"negative {what} {n}")


def _bad_branch(n: int) -> FastReadError:
    return FastReadError(f"union branch {n} out of range")


ENV: dict[str, Any] = {  # the names generated code may call
    "_vtail": _vtail, "_neg": _negative, "_branch": _bad_branch,
    "_D": struct.Struct("<d").unpack_from, "_F": struct.Struct("<f").unpack_from}


def _kind(t: Any) -> Any:
    """A field type without wrapping dicts (``{"type": "long"}`` -> ``"long"``), or None if unsupported."""
    if isinstance(t, str):
        return t if t in _PRIMITIVES else None
    if isinstance(t, dict):
        inner = t.get("type")
        if inner == "array":
            items = _kind(t.get("items"))
            return None if items is None else ("array", items)
        return _kind(inner) if isinstance(inner, str) else None
    if isinstance(t, list) and len(t) == 2 and t.count("null") == 1:
        ni = t.index("null")
        other = _kind(t[1 - ni])
        if other is None or other == "null":
            return None
        return ("union", ni, other)
    return None


class Emitter:
    """Source lines of one generated function; ``varint`` reads a zigzag long into a variable."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def put(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def varint(self, depth: int, dst: str) -> None:
        self.put(depth, f"{dst} = b[p]")
        self.put(depth, "p += 1")
        self.put(depth, f"if {dst} > 127: {dst}, p = _vtail(b, p, {dst})")
        self.put(depth, f"{dst} = ({dst} >> 1) ^ -({dst} & 1)")

    def value(self, depth: int, kind: Any, dst: str) -> None:
        if kind == "null":
            self.put(depth, f"{dst} = None")
        elif kind in ("int", "long"):
            self.varint(depth, dst)
        elif kind == "boolean":
            self.put(depth, f"{dst} = b[p] != 0")  # as fastavro: any non-zero byte is true
            self.put(depth, "p += 1")
        elif kind in ("double", "float"):
            w, fn = (8, "_D") if kind == "double" else (4, "_F")
            self.put(depth, f"{dst} = {fn}(b, p)[0]")
            self.put(depth, f"p += {w}")
        elif kind in ("string", "bytes"):
            self.varint(depth, dst)
            self.put(depth, f"if {dst} < 0: raise _neg('length', {dst})")
            self.put(depth, f"e = p + {dst}")
            self.put(depth, "if e > n: raise IndexError('past the end')")
            self.put(depth, f"{dst} = b[p:e].decode()" if kind == "string" else f"{dst} = b[p:e]")
            self.put(depth, "p = e")
        elif kind[0] == "union":
            _, ni, other = kind
            br = self.var()
            self.varint(depth, br)
            self.put(depth, f"if {br} == {ni}: {dst} = None")
            self.put(depth, f"elif {br} == {1 - ni}:")
            self.value(depth + 1, other, dst)
            self.put(depth, f"else: raise _branch({br})")
        else:  # array
            items, count, item = kind[1], self.var(), self.var()
            self.put(depth, f"{dst} = []")
            self.put(depth, "while True:")
            self.varint(depth + 1, count)
            self.put(depth + 1, f"if {count} == 0: break")
            self.put(depth + 1, f"if {count} < 0:")  # a block with its byte size: the size is not needed
            self.put(depth + 2, f"{count} = -{count}")
            size = self.var()
            self.varint(depth + 2, size)
            self.put(depth + 1, f"for _ in range({count}):")
            self.value(depth + 2, items, item)
            self.put(depth + 2, f"{dst}.append({item})")


def compile_reader(schema: Any) -> Reader | None:
    """``read(b, p)`` -> ``(record dict, end position)`` for a plain-Avro record schema, or None."""
    if not isinstance(schema, dict) or schema.get("type") != "record" or not schema.get("fields"):
        return None
    kinds = [(f.get("name"), _kind(f.get("type"))) for f in schema["fields"]]
    if any(k is None or not isinstance(name, str) for name, k in kinds):
        return None
    em = Emitter()
    em.put(0, "def read(b, p):")
    em.put(1, "n = len(b)")
    out = []
    for name, kind in kinds:
        dst = em.var()
        em.value(1, kind, dst)
        out.append(f"{name!r}: {dst}")
    em.put(1, f"return {{{', '.join(out)}}}, p")
    ns = dict(ENV)
    exec(compile("\n".join(em.lines), f"<avro reader {schema.get('name', '')}>", "exec"), ns)  # noqa: S102
    return ns["read"]  # type: ignore[no-any-return]
