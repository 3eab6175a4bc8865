"""online_store/transcode.py: the writer's generated path gives the same Redis write arguments as
the full path (decode, ``ir.from_row``, ``TileCodec.encode``) byte for byte, takes every record of
the common case, and hands everything else (progress, other plans, JSON-form strings, bad bytes)
back to the full path instead of guessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from online_store import keys
from online_store.tiles import tile_ir, tile_subject, tile_value_schema, tile_version
from online_store.writer import _Decoder
from schemas import AvroCodec
from schemas.store import FileSchemaStore
from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source
from streamjobs.plan import FeaturePlan, ViewPlan, build_view_plan

SEPARATORS = ("\x1e", "\x1f")


def _view() -> ViewPlan:
    src = Source("tx", "tx.none", event_time_field="event_time_ms",
                 columns={"card_id": "string", "amount": "double", "n": "long", "k": "int", "f": "float",
                          "merchant": "string", "event_time_ms": "long"})
    aggs = (Aggregation("count", "amount", ("1m", "10m")), Aggregation("sum", "amount", ("10m",)),
            Aggregation("stddev", "amount", ("1h",)), Aggregation("min", "amount", ("10m",)),
            Aggregation("max", "n", ("1h",)), Aggregation("min", "k", ("1h",)), Aggregation("max", "f", ("1h",)),
            Aggregation("last", "merchant", ("1h",)), Aggregation("distinct_count", "merchant", ("10m",)),
            LatestValue("amount", ttl="30m"))
    return build_view_plan(FeatureView("card", Entity("card", "card_id"), src, aggs))


VIEW = _view()
PLAN = FeaturePlan((VIEW,), VIEW.plan_hash)
TILE_CODEC = keys.codec_for(VIEW)
INT64 = st.integers(-(2**63), 2**63 - 1)
# mostly strings of the common case (non-empty, no separator), some that take the JSON form
TEXT = (st.text(st.characters(codec="utf-8", exclude_characters=SEPARATORS), min_size=1, max_size=6)
        | st.sampled_from(["m1", "m10", "é", "z", "", "a\x1eb", "\x1f"]))


def _ir_value(f: Any) -> st.SearchStrategy:
    if f.kind == "cnt":
        return st.none() | INT64
    if f.kind in ("sum", "m2"):
        return st.none() | st.floats()
    if f.kind in ("min", "max"):
        return st.none() | {"long": INT64, "int": st.integers(-(2**31), 2**31 - 1),
                            "double": st.floats(), "float": st.floats(width=32)}[f.column_type]
    if f.kind == "last":
        return st.none() | TEXT
    return st.none() | st.lists(st.none() | TEXT, max_size=6)


@st.composite
def records(draw: Any) -> dict[str, Any]:
    rec = {"view": VIEW.name, "entity": draw(st.text(max_size=5)), "plan_hash": VIEW.plan_hash,
           "resolution_ms": draw(st.sampled_from([*VIEW.ladder, 0, -1])), "tile_start": draw(INT64),
           "n_events": draw(INT64), "max_append_ms": draw(INT64)}
    rec.update({f.name: draw(_ir_value(f)) for f in VIEW.fields})
    return rec


def _case(**fields: Any) -> dict[str, Any]:
    return {**{f.name: None for f in VIEW.fields}, "view": VIEW.name, "entity": "c1", "plan_hash": VIEW.plan_hash,
            "resolution_ms": VIEW.ladder[0], "tile_start": 60_000, "n_events": 3,
            "max_append_ms": 1_700_000_000_000, **fields}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[AvroCodec, _Decoder]:
    store = FileSchemaStore(Path(tmp_path_factory.mktemp("schemas")) / "registry.json")
    schema = tile_value_schema(VIEW)
    codec = AvroCodec(schema, store.register(tile_subject("tiles", VIEW.name), schema), store)
    dec = _Decoder(store, PLAN)
    dec.decode(codec.encode(_case()))  # the first value of a schema id compiles its transcoder
    return codec, dec


def _full_path(dec: _Decoder, value: bytes) -> tuple[str, tuple] | None:
    rec = dec.decode(value)
    if rec["resolution_ms"] <= 0:  # progress and late counts are not tiles
        return None
    try:
        encoded = TILE_CODEC.encode(tile_version(rec), tile_ir(VIEW, rec))
    except Exception:  # the writer counts such records invalid
        return None
    return rec["view"], (rec["entity"], rec["resolution_ms"], rec["tile_start"], rec["n_events"],
                         rec["max_append_ms"], encoded)


def _common_case(rec: dict[str, Any]) -> bool:
    """What the generated path must take: a tile (not progress) whose strings all use the 0x01 form."""
    strings = [rec[f.name] for f in VIEW.fields if f.kind == "last" and rec[f.name] is not None]
    strings += [x for f in VIEW.fields if f.kind == "distinct" for x in (rec[f.name] or ()) if x is not None]
    return rec["resolution_ms"] > 0 and all(s and not any(c in s for c in SEPARATORS) for s in strings)


@settings(max_examples=400, deadline=None)
@given(records())
@example(_case(amount__sum=-0.0, amount__m2=-0.0, amount__min=-0.0))  # from_row: a -0.0 sum is 0.0
@example(_case(merchant__distinct=["m2", None, "m10", "m2", "é"], merchant__last="m3"))  # sorted, deduplicated
def test_transcode_equals_the_full_path(setup: tuple[AvroCodec, _Decoder], rec: dict[str, Any]) -> None:
    codec, dec = setup
    value = codec.encode(rec)
    fast = dec.transcode(value)
    full = _full_path(dec, value)
    if fast is not None:
        assert fast == full
    assert (fast is not None) == (_common_case(rec) and full is not None)
    distinct = [x for x in rec["merchant__distinct"] or () if x is not None]
    event("common case" if fast is not None else "full path")
    if fast is not None and len(set(distinct)) > 1:
        event("common case, several distinct items")


@settings(max_examples=100, deadline=None)
@given(records())
def test_every_truncation_goes_to_the_full_path(setup: tuple[AvroCodec, _Decoder], rec: dict[str, Any]) -> None:
    codec, dec = setup
    value = codec.encode(rec)
    for k in range(len(value)):
        assert dec.transcode(value[:k]) is None
    assert dec.transcode(value + b"\x00") is None


def test_other_plans_views_and_bad_utf8_go_to_the_full_path(setup: tuple[AvroCodec, _Decoder]) -> None:
    codec, dec = setup
    rec = _case(merchant__last="m1")
    assert dec.transcode(codec.encode(rec)) is not None
    assert dec.transcode(codec.encode({**rec, "plan_hash": "0" * 16})) is None
    assert dec.transcode(codec.encode({**rec, "view": "other"})) is None
    assert dec.transcode(codec.encode({**rec, "resolution_ms": 0})) is None  # progress: the settle rule
    assert dec.transcode(codec.encode({**rec, "resolution_ms": -1})) is None  # a late count: not a tile
    good = codec.encode({**rec, "entity": "ab"})
    assert dec.transcode(good.replace(b"\x04ab", b"\x04\xff\xfe")) is None  # entity not UTF-8
    unknown = b"\x00\x00\x00\x03\xe7" + good[5:]  # a schema id this decoder has not seen
    assert dec.transcode(unknown) is None
