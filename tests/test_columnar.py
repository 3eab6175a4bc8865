"""ColumnarCodec against the per-record AvroCodec/fastavro oracle: bytes, values, errors, speed."""

from __future__ import annotations

import json
import math
import struct
import time
import uuid
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    AvroCodec,
    ColumnarCodec,
    ColumnarUnsupported,
    DecodeError,
    EncodeError,
    SchemaError,
)
from schemas import columnar
from schemas.columnar import _ARROW

REPO = Path(__file__).resolve().parents[1]
TX_SCHEMA = json.loads((REPO / "examples/fraud/schemas/transaction.avsc").read_text())
SID = 7
T0 = 1_700_000_000_123

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=20),  # hypothesis text() has no surrogates, like Arrow strings
    "bytes": st.binary(max_size=20),
    "long": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 0])),
    "int": st.integers(-(2**31), 2**31 - 1),
    "double": st.floats(allow_nan=True, allow_infinity=True),
    "float": st.floats(width=32, allow_nan=True, allow_infinity=True),
    "boolean": st.booleans(),
}
# (kind, nullable, null first in the union)
FIELD = st.tuples(st.sampled_from(sorted(VALUES)), st.booleans(), st.booleans())


def record_schema(fields: list[tuple[str, bool, bool]]) -> dict:
    out = []
    for i, (kind, nullable, null_first) in enumerate(fields):
        t: Any = kind
        if kind == "long" and i % 2:
            t = {"type": "long", "logicalType": "timestamp-millis"}
        if nullable:
            t = ["null", t] if null_first else [t, "null"]
        out.append({"name": f"f{i}", "type": t})
    return {"type": "record", "name": "R", "namespace": "t", "fields": out}


