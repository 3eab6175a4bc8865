"""Unit tests for the ``schemas`` package: schema files, wire codec, stores, compatibility.

Pure: no Kafka, no Schema Registry server. The registry adapter is tested against a fake client.
"""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
import sys
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
import schemas.store as store_mod
from headwater.errors import HeadwaterError
from schemas import (
    DECODE_REASONS,
    AvroCodec,
    DecodeError,
    EncodeError,
    FileSchemaStore,
    RegistrySchemaStore,
    SchemaError,
    SchemaStoreError,
    UnknownSchemaIdError,
    check_backward,
    check_store,
    load_schema,
    open_store,
)

REPO = Path(__file__).resolve().parents[1]
FRAUD = REPO / "examples" / "fraud" / "schemas"
T0 = 1_700_000_000_123

TRANSACTION = {
    "event_id": "tx-0001", "card_id": "card-42", "merchant_id": "m-7", "device_id": "dev-9",
    "amount": 129.99, "currency": "EUR", "country": "DE", "event_time": T0,
}
RECORDS = {
    "tile_key": {"view": "card_velocity", "entity": "card-42", "resolution_ms": 60_000,
                 "tile_start": 1_699_999_980_000},
    "prediction": {
        "event_id": "tx-0001", "entity": "card-42", "score": 0.0731, "decision": False,
        "model_name": "fraud_gbm", "model_version": "12", "features_as_of_ms": T0 - 1_000,
        "no_features": False, "latency": {"decode": 0.21, "fetch": 1.7, "score": 0.9},
        "produced_ms": T0 + 4,
    },
    "shadow": {
        "event_id": "tx-0001", "entity": "card-42", "model_name": "fraud_mlp",
        "model_version": "3", "score": 0.0912, "production_model": "fraud_gbm",
        "production_version": "12", "production_score": 0.0731, "latency_ms": 0.42,
    },
    "feature_log": {
        "event_id": None, "entity_key": "card_id", "entity": "card-42", "t_ms": T0,
        "as_of_ms": T0 - 1_000, "values": {"txn_count_1h": 3, "amount_mean_1h": 50.4,
                                           "last_country": "DE", "amount_max_10m": None},
        "features": ["txn_count_1h", "amount_mean_1h", "last_country", "amount_max_10m"],
        "plan_hash": "9f2c1ab0d3",
    },
    "dlq": {
        "topic": "transactions", "partition": 3, "offset": 98_765, "key": b"card-42",
        "value": b"\x01garbage", "reason": "bad_magic", "error": "first byte is 0x01",
        "failed_ms": T0, "stage": "decode",
    },
    "transaction": TRANSACTION,
    "label": {"event_id": "tx-0001", "is_fraud": True, "label_time": T0 + 86_400_000 * 9},
}


def schema_for(name: str) -> dict:
    if name in ("transaction", "label"):
        return load_schema(FRAUD / f"{name}.avsc")
    return load_schema(name)


