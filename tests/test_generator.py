"""headwater.generator: determinism, arrival model, realism proportions, schema, Parquet."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import generator as g
from headwater.errors import ConfigError
from headwater.generator import (
    DEFAULT_START_MS,
    EVENT_SCHEMA,
    LABEL_SCHEMA,
    EventBatch,
    GeneratorConfig,
    generate,
    generate_table,
    write_parquet,
)

HOUR = 3_600_000
DAY = 24 * HOUR


def _stream(cfg: GeneratorConfig, batch_rows: int):
    batches = list(generate(cfg, batch_rows=batch_rows))
    events = pa.concat_tables([b.events for b in batches]).combine_chunks()
    arrival = np.concatenate([b.arrival_ms for b in batches])
    labels = (
        pa.concat_tables([b.labels for b in batches]).combine_chunks() if cfg.labels else None
    )
    return batches, events, arrival, labels


def _ipc_bytes(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t.combine_chunks())
    return sink.getvalue().to_pybytes()


def _binomial_ok(k: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


# A 5-minute run: ~60k background events, 40 card-testing bursts.
BIG = GeneratorConfig(
    rate=200.0,
    entities=4000,
    duration_s=300,
    seed=11,
    late_fraction=0.03,
    disorder_ms=4000,
    allowed_lateness_ms=10_000,
    labels=True,
)


@pytest.fixture(scope="module")
def big():
    events, labels = generate_table(BIG, with_arrival=True)
    return events, labels


# --- schema ----------------------------------------------------------------------------------


def test_schema_and_dtypes(big):
    events, labels = big
    assert events.schema == EVENT_SCHEMA.append(pa.field("arrival_ms", pa.int64(), nullable=False))
    assert labels.schema == LABEL_SCHEMA
    plain, _ = generate_table(GeneratorConfig(rate=50, entities=20, duration_s=5, seed=1))
    assert plain.schema == EVENT_SCHEMA
    assert [f.name for f in EVENT_SCHEMA] == [
        "event_id", "card_id", "merchant_id", "device_id", "amount", "currency", "country",
        "event_time",
    ]
    assert [str(f.type) for f in EVENT_SCHEMA] == [
        "string", "string", "string", "string", "double", "string", "string", "int64",
    ]
    assert [str(f.type) for f in LABEL_SCHEMA] == ["string", "bool", "int64"]
    for col in events.columns:
        assert col.null_count == 0
    amount = events["amount"].to_numpy()
    assert np.all(amount > 0)
    np.testing.assert_array_equal(np.round(amount, 2), amount)  # 2 decimals
    countries = set(events["country"].to_pylist())
    assert all(len(c) == 2 and c.isupper() for c in countries)
    assert all(len(c) == 3 for c in set(events["currency"].to_pylist()))
    et = events["event_time"].to_numpy()
    assert et.min() >= DEFAULT_START_MS and et.max() < DEFAULT_START_MS + 300_000


def test_start_ms_shifts_event_time_only():
    a, _ = generate_table(GeneratorConfig(rate=100, entities=50, duration_s=5, seed=4))
    b, _ = generate_table(
        GeneratorConfig(rate=100, entities=50, duration_s=5, seed=4, start_ms=1_000)
    )
    delta = b["event_time"].to_numpy() - a["event_time"].to_numpy()
    assert np.all(delta == 1_000 - DEFAULT_START_MS)
    assert a.drop_columns(["event_time"]).equals(b.drop_columns(["event_time"]))


def test_event_batch_shape():
    cfg = GeneratorConfig(rate=1000, entities=100, duration_s=3, seed=2, labels=True)
    batches = list(generate(cfg, batch_rows=700))
    assert all(isinstance(b, EventBatch) for b in batches)
    assert [len(b) for b in batches[:-1]] == [700] * (len(batches) - 1)
    assert 0 < len(batches[-1]) <= 700
    for b in batches:
        assert b.arrival_ms.dtype == np.int64 and b.arrival_ms.shape == (len(b),)
        assert set(b.labels["event_id"].to_pylist()) <= set(b.events["event_id"].to_pylist())
    unlabelled, _ = generate_table(GeneratorConfig(rate=1000, entities=100, duration_s=3, seed=2))
    assert next(iter(generate(GeneratorConfig(rate=1000, entities=100, duration_s=3, seed=2)))).labels is None
    ev, _ = generate_table(cfg)
    assert ev.equals(unlabelled)  # labels=True does not perturb the events


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs():
    cfg = GeneratorConfig(rate=2000, entities=500, duration_s=5, seed=3, disorder_ms=500,
                          late_fraction=0.05, labels=True)
    a, la = generate_table(cfg, with_arrival=True)
    b, lb = generate_table(cfg, with_arrival=True)
    assert _ipc_bytes(a) == _ipc_bytes(b) and _ipc_bytes(la) == _ipc_bytes(lb)
    c, _ = generate_table(GeneratorConfig(**{**cfg.__dict__, "seed": 4}), with_arrival=True)
    assert c["event_id"][0].as_py().startswith("e4-")
    assert not np.array_equal(a["card_id"].to_numpy(zero_copy_only=False)[:1000],
                              c["card_id"].to_numpy(zero_copy_only=False)[:1000])
    assert not np.array_equal(a["amount"].to_numpy()[:1000], c["amount"].to_numpy()[:1000])


@pytest.mark.parametrize("segment_events", [None, 1500])
def test_independent_of_batch_rows(monkeypatch, segment_events):
    # small segments exercise the cross-segment pending buffer (late + disordered events)
    if segment_events is not None:
        monkeypatch.setattr(g, "_SEGMENT_TARGET_EVENTS", segment_events)
    def check(cfg, sizes):
        ref = None
        for batch_rows in sizes:
            _, ev, arr, lab = _stream(cfg, batch_rows)
            got = (_ipc_bytes(ev), arr.tobytes(), _ipc_bytes(lab))
            if ref is None:
                ref = got
            assert got == ref, batch_rows

    cfg = GeneratorConfig(rate=1000, entities=300, duration_s=20, seed=9, disorder_ms=3000,
                          allowed_lateness_ms=3000, late_fraction=0.1, labels=True)
    check(cfg, (65536, 4096, 997))
    if segment_events is not None:
        assert g._Plan(cfg).n_segments > 5
    # one row per batch, on a run small enough to afford it
    tiny = GeneratorConfig(rate=60, entities=30, duration_s=20, seed=9, disorder_ms=3000,
                           allowed_lateness_ms=3000, late_fraction=0.1, labels=True)
    check(tiny, (65536, 7, 1))


def test_parquet_round_trip_and_bytes(tmp_path, big):
    cfg = GeneratorConfig(rate=3000, entities=400, duration_s=10, seed=5, disorder_ms=1000,
                          late_fraction=0.02, labels=True)
    ev_path, lab_path = write_parquet(cfg, tmp_path / "a" / "events.parquet", row_group_rows=8000)
    assert lab_path == tmp_path / "a" / "events.labels.parquet"
    ev2, lab2 = write_parquet(cfg, tmp_path / "b.parquet", row_group_rows=8000)
    assert ev_path.read_bytes() == ev2.read_bytes()
    assert lab_path.read_bytes() == lab2.read_bytes()
    events, labels = generate_table(cfg)
    back = pq.read_table(ev_path)
    assert back.schema == EVENT_SCHEMA and back.equals(events)
    assert pq.read_table(lab_path).equals(labels)
    assert pq.ParquetFile(ev_path).metadata.num_row_groups == math.ceil(events.num_rows / 8000)
    with_arr, none = write_parquet(
        GeneratorConfig(**{**cfg.__dict__, "labels": False}), tmp_path / "c.parquet",
        with_arrival=True,
    )
    assert none is None and not (tmp_path / "c.labels.parquet").exists()
    t = pq.read_table(with_arr)
    assert t.column_names[-1] == "arrival_ms"
    assert t.drop_columns(["arrival_ms"]).equals(events)


# --- arrival model ---------------------------------------------------------------------------


def test_arrival_order_ids_and_disorder(big):
    events, _ = big
    arrival = events["arrival_ms"].to_numpy()
    offset = events["event_time"].to_numpy() - DEFAULT_START_MS
    delay = arrival - offset
    assert np.all(np.diff(arrival) >= 0)  # emitted in arrival order
    ids = events["event_id"].to_numpy(zero_copy_only=False)
    assert len(set(ids)) == len(ids) and all(i.startswith(f"e{BIG.seed}-") for i in ids[:100])
    # ties in arrival are broken by the event index
    idx = np.array([int(i.split("-")[1]) for i in ids])
    tie = np.diff(arrival) == 0
    assert np.all(np.diff(idx)[tie] > 0)
    assert np.array_equal(np.sort(idx), np.arange(len(idx)))
    on_time = delay <= BIG.allowed_lateness_ms
    assert delay.min() >= 0
    assert delay[on_time].max() <= BIG.disorder_ms
    assert delay[on_time].max() > 0.99 * BIG.disorder_ms  # the whole range is used
    # genuinely out of order in event time
    assert np.mean(np.diff(offset) < 0) > 0.2
    late = delay[~on_time]
    assert late.min() > BIG.allowed_lateness_ms + 999
    assert late.max() <= BIG.allowed_lateness_ms + 1000 + max(BIG.allowed_lateness_ms, 60_000)


def test_late_fraction_binomial(big):
    events, _ = big
    delay = events["arrival_ms"].to_numpy() - (events["event_time"].to_numpy() - DEFAULT_START_MS)
    n = len(delay)
    k = int(np.sum(delay > BIG.allowed_lateness_ms))
    assert _binomial_ok(k, n, BIG.late_fraction), (k, n)


def test_arrival_knobs_only_reorder_events():
    base = GeneratorConfig(rate=400, entities=100, duration_s=20, seed=6)
    ref, _ = generate_table(base)
    shuffled, _ = generate_table(
        GeneratorConfig(**{**base.__dict__, "disorder_ms": 2000, "late_fraction": 0.2})
    )
    assert not shuffled.equals(ref)

    def by_index(t: pa.Table) -> pa.Table:
        idx = np.array([int(i.split("-")[1]) for i in t["event_id"].to_pylist()])
        return t.take(pa.array(np.argsort(idx)))

    assert by_index(shuffled).equals(by_index(ref))


def test_no_disorder_means_event_time_order():
    cfg = GeneratorConfig(rate=500, entities=100, duration_s=30, seed=1, fraud_fraction=0)
    events, _ = generate_table(cfg, with_arrival=True)
    t = events["event_time"].to_numpy()
    assert np.all(np.diff(t) >= 0)
    np.testing.assert_array_equal(events["arrival_ms"].to_numpy(), t - DEFAULT_START_MS)
    assert events.num_rows == cfg.n_background == 15_000


# --- realism ---------------------------------------------------------------------------------


def test_volume_and_event_time_bursts(big):
    events, labels = big
    n_fraud = int(np.sum(labels["is_fraud"].to_numpy()))
    assert events.num_rows == BIG.n_background + n_fraud
    assert n_fraud <= 0.06 * BIG.n_background
    t = events["event_time"].to_numpy() - DEFAULT_START_MS
    per_s = np.bincount(t // 1000, minlength=300)
    assert abs(per_s.mean() - BIG.rate) < 0.06 * BIG.rate
    # overdispersed relative to a homogeneous Poisson process (variance == mean)
    assert per_s.var() > 5 * per_s.mean()
    assert per_s.max() > 2 * BIG.rate


def test_zipf_skew_cards_and_merchants(big):
    events, _ = big
    cards = events["card_id"].value_counts().field("counts").to_numpy()
    cards = np.sort(cards)[::-1]
    top = max(1, BIG.entities // 100)
    share = cards[:top].sum() / events.num_rows
    assert share > 0.25  # uniform would give 1 %
    merchants = np.sort(events["merchant_id"].value_counts().field("counts").to_numpy())[::-1]
    assert merchants[: max(1, BIG.n_merchants // 100)].sum() / events.num_rows > 0.15
    ids = events["card_id"].to_numpy(zero_copy_only=False)
    nums = np.array([int(c[1:]) for c in ids[:5000]])
    assert nums.min() >= 0 and nums.max() < BIG.entities


def test_devices_and_home_country(big):
    events, labels = big
    fraud_ids = set(np.asarray(labels["event_id"].to_numpy(zero_copy_only=False))[
        labels["is_fraud"].to_numpy(zero_copy_only=False)
    ])
    legit = events.filter(pa.array([e not in fraud_ids for e in events["event_id"].to_pylist()]))
    tbl = legit.select(["card_id", "device_id", "country"]).to_pandas()
    dev = tbl.groupby("card_id")["device_id"].nunique()
    assert dev.max() <= 4 and dev.mean() < 2.5
    busy = tbl.groupby("card_id").filter(lambda x: len(x) >= 200)
    home_share = busy.groupby("card_id")["country"].agg(lambda c: c.value_counts().iloc[0] / len(c))
    assert len(home_share) > 10 and home_share.median() > 0.9
    # a device belongs to one card (legit traffic)
    assert tbl.groupby("device_id")["card_id"].nunique().max() == 1


def test_amounts_log_normal_per_category(big):
    events, labels = big
    amounts = events["amount"].to_numpy()
    logs = np.log(amounts)
    assert 2.5 < np.median(logs) < 4.5  # median transaction tens of units
    assert np.percentile(amounts, 99) > 5 * np.median(amounts)  # heavy right tail
    by_m = events.select(["merchant_id", "amount"]).to_pandas().groupby("merchant_id")["amount"]
    med = by_m.median()[by_m.size() >= 100]
    assert med.max() / med.min() > 10  # categories differ


def test_card_testing_fraud_is_labelled_and_catchable(big):
    events, labels = big
    lab = labels.to_pandas()
    ev = events.to_pandas()
    assert set(lab["event_id"]) <= set(ev["event_id"])
    fraud = ev[ev["event_id"].isin(set(lab.loc[lab["is_fraud"], "event_id"]))]
    n_cards = round(BIG.fraud_fraction * BIG.entities)
    assert fraud["card_id"].nunique() == n_cards
    assert fraud["amount"].between(0.5, 5.0).all()
    per_card = fraud.groupby("card_id").agg(
        n=("event_id", "size"),
        span=("event_time", lambda x: x.max() - x.min()),
        merchants=("merchant_id", "nunique"),
    )
    assert per_card["n"].between(8, 40).all()
    assert (per_card["span"] <= 300_000).all()
    assert (per_card["merchants"] >= 0.7 * per_card["n"]).all()
    # merchants new to the card: the card rarely used them in its legit traffic
    legit = ev[~ev["event_id"].isin(set(fraud["event_id"]))]
    seen = set(zip(legit["card_id"], legit["merchant_id"]))
    new_share = np.mean([(c, m) not in seen for c, m in zip(fraud["card_id"], fraud["merchant_id"])])
    assert new_share > 0.9
    # mostly from a device the card never used legitimately, often abroad
    own = set(zip(legit["card_id"], legit["device_id"]))
    new_dev = np.mean([(c, d) not in own for c, d in zip(fraud["card_id"], fraud["device_id"])])
    assert new_dev > 0.5
    home = legit.groupby("card_id")["country"].agg(lambda c: c.value_counts().index[0])
    abroad = np.mean([home.get(c) != k for c, k in zip(fraud["card_id"], fraud["country"])])
    assert abroad > 0.3


def test_labels_timing_and_sampling(big):
    events, labels = big
    lab = labels.to_pandas().merge(
        events.select(["event_id", "event_time"]).to_pandas(), on="event_id", how="left"
    )
    assert lab["event_time"].notna().all() and lab["event_id"].is_unique
    delay = lab["label_time"] - lab["event_time"]
    pos, neg = delay[lab["is_fraud"]], delay[~lab["is_fraud"]]
    assert len(pos) > 0 and len(neg) > 0
    assert pos.min() >= HOUR and pos.max() <= 21 * DAY
    assert neg.min() >= DAY and neg.max() <= 3 * DAY
    assert 12 * HOUR < pos.median() < 72 * HOUR
    n_legit = events.num_rows - len(pos)
    assert _binomial_ok(len(neg), n_legit, BIG.negative_label_fraction)


def test_fraud_off_and_tiny_runs():
    ev, lab = generate_table(
        GeneratorConfig(rate=300, entities=50, duration_s=10, seed=0, fraud_fraction=0, labels=True)
    )
    assert ev.num_rows == 3000 and not any(lab["is_fraud"].to_pylist())
    ev, lab = generate_table(GeneratorConfig(rate=0.1, entities=1, duration_s=0.5, seed=0, labels=True))
    assert ev.num_rows == 0 and lab.num_rows == 0 and ev.schema == EVENT_SCHEMA
    ev, _ = generate_table(GeneratorConfig(rate=50, entities=1, duration_s=2.5, seed=0, merchants=1))
    assert ev.num_rows == 125 and set(ev["merchant_id"].to_pylist()) == {"m0"}
    assert list(generate(GeneratorConfig(rate=1, entities=1, duration_s=0.1, seed=0))) == []


# --- validation and helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"rate": 0},
        {"rate": float("inf")},
        {"entities": 0},
        {"entities": 2.5},
        {"duration_s": 0},
        {"seed": -1},
        {"late_fraction": 1.5},
        {"fraud_fraction": -0.1},
        {"disorder_ms": -1},
        {"disorder_ms": 400_000},  # > allowed_lateness_ms: on-time events would be late
        {"merchants": 0},
        {"start_ms": 1.5},
    ],
)
def test_config_validation(bad):
    base = dict(rate=10, entities=10, duration_s=1, seed=0)
    with pytest.raises(ConfigError):
        GeneratorConfig(**{**base, **bad})


def test_config_is_frozen_and_normalises_numpy_scalars():
    cfg = GeneratorConfig(rate=np.float32(10), entities=np.int64(10), duration_s=1, seed=np.int32(7))
    assert type(cfg.entities) is int and type(cfg.seed) is int and type(cfg.rate) is float
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ConfigError):
        next(generate(cfg, batch_rows=0))


@settings(max_examples=50, deadline=None)
@given(
    st.text(alphabet="abcxyz-_0123456789", max_size=6),
    st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=40),
)
def test_format_ids_matches_python(prefix, nums):
    got = g._format_ids(prefix, np.array(nums, dtype=np.int64))
    assert got.type == pa.string()
    assert got.to_pylist() == [f"{prefix}{n}" for n in nums]