@st.composite
def tables(draw: st.DrawFn) -> tuple[dict, list[dict], pa.Table]:
    fields = draw(st.lists(FIELD, min_size=1, max_size=6))
    n = draw(st.integers(0, 12))
    cols: dict[str, list] = {}
    for i, (kind, nullable, _) in enumerate(fields):
        value = VALUES[kind]
        value = st.none() | value if nullable else value
        cols[f"f{i}"] = draw(st.lists(value, min_size=n, max_size=n))
    table = pa.table({k: pa.array(v, type=_ARROW[fields[int(k[1:])][0]]) for k, v in cols.items()})
    if n > 2 and draw(st.booleans()):  # chunked and offset arrays take other code paths
        table = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    records = [{k: cols[k][r] for k in cols} for r in range(n)]
    return record_schema(fields), records, table


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (decoded doubles may be NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_encode_matches_fastavro_and_round_trips(case: tuple[dict, list[dict], pa.Table]) -> None:
    schema, records, table = case
    oracle, codec = AvroCodec(schema, SID), ColumnarCodec(schema, SID)
    messages = codec.encode_table(table)
    assert messages == [oracle.encode(r) for r in records]
    buf, offsets = codec.encode_buffer(table)
    assert buf.dtype == np.uint8 and offsets.dtype == np.int64 and len(offsets) == len(records) + 1
    decoded, ok, errors = codec.decode_batch(messages)
    assert ok.all() and errors == [None] * len(records)
    assert decoded.schema == codec.arrow_schema
    rows = decoded.to_pylist()
    assert same(rows, [oracle.decode(m) for m in messages])
    assert same(rows, records)
    with patch.object(columnar, "_BLOCK", 5):  # several blocks, nulls crossing boundaries
        assert codec.encode_table(table) == messages
        blocked, offsets = codec.encode_buffer(table)
        assert blocked.tobytes() == buf.tobytes() == b"".join(messages)
        assert same(codec.decode_batch(messages)[0].to_pylist(), rows)


def tx(i: int, **changes: Any) -> dict:
    rec = {"event_id": f"tx-{i}", "card_id": f"card-{i % 7}", "merchant_id": "m-7",
           "device_id": "", "amount": 10.5 * i, "currency": "EUR", "country": "DE",
           "event_time": T0 + i}
    return rec | changes


@pytest.fixture(scope="module")
def tx_codecs() -> tuple[AvroCodec, ColumnarCodec]:
    oracle = AvroCodec(TX_SCHEMA, SID)
    return oracle, ColumnarCodec.from_codec(oracle)


def test_from_codec_and_exports(tx_codecs: tuple[AvroCodec, ColumnarCodec]) -> None:
    _, codec = tx_codecs
    assert codec.schema_id == SID and [f.name for f in codec.arrow_schema][0] == "event_id"
    assert codec.arrow_schema.field("event_time").type == pa.int64()
    assert issubclass(ColumnarUnsupported, SchemaError)
    with pytest.raises(SchemaError, match="4-byte"):
        ColumnarCodec(TX_SCHEMA, 2**32)


GOOD = [tx(i) for i in range(4)]


def body(oracle: AvroCodec, rec: dict) -> bytes:
    return oracle.encode(rec)[5:]


def garbage(oracle: AvroCodec) -> dict[str, tuple[Any, str, str]]:
    """name -> (message, reason, message fragment)."""
    good = oracle.encode(GOOD[0])
    hdr = good[:5]
    utf8_bad = hdr + b"\x04\xff\xfe" + body(oracle, GOOD[0])[len(b"\x08tx-0"):]
    surrogate = hdr + b"\x06\xed\xa0\x80" + body(oracle, GOOD[0])[len(b"\x08tx-0"):]
    return {
        "empty": (b"", "empty", "no bytes"),
        "none": (None, "empty", "no bytes"),
        "bad_magic": (b"\x01" + good[1:], "bad_magic", "0x01"),
        "short_header": (b"\x00\x00\x00", "truncated", "3 bytes"),
        "other_id": (b"\x00\x00\x00\x00\x08" + good[5:], "unknown_schema_id",
                     f"schema id 8 != {SID}: decode with AvroCodec"),
        "header_only": (hdr, "truncated", "field event_id"),
        "cut_in_double": (good[:30], "truncated", "field"),
        "cut_last_byte": (good[:-1], "truncated", "field event_time"),
        "trailing": (good + b"\x00", "avro_error", "1 trailing bytes"),
        "bad_utf8": (utf8_bad, "avro_error", "not valid UTF-8"),
        "surrogate": (surrogate, "avro_error", "not valid UTF-8"),
        "negative_len": (hdr + b"\x01", "avro_error", "negative length -1"),
        "long_varint": (hdr + b"\xff" * 11, "avro_error", "varint longer than 10 bytes"),
        "huge_len": (hdr + b"\xfe\xff\xff\xff\x0f", "truncated", "field event_id"),
    }


@pytest.mark.parametrize("block", [3, columnar._BLOCK])
def test_decode_garbage_reasons_keep_other_rows(
    tx_codecs: tuple[AvroCodec, ColumnarCodec], block: int
) -> None:
    oracle, codec = tx_codecs
    bad = garbage(oracle)
    goods = [oracle.encode(r) for r in GOOD]
    batch: list[Any] = []
    for i, (message, _, _) in enumerate(bad.values()):
        batch += [goods[i % 4], message]
    with patch.object(columnar, "_BLOCK", block):
        table, ok, errors = codec.decode_batch(batch)
    assert table.num_rows == len(batch) and ok.tolist() == [True, False] * len(bad)
    rows = table.to_pylist()
    for i, (name, (message, reason, fragment)) in enumerate(bad.items()):
        assert rows[2 * i] == GOOD[i % 4] and errors[2 * i] is None
        assert rows[2 * i + 1] == dict.fromkeys(codec.arrow_schema.names), name
        err = errors[2 * i + 1]
        assert isinstance(err, DecodeError) and err.reason == reason, (name, err)
        assert fragment in str(err), (name, str(err))
        assert err.raw == (message or b"")
        if name not in ("negative_len", "long_varint", "none", "surrogate"):
            with pytest.raises(DecodeError) as exc:  # same reason as the per-record codec
                oracle.decode(message)
            assert exc.value.reason == reason, name


def test_decode_every_prefix_is_truncated(tx_codecs: tuple[AvroCodec, ColumnarCodec]) -> None:
    oracle, codec = tx_codecs
    good = oracle.encode(tx(3, device_id="é" * 40))  # a 2-byte length varint too
    _, ok, errors = codec.decode_batch([good[:k] for k in range(1, len(good))] + [good])
    assert not ok[:-1].any() and ok[-1]
    assert all(e is not None and e.reason == "truncated" for e in errors[:-1])


NULLABLE = {"type": "record", "name": "N", "fields": [
    {"name": "a", "type": ["null", "int"]}, {"name": "b", "type": ["string", "null"]},
    {"name": "c", "type": "boolean"}]}


def test_decode_union_and_int_errors() -> None:
    oracle, codec = AvroCodec(NULLABLE, 1), ColumnarCodec(NULLABLE, 1)
    hdr = b"\x00\x00\x00\x00\x01"
    batch = [hdr + b"\x04\x02\x00\x00\x02", hdr + b"\x02\x80\x80\x80\x80\x10\x02\x01",
             hdr + b"\x00\x02\x02", oracle.encode({"a": 5, "b": None, "c": False})]
    table, ok, errors = codec.decode_batch(batch)
    assert ok.tolist() == [False, False, True, True]
    assert errors[0].reason == "avro_error" and "union branch 2" in str(errors[0])
    assert errors[1].reason == "avro_error" and "out of range for an Avro int" in str(errors[1])
    assert table.to_pylist()[2:] == [
        {"a": None, "b": None, "c": True}, {"a": 5, "b": None, "c": False}]


# fastavro is laxer than the Avro spec on these; ColumnarCodec rejects them (avro_error).
LAX = ("varint longer than 10 bytes", "union branch", "out of range for an Avro int")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_decode_mutations_agree_with_avrocodec(data: st.DataObject) -> None:
    oracle = AvroCodec(NULLABLE | {"fields": NULLABLE["fields"] + TX_SCHEMA["fields"]}, 3)
    codec = ColumnarCodec(oracle.schema, 3)
    rec = tx(data.draw(st.integers(0, 99)), a=data.draw(st.none() | st.integers(-5, 5)),
             b=data.draw(st.none() | st.text(max_size=3)), c=True)
    msg = bytearray(oracle.encode(rec))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(5, max(5, len(msg) - 1)))
        if op == "flip" and at < len(msg):
            msg[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del msg[at:at + data.draw(st.integers(1, 4))]
        else:
            msg[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    table, ok, errors = codec.decode_batch([bytes(msg)])
    try:
        expected = oracle.decode(bytes(msg))
    except DecodeError:
        assert not ok[0] and errors[0] is not None
        return
    if not ok[0]:
        assert any(x in str(errors[0]) for x in LAX), errors[0]
    else:
        assert same(table.to_pylist()[0], expected)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=12))
