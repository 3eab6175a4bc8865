"""schemas/fastread.py: the generated reader equals fastavro on random schemas and records, and
fails (never returns a value) on every truncation."""

from __future__ import annotations

import io
import struct

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import AvroCodec, DecodeError
from schemas.fastread import FastReadError, compile_reader

PRIMS = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]


def _prim_value(kind: str) -> st.SearchStrategy:
    return {
        "null": st.none(), "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False), "double": st.floats(allow_nan=False),
        "bytes": st.binary(max_size=12), "string": st.text(max_size=12),
    }[kind]


@st.composite
def field_types(draw, depth: int = 0):
    """(Avro type, value strategy): a primitive, a two-branch union with null, or an array."""
    shape = draw(st.sampled_from(["prim", "union", "array"] if depth < 2 else ["prim", "union"]))
    if shape == "prim":
        kind = draw(st.sampled_from(PRIMS))
        return kind, _prim_value(kind)
    if shape == "union":
        inner, values = draw(field_types(depth + 1).filter(lambda x: x[0] != "null" and not isinstance(x[0], list)))
        null_first = draw(st.booleans())
        return (["null", inner] if null_first else [inner, "null"]), st.none() | values
    items, values = draw(field_types(depth + 1))
    return {"type": "array", "items": items}, st.lists(values, max_size=5)


@st.composite
def schemas_and_records(draw):
    types = draw(st.lists(field_types(), min_size=1, max_size=6))
    schema = {"type": "record", "name": "R", "fields": [{"name": f"f{i}", "type": t} for i, (t, _) in enumerate(types)]}
    record = {f"f{i}": draw(values) for i, (_, values) in enumerate(types)}
    return schema, record


def _fastavro(schema: dict, data: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(schema), None)


@settings(max_examples=300, deadline=None)
@given(schemas_and_records())
def test_generated_reader_equals_fastavro(case):
    schema, record = case
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    data = buf.getvalue()
    read = compile_reader(schema)
    assert read is not None
    value, end = read(data, 0)
    assert end == len(data)
    assert value == _fastavro(schema, data)
    assert [type(x) for x in value.values()] == [type(x) for x in _fastavro(schema, data).values()]
    for cut in range(len(data)):  # a prefix is never a whole record: the reader must fail, not guess
        with pytest.raises((IndexError, struct.error, UnicodeDecodeError, FastReadError)):
            read(data[:cut], 0)


@settings(max_examples=100, deadline=None)
@given(schemas_and_records())
def test_codec_fast_path_equals_fastavro_path(case):
    """AvroCodec.decode takes the generated reader for its own schema id; the fastavro path (here
    forced by dropping the reader) gives the same values and the same error reasons."""
    schema, record = case
    fast = AvroCodec(schema, 3, validate=False)
    slow = AvroCodec(schema, 3, validate=False)
    slow._fast = None
    assert fast._fast is not None
    data = fast.encode(record)
    assert fast.decode(data) == slow.decode(data)
    for codec in (fast, slow):
        with pytest.raises(DecodeError):  # "truncated", or "avro_error" where a cut varint reads on
            codec.decode(data[:-1])
        with pytest.raises(DecodeError, match="trailing bytes") as exc:
            codec.decode(data + b"\x00")
        assert exc.value.reason == "avro_error"


def test_array_blocks_with_byte_sizes_and_bad_bytes():
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "xs", "type": {"type": "array", "items": ["null", "string"]}}, {"name": "n", "type": "long"}]}
    read = compile_reader(schema)
    # a block of -2 items (zigzag 3) with its byte size (6 -> 12), then a block of 1, then the end
    data = bytes([3, 12, 2, 2, ord("a"), 0]) + bytes([2, 2, 2, ord("b"), 0]) + bytes([4])
    assert read(data, 0) == ({"xs": ["a", None, "b"], "n": 2}, len(data))
    assert read(data, 0)[0] == _fastavro(schema, data)
    with pytest.raises(FastReadError, match="union branch"):
        read(bytes([2, 4, 0, 0]), 0)  # branch 2 of a two-branch union
    with pytest.raises(FastReadError, match="negative length"):
        read(bytes([2, 2, 1, 0, 0]), 0)  # string length -1
    with pytest.raises(FastReadError, match="varint"):
        read(bytes([0]) + bytes([0xFF] * 11), 0)
    with pytest.raises(UnicodeDecodeError):
        read(bytes([2, 2, 2, 0xFF, 0, 0]), 0)


def test_unsupported_schemas_fall_back():
    assert compile_reader({"type": "record", "name": "R", "fields": [
        {"name": "r", "type": {"type": "record", "name": "In", "fields": [{"name": "a", "type": "long"}]}}]}) is None
    assert compile_reader({"type": "record", "name": "R", "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}]}) is None
    assert compile_reader({"type": "record", "name": "R", "fields": [{"name": "u", "type": ["null", "long", "string"]}]}) is None
    assert compile_reader({"type": "record", "name": "R", "fields": [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}]}) is None
    codec = AvroCodec({"type": "record", "name": "R", "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}]}, 4)
    assert codec._fast is None and codec.decode(codec.encode({"m": {"a": 1}})) == {"m": {"a": 1}}