def header(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big")


@pytest.fixture
def store(tmp_path: Path) -> FileSchemaStore:
    return FileSchemaStore(tmp_path / "schema_registry.json")


# --------------------------------------------------------------------------- schema files


def test_every_schema_file_has_docs_and_the_right_namespace() -> None:
    assert sorted(schemas.builtin_schema_names()) == [
        "dlq", "feature_log", "prediction", "shadow", "tile_key"
    ]
    for name in RECORDS:
        schema = schema_for(name)
        ns = "headwater.examples.fraud" if name in ("transaction", "label") else "headwater"
        assert schema["namespace"] == ns and schema["doc"], name
    assert schema_for("tile_key")["name"] == "TileKey"
    assert schema_for("transaction")["name"] == "Transaction"
    assert schema_for("label")["name"] == "Label"


def test_load_schema_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no built-in schema named 'nope'.*tile_key"):
        load_schema("nope")
    with pytest.raises(SchemaError, match="missing.avsc"):
        load_schema(tmp_path / "missing.avsc")
    bad = tmp_path / "bad.avsc"
    bad.write_text('{"type": "record",')
    with pytest.raises(SchemaError, match=r"bad\.avsc: cannot read schema"):
        load_schema(bad)
    invalid = tmp_path / "invalid.avsc"
    invalid.write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(SchemaError, match=r"invalid\.avsc: not a valid Avro schema"):
        load_schema(str(invalid))
    assert issubclass(SchemaError, HeadwaterError)


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_every_schema(name: str) -> None:
    codec = AvroCodec(schema_for(name), 42)
    record = RECORDS[name]
    data = codec.encode(record)
    assert data[:5] == header(42)
    decoded = codec.decode(data)
    assert decoded == record
    # int and float IR values keep their type through the long/double union branches
    assert [type(v) for v in decoded.values()] == [type(v) for v in record.values()]


def test_framing_bytes_literally() -> None:
    codec = AvroCodec(schema_for("label"), 258)
    data = codec.encode({"event_id": "e1", "is_fraud": True, "label_time": 1})
    # magic, id 258 big-endian, then "e1" (zigzag len 2 = 0x04), true, zigzag(1) = 0x02
    assert data == b"\x00\x00\x00\x01\x02" + b"\x04e1" + b"\x01" + b"\x02"


def test_timestamp_millis_stays_an_int() -> None:
    codec = AvroCodec(schema_for("transaction"), 1)
    assert codec.decode(codec.encode(TRANSACTION))["event_time"] == T0


def test_encode_many_and_decode_many_round_trip() -> None:
    codec = AvroCodec(schema_for("transaction"), 5)
    records = [{**TRANSACTION, "event_id": f"tx-{i}", "amount": i * 1.5} for i in range(20)]
    values, errors = codec.decode_many(codec.encode_many(records))
    assert values == records and errors == [None] * 20


GOOD = AvroCodec(schema_for("label"), 9).encode(RECORDS["label"])
GARBAGE = [
    ("empty", b"", "empty"),
    ("none", None, "empty"),
    ("bad_magic", b"\x01" + GOOD[1:], "bad_magic"),
    ("plain_json", b'{"event_id": "x"}', "bad_magic"),
    ("truncated_header", GOOD[:3], "truncated"),
    ("header_only", GOOD[:5], "truncated"),
    ("truncated_body", GOOD[:-1], "truncated"),
    ("truncated_string", GOOD[:8], "truncated"),
    ("trailing_garbage", GOOD + b"\x00\xff", "avro_error"),
    ("unknown_id", header(999) + GOOD[5:], "unknown_schema_id"),
    ("bad_utf8", header(9) + b"\x04\xff\xfe\x01\x02", "avro_error"),
]


@pytest.mark.parametrize(("case", "data", "reason"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_raises_one_typed_error_keeping_raw(case: str, data: bytes, reason: str) -> None:
    codec = AvroCodec(schema_for("label"), 9)
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.reason == reason and reason in DECODE_REASONS
    assert info.value.raw == (data or b"")
    assert isinstance(info.value, HeadwaterError) and str(info.value).startswith(reason)


def test_unknown_id_with_a_store_that_does_not_know_it(store: FileSchemaStore) -> None:
    codec = AvroCodec.for_subject(store, "labels-value", FRAUD / "label.avsc")
    bad = header(codec.schema_id + 1) + GOOD[5:]
    with pytest.raises(DecodeError) as info:
        codec.decode(bad)
    assert info.value.reason == "unknown_schema_id" and info.value.raw == bad
    assert isinstance(info.value.__cause__, UnknownSchemaIdError)


def test_decode_error_pickles_for_worker_processes() -> None:
    err = DecodeError("truncated", "cut short", b"\x00\x01")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.raw, str(back)) == ("truncated", b"\x00\x01", str(err))


def test_decode_many_returns_mixed_results_without_raising() -> None:
    codec = AvroCodec(schema_for("label"), 9)
    datas = [GOOD, b"", GOOD[:-1], GOOD, b"\x07xx"]
    values, errors = codec.decode_many(datas)
    assert values == [RECORDS["label"], None, None, RECORDS["label"], None]
    assert [e and e.reason for e in errors] == [None, "empty", "truncated", None, "bad_magic"]
    assert errors[4].raw == b"\x07xx"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "12.00"}, "Transaction.amount"),
        ({"event_time": 1.5}, "Transaction.event_time"),  # the writer alone would truncate
        ({"event_time": True}, "Transaction.event_time"),
        ({"card_id": None}, "Transaction.card_id"),
    ],
)
def test_encode_error_names_the_field(change: dict, field: str) -> None:
    codec = AvroCodec(schema_for("transaction"), 1)
    with pytest.raises(EncodeError) as info:
        codec.encode({**TRANSACTION, **change})
    assert info.value.field == field and field in str(info.value)


def test_encode_error_for_missing_field_without_validation() -> None:
    codec = AvroCodec(schema_for("transaction"), 1, validate=False)
    record = {k: v for k, v in TRANSACTION.items() if k != "currency"}
    with pytest.raises(EncodeError, match="currency"):
        codec.encode(record)