def test_utf8_check_matches_python(raw: bytes) -> None:
    schema = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    codec = ColumnarCodec(schema, 1)
    message = b"\x00\x00\x00\x00\x01" + bytes([2 * len(raw)]) + raw
    table, ok, _ = codec.decode_batch([message, message])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert not ok.any()
    else:
        assert ok.all() and table.column("s").to_pylist() == [text, text]


@pytest.mark.parametrize("ftype", [
    {"type": "record", "name": "In", "fields": [{"name": "x", "type": "long"}]},
    {"type": "array", "items": "long"}, {"type": "map", "values": "long"},
    {"type": "enum", "name": "E", "symbols": ["A"]}, {"type": "fixed", "name": "F", "size": 2},
    ["null", "long", "string"], ["long", "string"], "null",
])
def test_unsupported_schemas_raise(ftype: Any) -> None:
    schema = {"type": "record", "name": "U", "fields": [{"name": "x", "type": ftype}]}
    AvroCodec(schema, 1)  # valid Avro, just not flat
    with pytest.raises(ColumnarUnsupported, match="AvroCodec"):
        ColumnarCodec(schema, 1)
    with pytest.raises(ColumnarUnsupported):
        ColumnarCodec({"type": "array", "items": "long"}, 1)  # type: ignore[arg-type]


def test_encode_errors_name_the_field(tx_codecs: tuple[AvroCodec, ColumnarCodec]) -> None:
    _, codec = tx_codecs
    good = pa.Table.from_pylist(GOOD)
    cases = {
        "amount": good.set_column(4, "amount", pa.array([1.0, None, 2.0, 3.0])),
        "event_time": good.set_column(7, "event_time", pa.array([1.5, 2.0, 3.0, 4.0])),
        "card_id": good.drop_columns(["card_id"]),
        "currency": good.set_column(5, "currency", pa.array([1, 2, 3, 4])),
    }
    for name, table in cases.items():
        with pytest.raises(EncodeError) as exc:
            codec.encode_table(table)
        assert exc.value.field == name and name in str(exc.value)
    ints = ColumnarCodec({"type": "record", "name": "I", "fields": [
        {"name": "i", "type": "int"}, {"name": "f", "type": "float"}]}, 1)
    with pytest.raises(EncodeError, match="field i"):
        ints.encode_table(pa.table({"i": [2**31], "f": [1.0]}))
    with pytest.raises(EncodeError, match="field f"):
        ints.encode_table(pa.table({"i": [1], "f": [1e300]}))


