"""Scoring consumer pure logic: output encoders byte-identical to fastavro, decode/validate reasons,
canary routing, per-row model errors and fallbacks (fetch faked), adaptive batching, bulk histogram
observation. No Kafka, no Redis."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from schemas import AvroCodec, load_schema
from scoring.consumer import AdaptiveBatch, ConsumerSettings, pipelined
from scoring import decode as decode_mod
from scoring.decode import BatchDecoder
from scoring.errors import DLQ_REASONS, ScoreConfigError
from scoring import outputs
from scoring.metrics import observe_many
from scoring.outputs import SplitEncoder
from online_store.reader import FetchResult
from scoring.features import MatrixSpec
from scoring.scorer import Models, Scorer, canary_mask

EVENT = {"type": "record", "name": "Ev", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "double"}, {"name": "event_time", "type": "long"}]}


def _event_schema(event_id: object = "string", card_id: object = "string") -> dict:
    """EVENT with other types for its id fields (a nullable event id, an integer entity key)."""
    types_ = {"event_id": event_id, "card_id": card_id}
    return {**EVENT, "fields": [{**f, "type": types_.get(f["name"], f["type"])} for f in EVENT["fields"]]}

text = st.text(max_size=12)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(text, text, st.floats(allow_nan=False), st.one_of(st.none(), st.booleans()),
                               text, st.integers(0, 2**62), st.booleans()), min_size=1, max_size=40),
       latency=st.dictionaries(st.sampled_from(["decode", "fetch", "score"]), st.floats(0, 1e4)),
       produced=st.integers(0, 2**62), rowwise=st.sampled_from([0, outputs.ROWWISE_MAX]),
       arrow=st.booleans())
def test_prediction_encoder_is_byte_identical_to_fastavro(rows, latency, produced, rowwise, arrow) -> None:
    """Both paths (columnar; row by row up to ``ROWWISE_MAX``), from lists or Arrow/NumPy columns."""
    codec = AvroCodec(load_schema("prediction"), 7)
    enc = SplitEncoder(codec, ("latency", "produced_ms"))
    cols = {"event_id": [r[0] for r in rows], "entity": [r[1] for r in rows], "score": [r[2] for r in rows],
            "decision": [r[3] for r in rows], "model_name": [r[4] for r in rows],
            "model_version": ["3"] * len(rows), "features_as_of_ms": [r[5] for r in rows],
            "no_features": [r[6] for r in rows]}
    given_cols: dict = cols
    if arrow:  # what the scorer passes: Arrow strings and nullable bools, NumPy numbers
        given_cols = {**{k: pa.array(cols[k], pa.string()) for k in ("event_id", "entity", "model_name", "model_version")},
                      "decision": pa.array(cols["decision"], pa.bool_()), "score": np.array(cols["score"]),
                      "features_as_of_ms": np.array(cols["features_as_of_ms"], np.int64),
                      "no_features": np.array(cols["no_features"], bool)}
    with patch.object(outputs, "ROWWISE_MAX", rowwise):
        got = enc.encode(given_cols, {"latency": latency, "produced_ms": produced})
    want = [codec.encode({**{k: v[i] for k, v in cols.items()}, "latency": latency, "produced_ms": produced})
            for i in range(len(rows))]
    assert got == want
    assert [codec.decode(m)["score"] for m in got] == cols["score"]


@pytest.mark.parametrize("rowwise", [0, outputs.ROWWISE_MAX])
def test_shadow_encoder_is_byte_identical_to_fastavro(rowwise: int) -> None:
    codec = AvroCodec(load_schema("shadow"), 9)
    cols = {"event_id": ["e1", "e2"], "entity": ["c1", "c2"], "model_name": ["s"] * 2, "model_version": ["1"] * 2,
            "score": np.array([0.1, 0.2]), "production_model": ["p"] * 2, "production_version": ["4"] * 2,
            "production_score": np.array([0.3, 0.4]), "latency_ms": np.array([1.5, 1.5])}
    with patch.object(outputs, "ROWWISE_MAX", rowwise):
        got = SplitEncoder(codec).encode(cols)
    assert got == [codec.encode({k: (v[i].item() if isinstance(v, np.ndarray) else v[i]) for k, v in cols.items()})
                   for i in range(2)]


def test_split_encoder_needs_constant_fields_last() -> None:
    with pytest.raises(ScoreConfigError, match="last"):
        SplitEncoder(AvroCodec(load_schema("prediction"), 1), ("latency",))


def _decoder() -> tuple[BatchDecoder, AvroCodec]:
    codec = AvroCodec(_event_schema(event_id=["null", "string"]), 11)
    return BatchDecoder(codec, ["card_id"], "event_time"), codec


def test_decode_and_validate_reasons() -> None:
    dec, codec = _decoder()
    good = codec.encode({"event_id": "e0", "card_id": "c0", "amount": 1.0, "event_time": 5})
    msgs = [good, b"", b"\x01abcdef", good[:3], b"\x00\x00\x00\x00\x63" + good[5:], good + b"\x00",
            codec.encode({"event_id": "e1", "card_id": "", "amount": 1.0, "event_time": 5}),
            codec.encode({"event_id": "e2", "card_id": "c2", "amount": 1.0, "event_time": -1}), None, good,
            codec.encode({"event_id": None, "card_id": "c3", "amount": 1.0, "event_time": 5})]
    d = dec.decode(msgs)
    assert d.index.tolist() == [0, 9] and d.table.column("event_id").to_pylist() == ["e0", "e0"]
    reasons = {r.index: r.reason for r in d.rejected}
    assert reasons == {1: "empty", 2: "bad_magic", 3: "truncated", 4: "unknown_schema_id", 5: "avro_error",
                       6: "missing_entity_key", 7: "bad_event_time", 8: "empty", 10: "missing_event_id"}
    assert set(reasons.values()) | {"model_error"} == set(DLQ_REASONS)
    assert all(r.stage == ("validate" if r.index in (6, 7, 10) else "decode") for r in d.rejected)


def test_a_null_event_id_is_a_dead_letter_on_both_decode_paths() -> None:
    """One reason a row: a null entity key wins over a null event id."""
    dec, codec = _decoder()
    msgs = [codec.encode({"event_id": e, "card_id": c, "amount": 1.0, "event_time": 5})
            for e, c in (("e0", "c0"), (None, "c1"), (None, ""), ("e3", "c3"))]
    for batch in (msgs, msgs * 5):  # row by row (4 messages), columnar (20)
        d = dec.decode(batch)
        got = sorted((r.index, r.reason, r.stage) for r in d.rejected)
        assert got == sorted((i + k, reason, "validate") for i in range(0, len(batch), 4)
                             for k, reason in ((1, "missing_event_id"), (2, "missing_entity_key")))
        assert d.table.column("event_id").to_pylist() == ["e0", "e3"] * (len(batch) // 4)


WIDE = {"type": "record", "name": "Wide", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": ["null", "string"]},
    {"name": "n", "type": "int"}, {"name": "m", "type": ["long", "null"]}, {"name": "x", "type": "double"},
    {"name": "y", "type": ["null", "float"]}, {"name": "ok", "type": "boolean"}, {"name": "b", "type": "bytes"},
    {"name": "event_time", "type": "long"}]}

wide_rows = st.fixed_dictionaries({
    "event_id": st.text(max_size=6), "card_id": st.one_of(st.none(), st.text(max_size=4)),
    "n": st.integers(-(2**31), 2**31 - 1), "m": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "x": st.floats(allow_nan=False), "y": st.one_of(st.none(), st.floats(width=32, allow_nan=False)),
    "ok": st.booleans(), "b": st.binary(max_size=5), "event_time": st.integers(-5, 2**41)})


def _garble(codec: AvroCodec, rec: dict, how: int, at: int) -> bytes:
    """A message the row path must not accept on its own: each kind the columnar decoder rejects
    or reads differently from fastavro, plus arbitrary byte flips."""
    good = codec.encode(rec)
    if how == 0:  # int out of range: fastavro's reader takes it, the columnar decoder does not
        return AvroCodec(codec.schema, codec.schema_id, validate=False).encode({**rec, "n": 2**31 + at})
    if how == 1:
        return good + bytes([at % 256])  # trailing bytes
    if how == 2:
        return good[:max(0, len(good) - 1 - at % len(good))]  # truncated
    if how == 3:  # a non-canonical (overlong) varint for event_id's length
        return good[:5] + bytes([good[5] | 0x80, 0x00]) + good[6:]
    if how == 4:  # union branch 2
        body = bytearray(good)
        body[5 + 1 + len(rec["event_id"].encode())] = 4
        return bytes(body)
    body = bytearray(good)  # flip a byte anywhere
    body[at % len(body)] ^= 1 + at % 255
    return bytes(body)


def _nan_equal(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (a garbled float may decode to NaN on both paths; Arrow's ``equals`` says no)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_nan_equal, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(wide_rows, min_size=1, max_size=decode_mod.ROWWISE_MAX),
       bad=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5), st.integers(0, 10**6)), max_size=3))
def test_rowwise_decode_equals_the_columnar_path(rows, bad) -> None:
    """Small batches decode row by row only when every message is canonical; either way the table,
    the row index and every dead letter (reason, message, stage) equal the columnar path's."""
    codec = AvroCodec(WIDE, 21)
    msgs = [codec.encode(r) for r in rows]
    dec = BatchDecoder(codec, ["card_id"], "event_time")
    assert dec._rows(msgs) is not None  # canonical batches take the row path (or this test tests nothing)
    for i, how, at in bad:
        msgs[i % len(msgs)] = _garble(codec, rows[i % len(rows)], how, at)
    got = dec.decode(msgs)
    with patch.object(decode_mod, "ROWWISE_MAX", 0):
        want = dec.decode(msgs)
    assert got.table.schema == want.table.schema and _nan_equal(got.table.to_pylist(), want.table.to_pylist())
    assert got.index.tolist() == want.index.tolist()
    key = lambda r: (r.index, r.reason, r.error, r.stage)  # noqa: E731
    assert sorted(map(key, got.rejected)) == sorted(map(key, want.rejected))