def test_schema_id_must_fit_the_header() -> None:
    with pytest.raises(SchemaError):
        AvroCodec(schema_for("label"), 2**32)


# --------------------------------------------------------------------------- evolution

V1 = load_schema(FRAUD / "transaction.avsc")
V2 = copy.deepcopy(V1)
V2["fields"].append({"name": "mcc", "type": "string", "default": "0000", "doc": "merchant code"})
V2["fields"][4] = {"name": "amount", "type": "double"}


def test_v1_data_decodes_with_a_v2_reader(store: FileSchemaStore) -> None:
    writer = AvroCodec.for_subject(store, "transactions-value", V1)
    reader = AvroCodec.for_subject(store, "transactions-value", V2)
    assert (writer.schema_id, reader.schema_id) == (1, 2)
    assert reader.decode(writer.encode(TRANSACTION)) == {**TRANSACTION, "mcc": "0000"}
    # and the other way: a v1 reader skips the field it does not know
    assert writer.decode(reader.encode({**TRANSACTION, "mcc": "5411"})) == TRANSACTION


def test_incompatible_writer_data_is_an_avro_error(store: FileSchemaStore) -> None:
    v1 = AvroCodec.for_subject(store, "t", V1)
    broken = copy.deepcopy(V1)
    broken["fields"][4] = {"name": "amount", "type": "string"}
    reader = AvroCodec(broken, 77, store)
    with pytest.raises(DecodeError) as info:
        reader.decode(v1.encode(TRANSACTION))
    assert info.value.reason == "avro_error"


def test_same_schema_under_another_id_decodes_without_resolution(store: FileSchemaStore) -> None:
    sid = store.register("labels-value", schema_for("label"))
    codec = AvroCodec(schema_for("label"), 500, store)
    data = header(sid) + GOOD[5:]
    assert codec.decode(data) == RECORDS["label"]


# --------------------------------------------------------------------------- FileSchemaStore


def test_file_store_ids_are_stable_idempotent_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "schema_registry.json"
    s1 = FileSchemaStore(path)
    tile, label = load_schema("tile_key"), schema_for("label")
    assert s1.register("tiles-value", tile) == 1
    assert s1.register("tiles-value", tile) == 1
    assert s1.register("labels-value", label) == 2
    # identical canonical schema (key order differs) in another subject: same id
    reordered = json.loads(json.dumps(tile, sort_keys=True))
    assert s1.register("tiles-copy-value", reordered) == 1
    # reopened: same ids, nothing rewritten
    before = path.read_bytes()
    s2 = FileSchemaStore(path)
    assert s2.register("tiles-value", tile) == 1 and s2.get_by_id(2) == label
    assert path.read_bytes() == before
    assert s2.latest("tiles-value") == (1, tile) and s2.latest("nope") is None
    assert s2.versions("tiles-copy-value") == [(1, tile)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_file_store_versions_and_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "schema_registry.json"
    a, b = FileSchemaStore(path), FileSchemaStore(path)
    assert a.register("t", V1) == 1
    assert b.register("t", V2) == 2  # b reloads before writing: no id collision
    assert a.get_by_id(2) == V2  # a reloads on an unknown id
    assert a.versions("t") == [(1, V1), (2, V2)] and a.latest("t") == (2, V2)
    assert a.register("t", V1) == 1 and a.latest("t") == (2, V2)  # old version: no new entry
    doc_only = copy.deepcopy(V2)
    doc_only["doc"] = "changed"
    assert a.register("t", doc_only) == 3  # not parsing canonical form: docs/defaults count
    with pytest.raises(UnknownSchemaIdError) as info:
        a.get_by_id(99)
    assert info.value.schema_id == 99 and isinstance(info.value, SchemaStoreError)


def test_file_store_returns_copies(store: FileSchemaStore) -> None:
    store.register("t", V1)
    store.get_by_id(1)["name"] = "Mutated"
    assert store.get_by_id(1)["name"] == "Transaction"


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": 1, "schemas": [], "subjects": {}}',
     '{"format": 1, "schemas": {"x": {}}, "subjects": {}}',
     '{"format": 1, "schemas": {}, "subjects": {"t": [3]}}'],
)
def test_corrupt_file_names_the_file_and_the_fix(tmp_path: Path, content: str) -> None:
    path = tmp_path / "schema_registry.json"
    path.write_text(content)
    with pytest.raises(SchemaStoreError) as info:
        FileSchemaStore(path).register("t", V1)
    assert str(path) in str(info.value) and "restore it from git" in str(info.value)
    assert "delete it" in str(info.value)