def test_encode_accepts_arrow_variants(tx_codecs: tuple[AvroCodec, ColumnarCodec]) -> None:
    oracle, codec = tx_codecs
    recs = [tx(i) for i in range(5)]
    table = pa.Table.from_pylist(recs)
    variants = table.set_column(1, "card_id", table.column("card_id").cast(pa.large_string()))
    variants = variants.set_column(5, "currency", variants.column("currency").dictionary_encode())
    variants = variants.set_column(7, "event_time", variants.column("event_time").cast(pa.uint64()))
    expected = [oracle.encode(r) for r in recs]
    assert codec.encode_table(variants) == expected
    assert codec.encode_table(variants.to_batches()[0]) == expected
    big = [tx(i, event_id="é" * 40_000 * i, device_id="x" * 200) for i in range(3)]
    big_messages = codec.encode_table(pa.Table.from_pylist(big))  # 1-, 2- and 3-byte lengths
    assert big_messages == [oracle.encode(r) for r in big]
    assert codec.decode_batch(big_messages)[0].to_pylist() == big
    assert codec.encode_table(table.slice(0, 0)) == []
    assert codec.decode_batch([])[0].num_rows == 0


def test_throughput_200k_transactions(
    tx_codecs: tuple[AvroCodec, ColumnarCodec], capsys: pytest.CaptureFixture[str]
) -> None:
    """Rough rates for the producer/consumer hot paths; printed, not asserted (shared CI)."""
    _, codec = tx_codecs
    n = 200_000
    rng = np.random.default_rng(0)
    table = pa.table({
        "event_id": [str(uuid.UUID(int=int(x))) for x in rng.integers(0, 2**63, n)],
        "card_id": pa.array(np.char.add("card-", rng.integers(0, 10**6, n).astype(str))),
        "merchant_id": pa.array(np.char.add("m-", rng.integers(0, 10**4, n).astype(str))),
        "device_id": pa.array(np.char.add("dev-", rng.integers(0, 10**5, n).astype(str))),
        "amount": rng.gamma(2.0, 50.0, n).round(2),
        "currency": pa.array(rng.choice(["EUR", "USD", "GBP"], n)),
        "country": pa.array(rng.choice(["DE", "FR", "US", "GB"], n)),
        "event_time": T0 + np.arange(n, dtype=np.int64) * 7,
    })
    t0 = time.perf_counter()
    messages = codec.encode_table(table)
    t1 = time.perf_counter()
    decoded, ok, _ = codec.decode_batch(messages)
    t2 = time.perf_counter()
    assert ok.all() and decoded.column("amount").equals(table.column("amount"))
    assert struct.unpack(">I", messages[0][1:5])[0] == SID
    with capsys.disabled():
        print(f"\nColumnarCodec, {n:,} transactions: encode_table {n / (t1 - t0):,.0f} rec/s, "
              f"decode_batch {n / (t2 - t1):,.0f} rec/s")


@pytest.mark.parametrize("block", [3, columnar._BLOCK])
def test_decode_resolves_other_schema_versions_in_place(tmp_path: Path, block: int) -> None:
    """With ``resolve``, rows under another registered version of the schema are decoded by AvroCodec
    (fastavro's resolution) at their own positions; unknown ids and garbage keep their errors."""
    from schemas import FileSchemaStore
    store = FileSchemaStore(tmp_path / "schema_registry.json")
    reader = AvroCodec.for_subject(store, "tx-value", TX_SCHEMA)
    older_schema = {**TX_SCHEMA, "fields": [f for f in TX_SCHEMA["fields"] if f["name"] != "currency"]}
    reader = AvroCodec({**TX_SCHEMA, "fields": [{**f, "default": "EUR"} if f["name"] == "currency" else f
                                                for f in TX_SCHEMA["fields"]]}, reader.schema_id, store)
    older = AvroCodec.for_subject(store, "tx-value", older_schema)
    codec = ColumnarCodec.from_codec(reader)
    old_rows = [{k: v for k, v in r.items() if k != "currency"} for r in GOOD]
    batch = [reader.encode(GOOD[0]), older.encode(old_rows[1]), b"\x00\x00\x00\x03\xe7" + older.encode(old_rows[2])[5:],
             older.encode(old_rows[3])[:-3], reader.encode(GOOD[2]), older.encode(old_rows[0])]
    with patch.object(columnar, "_BLOCK", block):
        plain = codec.decode_batch(batch)
        table, ok, errors = codec.decode_batch(batch, resolve=reader)
    assert plain[1].tolist() == [True, False, False, False, True, False]
    assert ok.tolist() == [True, True, False, False, True, True]
    rows = table.to_pylist()
    assert rows[0] == GOOD[0] and rows[4] == GOOD[2]
    assert rows[1] == {**GOOD[1], "currency": "EUR"} and rows[5] == {**GOOD[0], "currency": "EUR"}
    assert [e.reason if e else None for e in errors] == [None, None, "unknown_schema_id", "truncated", None, None]
    assert table.schema == plain[0].schema