def test_rowwise_decode_rejects_an_out_of_range_int() -> None:
    codec = AvroCodec(WIDE, 21)
    rec = {"event_id": "e", "card_id": "c", "n": 1, "m": None, "x": 0.0, "y": None, "ok": True, "b": b"",
           "event_time": 5}
    big = _garble(codec, rec, 0, 0)
    assert AvroCodec(WIDE, 21).decode(big)["n"] == 2**31  # fastavro alone would let it through
    dec = BatchDecoder(codec, ["card_id"], "event_time")
    assert dec._rows([big]) is None
    assert [(r.reason, r.index) for r in dec.decode([codec.encode(rec), big]).rejected] == [("avro_error", 1)]


def test_numeric_key_fields_and_no_event_time() -> None:
    """A labels topic keyed by an integer id: only a null key is missing; no event-time check."""
    schema = {"type": "record", "name": "L", "fields": [{"name": "event_id", "type": ["null", "long"]},
                                                        {"name": "ok", "type": "boolean"}]}
    codec = AvroCodec(schema, 31)
    dec = BatchDecoder(codec, ["event_id"], None, "event_id")
    msgs = [codec.encode({"event_id": i, "ok": True}) for i in (0, None, 7)] * 10  # 30: the columnar path
    for got in (dec.decode(msgs), dec.decode(msgs[:3])):
        assert got.table.column("event_id").to_pylist() == [0, 7] * (len(got.index) // 2)
        assert {r.reason for r in got.rejected} == {"missing_entity_key"}


def test_decoder_refuses_a_schema_without_the_key_field() -> None:
    with pytest.raises(ScoreConfigError, match="merchant_id"):
        BatchDecoder(AvroCodec(EVENT, 11), ["merchant_id"], "event_time")


def test_canary_mask_is_stable_and_near_the_percentage() -> None:
    ents = [f"c{i}" for i in range(20000)]
    m = canary_mask(ents, 10.0)
    assert abs(m.mean() - 0.10) < 0.01
    assert (canary_mask(ents[:100], 10.0) == m[:100]).all()  # per entity, not per batch
    assert not canary_mask(ents, 0).any() and canary_mask(ents, 100).all()
    assert (m <= canary_mask(ents, 20.0)).all()  # raising the percentage only adds entities


def test_canary_mask_hashes_integer_keys_as_fetch_strings_them() -> None:
    keys = list(range(1000))
    assert (canary_mask(keys, 10.0) == canary_mask([str(k) for k in keys], 10.0)).all()


class _Model:
    """A registry-like model (``.meta``, ``.predict``) scoring ``fn(X)``."""

    def __init__(self, name: str, version: int, fn=lambda X: np.full(X.shape[0], 0.5),
                 features: tuple[str, ...] = ("v:f",)) -> None:
        self.meta = SimpleNamespace(name=name, version=version, threshold=None, spec=f"{name}@{version}",
                                    features=features)
        self.fn = fn

    def predict(self, X, xp):
        return self.fn(X)


def _fake_fetch(redis, project, plan, ents, refs, at_ms) -> FetchResult:
    ids = tuple(map(str, next(iter(ents.values()))))
    n = len(ids)
    return FetchResult(("v:f",), ids, {"v:f": (np.arange(n, dtype=np.float64), np.zeros(n, bool))},
                       {"v:f": pa.float64()}, {"v": 1}, at_ms, {"card": ids})


def _scorer(models: Models, *, event_id: object = "string", card_id: object = "string") -> tuple[Scorer, AvroCodec]:
    codec = AvroCodec(_event_schema(event_id, card_id), 11)
    sc = Scorer(plan=None, project="p", redis=None, decoder=BatchDecoder(codec, ["card_id"], "event_time"),
                spec=MatrixSpec(("v:f",), (("card", "card_id"),), (0.0,)), models=models, xp=np,
                prediction_encoder=SplitEncoder(AvroCodec(load_schema("prediction"), 1), ("latency", "produced_ms")),
                shadow_encoder=SplitEncoder(AvroCodec(load_schema("shadow"), 2)))
    return sc, codec


def _score(sc: Scorer, codec: AvroCodec, rows: list[tuple]) -> tuple[Any, list[dict], list[dict]]:
    """(output, decoded predictions, decoded shadows) of one batch of (event_id, card_id) rows."""
    with patch("scoring.scorer.fetch", _fake_fetch):
        out = sc.score_batch([codec.encode({"event_id": e, "card_id": c, "amount": 1.0, "event_time": 5})
                              for e, c in rows])
    preds = [AvroCodec(load_schema("prediction"), 1).decode(v) for _, v, _ in out.predictions]
    shadows = [AvroCodec(load_schema("shadow"), 2).decode(v) for _, v, _ in out.shadows]
    return out, preds, shadows


def test_integer_entity_keys_are_routed_to_the_canary() -> None:
    sc, codec = _scorer(Models(_Model("prod", 1), (), _Model("cand", 2), 50.0), card_id="long")
    out, preds, _ = _score(sc, codec, [(f"e{i}", 100 + i) for i in range(40)])
    assert not out.rejects and len(preds) == 40
    assert [p["model_version"] == "2" for p in preds] == canary_mask([str(100 + i) for i in range(40)], 50.0).tolist()


def test_a_non_finite_score_dead_letters_its_row_only() -> None:
    bad = lambda X: np.where(X[:, 0] % 3 == 1, np.nan, 0.25)  # noqa: E731  rows 1, 4: NaN
    shadow_seen: list[int] = []
    shadow = _Model("sh", 7, lambda X: shadow_seen.append(len(X)) or np.full(len(X), 0.5))
    sc, codec = _scorer(Models(_Model("prod", 1, bad), (shadow,)))
    out, preds, shadows = _score(sc, codec, [(f"e{i}", f"c{i}") for i in range(6)])
    assert [(r.index, r.reason, r.stage) for r in out.rejects] == [(i, "model_error", "score") for i in (1, 4)]
    assert all("non-finite score" in r.error and "prod@1" in r.error for r in out.rejects)
    assert [p["event_id"] for p in preds] == ["e0", "e2", "e3", "e5"] and out.scores.tolist() == [0.25] * 4
    assert [s["event_id"] for s in shadows] == ["e0", "e2", "e3", "e5"] and shadow_seen == [4]
    assert len(out.fetched.entities) == 4


def test_a_failing_canary_leaves_its_rows_to_the_champion() -> None:
    def broken(X):
        raise RuntimeError("kernel failed")
    rows = [(f"e{i}", f"c{i}") for i in range(8)]
    for canary, fallen in ((_Model("cand", 2, broken), 8),
                           (_Model("cand", 2, lambda X: np.where(X[:, 0] < 3, np.inf, 0.75)), 3)):
        sc, codec = _scorer(Models(_Model("prod", 1), (), canary, 100.0))
        out, preds, _ = _score(sc, codec, rows)
        assert not out.rejects and len(preds) == 8
        assert [p["model_version"] for p in preds].count("1") == fallen
        assert all((p["score"], p["model_version"]) in ((0.5, "1"), (0.75, "2")) for p in preds)
        fallbacks = lambda: sc.metrics.registry.get_sample_value(  # noqa: E731
            "headwater_score_canary_fallbacks_total", {"model": "cand", "version": "2"})
        assert fallbacks() is None  # counted when the batch settles, not when scored
        out.observe()
        assert fallbacks() == fallen


def test_failing_shadows_never_affect_production() -> None:
    def broken(X):
        raise RuntimeError("no")
    shadows = (_Model("raises", 2, broken), _Model("nan", 3, lambda X: np.full(len(X), np.nan)), _Model("ok", 4))
    sc, codec = _scorer(Models(_Model("prod", 1), shadows))
    out, preds, sh = _score(sc, codec, [(f"e{i}", f"c{i}") for i in range(5)])
    assert not out.rejects and len(preds) == 5 and {s["model_name"] for s in sh} == {"ok"}
    errors = lambda name: sc.metrics.registry.get_sample_value("headwater_score_shadow_errors_total",  # noqa: E731
                                                               {"shadow": name})
    assert errors("raises") is None  # counted when the batch settles, not when scored
    out.observe()
    assert (errors("raises"), errors("nan")) == (1, 1)


def test_a_production_model_that_raises_still_dead_letters_the_batch() -> None:
    def broken(X):
        raise RuntimeError("no")
    sc, codec = _scorer(Models(_Model("prod", 1, broken)))
    out, preds, _ = _score(sc, codec, [(f"e{i}", f"c{i}") for i in range(3)])
    assert not preds and [(r.index, r.reason) for r in out.rejects] == [(i, "model_error") for i in range(3)]


def test_a_null_event_id_is_dead_lettered_not_a_crash() -> None:
    sc, codec = _scorer(Models(_Model("prod", 1)), event_id=["null", "string"])
    out, preds, _ = _score(sc, codec, [("e0", "c0"), (None, "c1"), ("e2", "c2")])
    assert [(r.index, r.reason) for r in out.rejects] == [(1, "missing_event_id")]
    assert [p["event_id"] for p in preds] == ["e0", "e2"]


def test_scorer_refuses_a_non_string_event_id_and_models_with_other_features() -> None:
    with pytest.raises(ScoreConfigError, match=r"'event_id' is int64, not a string.*\"string\""):
        _scorer(Models(_Model("prod", 1)), event_id="long")
    sc, _ = _scorer(Models(_Model("prod", 1)))
    with pytest.raises(ScoreConfigError, match="features differ"):
        sc.set_models(Models(_Model("prod", 2, features=("v:g",))))
    assert sc.models.production.meta.version == 1


def test_adaptive_batch_grows_under_load_and_shrinks_when_idle() -> None:
    b = AdaptiveBatch(1000, start=64)
    assert [b.update(b.target) for _ in range(6)] == [128, 256, 512, 1000, 1000, 1000]
    assert b.update(3) == 500 and b.update(0) == 250
    for _ in range(20):
        b.update(0)
    assert b.target == 1
    assert b.update(1) == 2


def test_only_deep_full_batches_are_pipelined() -> None:
    """A full batch overlaps its flush with the next only when it holds half of max_batch or more."""
    assert pipelined(4096, 4096, 4096) and pipelined(2048, 2048, 4096) and pipelined(3000, 2048, 4096)
    assert not pipelined(512, 512, 4096)  # full, but a mid rate: settled at once
    assert not pipelined(2047, 4096, 4096) and not pipelined(100, 4096, 4096)  # not full
    assert pipelined(8, 8, 8) and pipelined(4, 4, 8) and not pipelined(3, 2, 8)  # small max_batch (tests)
    assert pipelined(1, 1, 1)


def test_observe_many_equals_observe() -> None:
    r = CollectorRegistry()
    a = Histogram("a", "a", buckets=(0.1, 1, 10), registry=r)
    b = Histogram("b", "b", buckets=(0.1, 1, 10), registry=r)
    vals = [0.05, 0.1, 0.5, 1.0, 3, 100, 0.0]
    for v in vals:
        a.observe(v)
        a.observe(v)
    observe_many(b, vals, weight=2)
    sa = {s.name[1:] + str(s.labels): s.value for s in a.collect()[0].samples if not s.name.endswith("created")}
    sb = {s.name[1:] + str(s.labels): s.value for s in b.collect()[0].samples if not s.name.endswith("created")}
    assert sa == sb


def test_settings_validation_and_transactional_conf() -> None:
    kw = dict(bootstrap_servers="x", group_id="g", events_topic="e", predictions_topic="p", shadow_topic="s",
              dlq_topic="d", feature_log_topic="f")
    with pytest.raises(ScoreConfigError, match="max-batch"):
        ConsumerSettings(**kw, max_batch=0)
    s = ConsumerSettings(**kw, exactly_once=True, instance_id="3")
    assert s.producer_conf()["transactional.id"] == "headwater-score.g.3"
    assert s.consumer_conf()["enable.auto.commit"] is False
    assert ConsumerSettings(**kw).consumer_conf()["enable.auto.offset.store"] is False


class _Queue:
    """A consumer's prefetch queue: ``consume(n, timeout)`` pops up to n; records each call."""

    # real confluent_kafka.Message objects (the loop reads them through the C accessors)

    def __init__(self, arrivals: list[int]) -> None:
        self.ready: list[int] = []
        self.arrivals = list(arrivals)  # one event arrives per blocking wait
        self.calls: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list:
        self.calls.append((n, timeout))
        if not self.ready and timeout > 0 and self.arrivals:
            self.ready.append(self.arrivals.pop(0))
        got, self.ready = self.ready[:n], self.ready[n:]
        return [Message(value=b"%d" % v, topic="e", partition=0, offset=v) for v in got]


def test_next_batch_takes_what_is_prefetched_and_never_waits_to_fill() -> None:
    from scoring.consumer import ScoreLoop

    loop = ScoreLoop.__new__(ScoreLoop)
    q = loop.consumer = _Queue([99])
    q.ready = [1, 2, 3]
    assert [m.offset() for m in loop._next_batch(64, 0.02)] == [1, 2, 3]  # prefetched: no wait
    assert q.calls == [(64, 0)]
    q.calls.clear()
    assert [m.offset() for m in loop._next_batch(64, 0.02)] == [99]  # empty: wait for one, then drain
    assert q.calls == [(64, 0), (1, 0.02), (63, 0)]
    q.calls.clear()
    assert loop._next_batch(64, 0.0) == [] and q.calls == [(64, 0)]  # unsettled outputs: never block
    q.ready = list(range(10))
    assert len(loop._next_batch(4, 0.02)) == 4 and len(q.ready) == 6  # the target caps a batch


def test_next_batch_drops_kafka_errors_and_raises_on_fatal_ones() -> None:
    from scoring.consumer import ScoreLoop
    from scoring.errors import ScoringError

    loop = ScoreLoop.__new__(ScoreLoop)
    good = [Message(value=b"a", topic="e", partition=0, offset=1), Message(value=b"b", topic="e", partition=0, offset=2)]
    transient = Message(error=KafkaError(KafkaError._TRANSPORT), topic="e")
    loop.consumer = type("C", (), {"consume": lambda self, n, t: [good[0], transient, good[1]]})()
    assert [m.offset() for m in loop._next_batch(8, 0.0)] == [1, 2]
    fatal = Message(error=KafkaError(KafkaError._FENCED, fatal=True), topic="e")
    loop.consumer = type("C", (), {"consume": lambda self, n, t: [fatal]})()
    loop.s = type("S", (), {"instance_id": "0"})()
    with pytest.raises(ScoringError, match="instance-id"):
        loop._next_batch(8, 0.0)


def test_a_dead_letter_of_a_huge_event_fits_the_producer_limit() -> None:
    codec = AvroCodec(load_schema("dlq"), 41)
    msg = Message(value=b"\x07" + b"x" * 2_000_000, key=b"k" * 100_000, topic="e", partition=1, offset=9)
    rec = codec.decode(outputs.dead_letter(codec, msg, "bad_magic", "first byte is 7", "decode"))
    assert rec["value"] == msg.value()[:outputs.DLQ_BYTES_MAX] and len(rec["key"]) == outputs.DLQ_BYTES_MAX // 10
    assert "value of 2,000,001 bytes cut to its first 524,288" in rec["error"] and "key of 100,000" in rec["error"]
    small = Message(value=b"\x07ab", key=None, topic="e", partition=1, offset=10)
    rec = codec.decode(outputs.dead_letter(codec, small, "bad_magic", "first byte is 7", "decode"))
    assert rec["value"] == b"\x07ab" and rec["key"] is None and rec["error"] == "first byte is 7"


def test_outputs_kafka_refuses_for_good_stop_the_loop_instead_of_a_retry_loop() -> None:
    from types import SimpleNamespace
    from confluent_kafka import KafkaException
    from scoring.consumer import ScoreLoop
    from scoring.errors import DeliveryError, ScoringError
    me = SimpleNamespace(s=SimpleNamespace(exactly_once=False), _in_txn=False)
    ScoreLoop._permanent(me, DeliveryError("1 failed", [KafkaError(KafkaError._MSG_TIMED_OUT)]))  # retried
    ScoreLoop._permanent(me, KafkaException(KafkaError(KafkaError._TRANSPORT)))
    for exc in (DeliveryError("1 failed", [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)]),
                KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))):
        with pytest.raises(ScoringError, match="refuses this scorer's outputs for good"):
            ScoreLoop._permanent(me, exc)