def test_register_rejects_invalid_schema(store: FileSchemaStore) -> None:
    with pytest.raises(SchemaError, match="'t'"):
        store.register("t", {"type": "record", "name": "X", "fields": [{"name": "a"}]})


def test_open_store_picks_file_or_registry(tmp_path: Path) -> None:
    local = open_store(tmp_path, None)
    assert isinstance(local, FileSchemaStore) and local.path == tmp_path / "schema_registry.json"
    custom = open_store(tmp_path / "conf" / "ids.json")
    assert isinstance(custom, FileSchemaStore) and custom.path == tmp_path / "conf" / "ids.json"
    remote = open_store(tmp_path, "http://registry:8081")
    assert isinstance(remote, RegistrySchemaStore) and remote.url == "http://registry:8081"
    assert isinstance(local, schemas.SchemaStore) and isinstance(remote, schemas.SchemaStore)


# --------------------------------------------------------------------------- RegistrySchemaStore


class _RegistryError(Exception):
    def __init__(self, status: int, code: int) -> None:
        super().__init__(f"HTTP {status} code {code}")
        self.http_status_code, self.error_code = status, code


class _FakeSchema:
    def __init__(self, schema_str: str, schema_type: str) -> None:
        self.schema_str, self.schema_type = schema_str, schema_type


class _FakeClient:
    """Just enough of SchemaRegistryClient: ids global, versions per subject."""

    def __init__(self, conf: dict) -> None:
        self.conf, self.by_id, self.subjects, self.calls = conf, {}, {}, 0

    def register_schema(self, subject: str, schema: _FakeSchema) -> int:
        ids = [i for i, s in self.by_id.items() if s == schema.schema_str]
        sid = ids[0] if ids else len(self.by_id) + 1
        self.by_id[sid] = schema.schema_str
        if sid not in self.subjects.setdefault(subject, []):
            self.subjects[subject].append(sid)
        return sid

    def get_schema(self, schema_id: int) -> _FakeSchema:
        self.calls += 1
        if schema_id == 500:
            raise ConnectionError("connection refused")
        if schema_id not in self.by_id:
            raise _RegistryError(404, 40403)
        return _FakeSchema(self.by_id[schema_id], "AVRO")

    def _reg(self, subject: str, index: int):
        sid = self.subjects[subject][index]
        return type("Reg", (), {"schema_id": sid, "schema": _FakeSchema(self.by_id[sid], "AVRO")})

    def get_latest_version(self, subject: str):
        if subject not in self.subjects:
            raise _RegistryError(404, 40401)
        return self._reg(subject, -1)

    def get_versions(self, subject: str) -> list[int]:
        if subject not in self.subjects:
            raise _RegistryError(404, 40401)
        return list(range(1, len(self.subjects[subject]) + 1))

    def get_version(self, subject: str, version: int):
        return self._reg(subject, version - 1)


def test_registry_store_is_lazy_and_names_the_missing_extra(monkeypatch) -> None:
    # None in sys.modules makes the import fail, as it does without httpx/authlib installed
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry", None)
    reg = RegistrySchemaStore("http://registry:8081")  # no import, no network
    with pytest.raises(SchemaStoreError, match=r"confluent-kafka\[schemaregistry\]"):
        reg.latest("t")


def test_registry_store_maps_calls_and_errors(monkeypatch) -> None:
    made: list[_FakeClient] = []

    def fake_import():
        def factory(conf):
            made.append(_FakeClient(conf))
            return made[-1]
        return factory, _FakeSchema

    monkeypatch.setattr(store_mod, "_import_client", fake_import)
    reg = RegistrySchemaStore("http://registry:8081", {"basic.auth.user.info": "u:p"})
    assert made == []
    assert reg.latest("t") is None and reg.versions("t") == []
    assert made[0].conf == {"basic.auth.user.info": "u:p", "url": "http://registry:8081"}
    assert reg.register("t", V1) == 1 and reg.register("t", V1) == 1
    assert reg.register("t", V2) == 2
    assert reg.get_by_id(1) == V1 and reg.get_by_id(1) == V1
    assert made[0].calls == 1  # ids are immutable: cached
    assert reg.latest("t") == (2, V2) and reg.versions("t") == [(1, V1), (2, V2)]
    with pytest.raises(UnknownSchemaIdError):
        reg.get_by_id(7)
    with pytest.raises(SchemaStoreError, match="registry:8081.*connection refused") as info:
        reg.get_by_id(500)
    assert not isinstance(info.value, UnknownSchemaIdError)
    # a codec dead-letters an unknown id but lets an outage propagate
    codec = AvroCodec(V2, 2, reg)
    assert codec.decode(header(1) + AvroCodec(V1, 1).encode(TRANSACTION)[5:])["mcc"] == "0000"
    with pytest.raises(DecodeError, match="unknown_schema_id"):
        codec.decode(header(7) + b"\x00")
    with pytest.raises(SchemaStoreError):
        codec.decode(header(500) + b"\x00")


