"""DSL validation (one-line errors), feature naming, and the plan with its hash."""

from __future__ import annotations

import dataclasses

import pytest

from streamjobs import Aggregation, Entity, FeatureView, LatestValue, Source, build_plan
from streamjobs.dsl import avro_columns
from streamjobs.errors import DefinitionError, UnknownOpError
from streamjobs.plan import build_view_plan
from headwater.errors import ConfigError

SCHEMA = {
    "type": "record", "name": "Transaction",
    "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "merchant_id", "type": ["null", "string"]},
        {"name": "amount", "type": "double"},
        {"name": "qty", "type": "int"},
        {"name": "channel", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
SRC = Source("transactions", "fraud.transactions", schema=SCHEMA, event_time_field="event_time", key_fields=("card_id",))
CARD = Entity("card", "card_id")


def view(*aggs, **kw) -> FeatureView:
    return FeatureView(kw.pop("name", "card_txn"), CARD, kw.pop("source", SRC), tuple(aggs), **kw)


def _err(v: FeatureView, fragment: str, exc=DefinitionError) -> str:
    with pytest.raises(exc) as info:
        build_plan([v])
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    return msg


def test_avro_columns_derivation():
    assert SRC.column_types() == {
        "card_id": "string", "merchant_id": "string", "amount": "double", "qty": "int",
        "channel": "string", "tags": "other", "event_time": "timestamp"}
    assert avro_columns({"type": "record", "name": "r", "fields": [{"name": "u", "type": ["null", "int", "string"]}]}) == {"u": "other"}
    with pytest.raises(DefinitionError, match="not a record"):
        avro_columns({"type": "string"})
    with pytest.raises(DefinitionError, match="cannot read Avro schema"):
        avro_columns("/nonexistent/x.avsc")
    # the features job's Avro reader has no enum column: refused when the source is defined, not at run
    with pytest.raises(DefinitionError, match="field 'ch' is an enum.*make it a string"):
        avro_columns({"type": "record", "name": "r", "fields": [
            {"name": "ch", "type": {"type": "enum", "name": "Ch", "symbols": ["web"]}}]})
    micros = {"type": "record", "name": "r", "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}]}
    assert avro_columns(micros) == {"t": "other"}


def test_errors_are_config_errors():
    assert issubclass(DefinitionError, ConfigError) and issubclass(UnknownOpError, DefinitionError)


def test_feature_names_and_hops():
    v = view(
        Aggregation("sum", "amount", ("10m", "1h", "24h")),
        Aggregation("count", "amount", ("10m", "1h"), name="txn_count"),
        Aggregation("count", "card_id", "1m", name="card_events"),
        Aggregation("max", "amount", (7_200_000,), name="{column}_peak_{window}"),
        Aggregation("distinct_count", "merchant_id", "1h"),
        LatestValue("channel", ttl="7d"),
    )
    vp = build_view_plan(v)
    got = [(f.name, f.window_ms, f.hop_ms) for f in vp.features]
    assert got == [
        ("amount_sum_10m", 600_000, 10_000), ("amount_sum_1h", 3_600_000, 60_000), ("amount_sum_1d", 86_400_000, 3_600_000),
        ("txn_count_10m", 600_000, 10_000), ("txn_count_1h", 3_600_000, 60_000),
        ("card_events", 60_000, 1_000),
        ("amount_peak_2h", 7_200_000, 600_000),
        ("merchant_id_distinct_count_1h", 3_600_000, 60_000),
        ("channel_latest", 7 * 86_400_000, 86_400_000),
    ]
    assert vp.ladder == (1_000, 10_000, 60_000, 600_000, 3_600_000, 86_400_000)
    assert [f.name for f in vp.fields] == [
        "amount__cnt", "amount__sum", "amount__max", "card_id__cnt", "channel__last", "merchant_id__distinct"]
    assert vp.longest_window_ms == 7 * 86_400_000 and not vp.has_unbounded
    assert [(g.window_ms, g.hop_ms) for g in vp.groups] == [
        (60_000, 1_000), (600_000, 10_000), (3_600_000, 60_000), (7_200_000, 600_000), (86_400_000, 3_600_000),
        (7 * 86_400_000, 86_400_000)]
    g1h = vp.groups[2]
    assert [f.name for f in g1h.features] == ["amount_sum_1h", "txn_count_1h", "merchant_id_distinct_count_1h"]
    assert [f.name for f in g1h.fields] == ["amount__cnt", "amount__sum", "merchant_id__distinct"]


def test_latest_without_ttl_is_unbounded():
    vp = build_view_plan(view(Aggregation("sum", "amount", "1h", hop="5m"), LatestValue("merchant_id")))
    f = vp.feature("merchant_id_latest")
    assert (f.window_ms, f.ttl_ms, f.window) == (None, None, "unbounded")
    assert vp.has_unbounded and vp.ladder[-1] == f.hop_ms and vp.ladder[-1] % 300_000 == 0


@pytest.mark.parametrize(
    "agg, fragment",
    [
        (Aggregation("sum", "amountt", "1h"), "unknown column 'amountt'; columns of source 'transactions': card_id"),
        (Aggregation("sum", "merchant_id", "1h"), "sum(merchant_id) needs a column of type double/float/int/long"),
        (Aggregation("mean", "event_time", "1h"), "but 'event_time' is timestamp"),
        (Aggregation("sum", "amount", "1500ms"), "window 1500ms is not a multiple of the tick 1s"),
        (Aggregation("sum", "amount", "1h", hop="7m"), "hop 7m does not divide window 1h"),
        (Aggregation("sum", "amount", "1h", hop="1500ms"), "not a multiple of the tick"),
        (Aggregation("last", "tags", "1h"), "but 'tags' is other"),
    ],
)
def test_validation_errors_are_one_line(agg, fragment):
    msg = _err(view(agg), fragment)
    assert "card_txn" in msg


def test_min_max_accept_timestamps_and_count_accepts_anything():
    vp = build_view_plan(view(Aggregation("max", "event_time", "1h"), Aggregation("count", "tags", "1h"),
                              Aggregation("last", "qty", "1h"), Aggregation("distinct_count", "channel", "1h")))
    assert [f.column_type for f in vp.features] == ["timestamp", "other", "int", "string"]


def test_duplicate_names_chain_and_unknown_op():
    _err(view(Aggregation("sum", "amount", "1h"), Aggregation("sum", "amount", "60m")), "duplicate feature name 'amount_sum_1h'")
    _err(view(Aggregation("sum", "amount", "1h", hop="5m"), Aggregation("max", "amount", "14m", hop="2m")),
         "window 14m with hop 2m")
    with pytest.raises(UnknownOpError, match="unknown op 'avg'"):
        Aggregation("avg", "amount", "1h")
    with pytest.raises(DefinitionError, match="use LatestValue"):
        Aggregation("latest", "amount", "1h")
    _err(view(Aggregation("sum", "amount", "1h", name="1bad")), "not a valid name")
    _err(view(Aggregation("sum", "amount", "1h", name="{colum}_x")), "name template")


def test_view_level_errors():
    _err(view(), "has no aggregations")
    with pytest.raises(DefinitionError, match="allowed_lateness"):
        view(Aggregation("sum", "amount", "1h"), allowed_lateness="5 minutes")
    with pytest.raises(DefinitionError, match="view name"):
        view(Aggregation("sum", "amount", "1h"), name="card-txn")
    _err(view(Aggregation("sum", "amount", "1h"), source=Source("s", "t", event_time_field="event_time")),
         "neither schema nor columns")
    bad_time = Source("s", "t", event_time_field="card_id", columns={"card_id": "string", "amount": "double"})
    _err(view(Aggregation("sum", "amount", "1h"), source=bad_time), "must be a long (epoch ms) or timestamp-millis column")
    with pytest.raises(DefinitionError, match="column 'x' has type 'decimal'"):
        Source("s", "t", columns={"x": "decimal"})
    with pytest.raises(DefinitionError, match="window"):
        Aggregation("sum", "amount", ())
    assert view(Aggregation("sum", "amount", "1h"), allowed_lateness=0).allowed_lateness_ms == 0
    with pytest.raises(DefinitionError, match="windows must be a duration"):
        Aggregation("sum", "amount", None)
    _err(view(LatestValue("amount", ttl="1500ms")), "not a multiple of the tick")
    with pytest.raises(DefinitionError, match="prefix hw_"):
        Source("s", "t", columns={"hw_offset": "long"})


def test_entity_keys_and_event_times_that_would_silently_never_match():
    """Flink casts a double key to '12345.0' and Python to '12345'; a microsecond event time read
    as milliseconds lands 1000x in the future. Both are refused at definition time."""
    cols = {"k": "double", "b": "boolean", "n": "long", "amount": "double", "event_time": "long", "t_us": "other"}
    for key in ("k", "b"):
        _err(FeatureView("v", Entity("e", key), Source("s", "t", columns=cols), (Aggregation("sum", "amount", "1h"),)),
             "use a string or integer field")
    build_plan([FeatureView("v", Entity("e", "n"), Source("s", "t", columns=cols), (Aggregation("sum", "amount", "1h"),))])
    _err(FeatureView("v", Entity("e", "n"), Source("s", "t", columns=cols, event_time_field="t_us"),
                     (Aggregation("sum", "amount", "1h"),)), "convert micro- or nanosecond times")


def test_views_of_one_topic_share_its_event_time_field():
    cols = {"card_id": "string", "amount": "double", "event_time": "long", "settled_at": "long"}
    a = FeatureView("a", CARD, Source("s", "t", columns=cols), (Aggregation("sum", "amount", "1h"),))
    b = FeatureView("b", CARD, Source("s", "t", columns=cols, event_time_field="settled_at"), (Aggregation("sum", "amount", "1h"),))
    with pytest.raises(DefinitionError, match="different event-time fields"):
        build_plan([a, b])
    build_plan([a, dataclasses.replace(b, source=Source("s2", "t2", columns=cols, event_time_field="settled_at"))])


def test_definitions_are_frozen_and_hashable():
    v = view(Aggregation("sum", "amount", ["1h"]))
    assert v.aggregations[0].windows == ("1h",)
    hash(v)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.name = "x"  # type: ignore[misc]


BASE = dict(aggs=(Aggregation("sum", "amount", "1h"), Aggregation("stddev", "amount", "10m")))


@pytest.mark.parametrize(
    "change",
    [
        dict(aggs=(Aggregation("mean", "amount", "1h"), Aggregation("stddev", "amount", "10m"))),
        dict(aggs=(Aggregation("sum", "amount", "2h"), Aggregation("stddev", "amount", "10m"))),
        dict(aggs=(Aggregation("sum", "amount", "1h", hop="10m"), Aggregation("stddev", "amount", "10m"))),
        dict(aggs=(Aggregation("sum", "qty", "1h"), Aggregation("stddev", "amount", "10m"))),
        dict(aggs=(Aggregation("sum", "amount", "1h", name="s"), Aggregation("stddev", "amount", "10m"))),
        dict(allowed_lateness="1m"),
        dict(tick="500ms"),
        dict(name="other"),
    ],
)
def test_plan_hash_changes_with_semantics(change):
    kw = {**BASE, **change}
    base = build_plan([view(*BASE["aggs"])])
    changed = build_plan([view(*kw.pop("aggs"), **kw)])
    assert changed.views[0].plan_hash != base.views[0].plan_hash and changed.plan_hash != base.plan_hash


def test_plan_hash_ignores_owner_description_freshness_and_is_stable():
    a = build_plan([view(*BASE["aggs"])])
    b = build_plan([view(*BASE["aggs"], owner="risk", description="card spend", freshness_objective="5s", ttl="2d")])
    assert a.views[0].plan_hash == b.views[0].plan_hash and a.plan_hash == b.plan_hash
    assert a == build_plan([view(*BASE["aggs"])])
    assert len(a.plan_hash) == 16 and int(a.plan_hash, 16) >= 0
    assert b.views[0].ttl_ms == 2 * 86_400_000


def test_features_by_ref_and_duplicate_views():
    v1 = view(*BASE["aggs"])
    v2 = view(Aggregation("count", "card_id", "10m"), name="card_counts")
    plan = build_plan([v1, v2])
    assert [v.name for v in plan.views] == ["card_counts", "card_txn"]
    refs = plan.features_by_ref(["card_txn:amount_stddev_10m", "card_counts:*", "card_txn:amount_stddev_10m"])
    assert [r.ref for r in refs] == ["card_txn:amount_stddev_10m", "card_counts:card_id_count_10m"]
    assert plan.features_by_ref("card_txn:*")[0].feature.op == "sum"
    for bad, fragment in [("card_txn", "is not 'view:feature'"), ("nope:x", "no view 'nope'"),
                          ("card_txn:nope", "has no feature 'nope'; it has: amount_sum_1h")]:
        with pytest.raises(DefinitionError, match=fragment):
            plan.features_by_ref(bad)
    with pytest.raises(DefinitionError, match="duplicate view name"):
        build_plan([v1, v1])


def test_progress_query_carries_the_next_offset():
    """The writer's idleness rule compares a progress record's ``n_events`` with the source
    partition's end offset, so it must be MAX(offset) + 1, not a count (a count equals it only on a
    gapless topic that starts at offset 0, which is all an end-to-end test sees)."""
    from online_store.tiles import PROGRESS_RESOLUTION
    from streamjobs.compiler import OFFSET, SourceBinding, q, tile_selects
    vp = build_plan([view(Aggregation("count", "amount", ("1m",)))]).views[0]
    sql = dict(tile_selects(vp, SourceBinding("fraud.transactions", SCHEMA, 1)))[PROGRESS_RESOLUTION]
    assert f"MAX({q(OFFSET)}) + 1" in sql and "COUNT(*)" not in sql, sql


def test_a_restored_job_extends_each_state_ttl_by_its_downtime():
    """Flink counts STATE_TTL in processing time: a job stopped longer than a tile's TTL would
    restore with the tiles it had open expired, unless the restored run adds the downtime."""
    import re
    from streamjobs.compiler import SourceBinding, state_ttl_ms, tile_selects
    vp = build_plan([view(Aggregation("count", "amount", ("1m",)))]).views[0]
    src = SourceBinding("fraud.transactions", SCHEMA, 1)

    def ttls(downtime_ms: int) -> dict[int, int]:
        hints = {r: re.search(r"STATE_TTL\('e' = '(\d+) ms'\)", s) for r, s in tile_selects(vp, src, downtime_ms=downtime_ms)}
        return {r: int(m.group(1)) for r, m in hints.items() if m}  # the progress query keeps no tile state
    from online_store.keys import retention_ms
    base, later = ttls(0), ttls(3_600_000)
    keep = retention_ms(vp)  # at most the tile's retention in Redis: a longer outage keeps no more state
    assert base and all(later[r] == base[r] + min(3_600_000, keep[r]) for r in base)
    assert any(keep[r] < 3_600_000 for r in base) and all(ttls(1_000)[r] == base[r] + min(1_000, keep[r]) for r in base)
    assert all(base[r] == state_ttl_ms(vp, r) == 2 * (r + vp.allowed_lateness_ms) + vp.allowed_future_ms + 60_000
               for r in base)


def test_the_job_reads_other_schema_versions_through_the_repos_schema_store(tmp_path):
    """Every source table names the schema store, so records under another version of the events
    schema resolve instead of being skipped; a path's quote survives the SQL literal."""
    from headwater.config import clone_repo, load_repo
    from streamjobs.compiler import KafkaBounds, SourceBinding, source_ddl
    from streamjobs.job import bindings
    from streamjobs.repo import load_definitions
    from tests.conftest import EXAMPLE_REPO

    ddl = source_ddl(SourceBinding("t", SCHEMA, 3, "/srv/it's/schema_registry.json"), "k:9092", "g", KafkaBounds())
    assert "'headwater-avro.schema-store' = '/srv/it''s/schema_registry.json'" in ddl
    assert "schema-store" not in source_ddl(SourceBinding("t", SCHEMA, 3), "k:9092", "g", KafkaBounds())
    repo = load_repo(clone_repo(EXAMPLE_REPO, tmp_path / "repo", "x1"))
    sources, _, _ = bindings(repo, load_definitions(repo))
    store = (tmp_path / "repo" / repo.schema_store).resolve()
    assert sources and all(s.schema_store == str(store) for s in sources.values())