def test_score_batch_records_metrics_only_when_observed() -> None:
    """The consumer calls ``out.observe()`` once the outputs are acknowledged: scoring alone records nothing."""
    sc, codec = _scorer(Models(_Model("prod", 1), (_Model("sh", 2),)))
    out, preds, _ = _score(sc, codec, [(f"e{i}", f"c{i}") for i in range(5)])
    sample = sc.metrics.registry.get_sample_value
    assert len(preds) == 5 and sample("headwater_score_predictions_total", {"model": "prod", "version": "1"}) is None
    out.observe()
    assert sample("headwater_score_predictions_total", {"model": "prod", "version": "1"}) == 5
    assert sample("headwater_score_batch_events_count", {}) == 1
    assert sample("headwater_score_stage_seconds_count", {"stage": "fetch"}) == 1


def test_canary_fallbacks_of_a_batch_whose_every_row_failed_are_still_counted() -> None:
    def broken(X):
        raise RuntimeError("kernel failed")
    sc, codec = _scorer(Models(_Model("prod", 1, lambda X: np.full(len(X), np.nan)), (), _Model("cand", 2, broken), 100.0))
    out, preds, _ = _score(sc, codec, [(f"e{i}", f"c{i}") for i in range(4)])
    assert not preds and len(out.rejects) == 4  # the champion's NaNs: every row dead-lettered
    out.observe()
    assert sc.metrics.registry.get_sample_value("headwater_score_canary_fallbacks_total",
                                                {"model": "cand", "version": "2"}) == 4