# --------------------------------------------------------------------------- compatibility


def rec(*fields: dict, name: str = "R", **extra) -> dict:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def f(name: str, type_, **extra) -> dict:
    return {"name": name, "type": type_, **extra}


ENUM_XY = {"type": "enum", "name": "E", "symbols": ["X", "Y"]}
ENUM_X = {"type": "enum", "name": "E", "symbols": ["X"]}
ENUM_X_DEFAULT = {**ENUM_X, "default": "X"}
INNER = rec(f("a", "int"), name="Inner")
INNER_PLUS = rec(f("a", "int"), f("b", "string"), name="Inner")

# (case, old schema, new schema, sample written with old, problem substring or None)
COMPAT = [
    ("identical", rec(f("a", "int")), rec(f("a", "int")), {"a": 1}, None),
    ("add_with_default", rec(f("a", "int")), rec(f("a", "int"), f("b", "string", default="")),
     {"a": 1}, None),
    ("add_without_default", rec(f("a", "int")), rec(f("a", "int"), f("b", "string")),
     {"a": 1}, "R.b: field added without a default"),
    ("remove_field", rec(f("a", "int"), f("b", "string")), rec(f("a", "int")),
     {"a": 1, "b": "x"}, None),
    ("int_to_long", rec(f("a", "int")), rec(f("a", "long")), {"a": 1}, None),
    ("int_to_double", rec(f("a", "int")), rec(f("a", "double")), {"a": 1}, None),
    ("long_to_float", rec(f("a", "long")), rec(f("a", "float")), {"a": 1}, None),
    ("string_to_bytes", rec(f("a", "string")), rec(f("a", "bytes")), {"a": "x"}, None),
    ("bytes_to_string", rec(f("a", "bytes")), rec(f("a", "string")), {"a": b"x"}, None),
    ("long_to_int", rec(f("a", "long")), rec(f("a", "int")), {"a": 1},
     "R.a: type changed from long to int"),
    ("double_to_float", rec(f("a", "double")), rec(f("a", "float")), {"a": 1.0},
     "R.a: type changed from double to float"),
    ("string_to_long", rec(f("a", "string")), rec(f("a", "long")), {"a": "x"},
     "R.a: type changed from string to long"),
    ("make_optional", rec(f("a", "int")), rec(f("a", ["null", "int"])), {"a": 1}, None),
    ("into_union_by_promotion", rec(f("a", "int")), rec(f("a", ["null", "long"])), {"a": 1},
     None),
    ("into_union_no_match", rec(f("a", "int")), rec(f("a", ["null", "string"])), {"a": 1},
     "R.a: old values of type int have no matching branch"),
    ("make_required", rec(f("a", ["null", "int"])), rec(f("a", "int")), {"a": None},
     "R.a: type changed from null to int"),
    ("widen_union", rec(f("a", ["null", "int"])), rec(f("a", ["null", "int", "string"])),
     {"a": 1}, None),
    ("narrow_union", rec(f("a", ["null", "int", "string"])), rec(f("a", ["null", "int"])),
     {"a": "x"}, "R.a: old values of type string"),
    ("enum_add_symbol", rec(f("e", ENUM_X)), rec(f("e", ENUM_XY)), {"e": "X"}, None),
    ("enum_remove_symbol", rec(f("e", ENUM_XY)), rec(f("e", ENUM_X)), {"e": "Y"},
     "R.e: enum symbols ['Y'] were removed"),
    ("enum_remove_with_default", rec(f("e", ENUM_XY)), rec(f("e", ENUM_X_DEFAULT)), {"e": "Y"},
     None),
    ("nested_add_without_default", rec(f("i", INNER)), rec(f("i", INNER_PLUS)), {"i": {"a": 1}},
     "R.i.b: field added without a default"),
    ("array_items_promote", rec(f("a", {"type": "array", "items": "int"})),
     rec(f("a", {"type": "array", "items": "long"})), {"a": [1]}, None),
    ("array_items_break", rec(f("a", {"type": "array", "items": "long"})),
     rec(f("a", {"type": "array", "items": "string"})), {"a": [1]}, "R.a[]: type changed"),
    ("map_values_break", rec(f("m", {"type": "map", "values": "string"})),
     rec(f("m", {"type": "map", "values": "int"})), {"m": {"k": "v"}}, "R.m{}: type changed"),
    ("rename_record", rec(f("a", "int")), rec(f("a", "int"), name="S"), {"a": 1},
     "record name changed from R to S; add \"aliases\": [\"R\"]"),
    ("rename_record_alias", rec(f("a", "int")), rec(f("a", "int"), name="S", aliases=["R"]),
     {"a": 1}, None),
    ("rename_field_alias", rec(f("a", "int")), rec(f("b", "int", aliases=["a"])), {"a": 1}, None),
    ("rename_field_no_alias", rec(f("a", "int")), rec(f("b", "int")), {"a": 1},
     "R.b: field added without a default"),
    ("namespace_change", rec(f("a", "int")), {**rec(f("a", "int")), "namespace": "u"}, {"a": 1},
     None),
    ("fixed_resize", rec(f("x", {"type": "fixed", "name": "F", "size": 2})),
     rec(f("x", {"type": "fixed", "name": "F", "size": 4})), {"x": b"ab"},
     "R.x: fixed size changed from 2 to 4"),
    ("named_reference", rec(f("i", INNER), f("j", "Inner")),
     rec(f("i", INNER_PLUS), f("j", "Inner")), {"i": {"a": 1}, "j": {"a": 2}},
     "R.i.b: field added without a default"),  # reported once per type pair
]


@pytest.mark.parametrize(("case", "old", "new", "sample", "problem"), COMPAT,
                         ids=[c[0] for c in COMPAT])
def test_check_backward_table(case, old, new, sample, problem) -> None:
    problems = check_backward(new, old)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
    # The static check must agree with what fastavro does with the sample at runtime.
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), sample)
    buf.seek(0)
    try:
        fastavro.schemaless_reader(buf, fastavro.parse_schema(old), fastavro.parse_schema(new))
        runtime_ok = True
    except Exception:
        runtime_ok = False
    assert runtime_ok == (problem is None)


def test_check_backward_on_recursive_schema() -> None:
    node = rec(f("v", "int"), f("next", ["null", "R"], default=None))
    grown = rec(f("v", "long"), f("next", ["null", "R"], default=None), f("w", "int"))
    assert check_backward(node, node) == []
    assert check_backward(grown, node) == ["R.w: field added without a default; data written "
                                           "with the old schema has no value for it (add a "
                                           "default, or an alias if it was renamed)"]


def test_check_backward_rejects_invalid_schema() -> None:
    with pytest.raises(SchemaError, match="new schema"):
        check_backward({"type": "nope"}, rec(f("a", "int")))


def test_check_store_compares_with_latest(store: FileSchemaStore) -> None:
    store.register("transactions-value", V1)
    bad = copy.deepcopy(V1)
    bad["fields"].append({"name": "mcc", "type": "string"})
    result = check_store(store, {"transactions-value": bad, "new-value": V1})
    assert result["new-value"] == []
    [problem] = result["transactions-value"]
    assert "Transaction.mcc" in problem and "id 1" in problem
    assert check_store(store, {"transactions-value": V2}) == {"transactions-value": []}


# --------------------------------------------------------------------------- property

_text = st.text(max_size=40)
_transactions = st.fixed_dictionaries({
    "event_id": _text, "card_id": _text, "merchant_id": _text, "device_id": _text,
    "amount": st.floats(allow_nan=False), "currency": _text, "country": _text,
    "event_time": st.integers(min_value=-(2**63), max_value=2**63 - 1),
})
_TX_CODEC = AvroCodec(V1, 3)


@settings(max_examples=200, deadline=None)
@given(_transactions)
def test_random_transactions_round_trip(tx: dict) -> None:
    data = _TX_CODEC.encode(tx)
    assert data[:5] == header(3)
    back = _TX_CODEC.decode(data)
    assert back == tx and math.copysign(1, back["amount"]) == math.copysign(1, tx["amount"])
    with pytest.raises(DecodeError):  # any strict prefix is detected, never half-decoded
        _TX_CODEC.decode(data[: len(data) - 1])
