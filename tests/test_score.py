"""Scoring consumer against the real broker and redis-server.

Features come the cheap way: tiles built with ``ir`` from known events (``tile_records``) are
written with the real ``TileWriter``; the scorer's clock is pinned so an independent ``fetch`` at
the same ``t`` gives the reference matrix. Models are real registry versions (logistic
regressions in the dense executor's format)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis as redis_lib

from headwater.config import load_repo
from headwater.repo_schemas import codec_for
from headwater.topics import create_topics
from online_store import TileWriter, fetch
from scoring.models.dense import DenseModel
from scoring.registry import Registry, feature_hashes
from scoring.errors import ScoreConfigError
from scoring.service import ScoreOptions, build
from streamjobs.repo import load_definitions

try:
    from test_online_store import drop_project, progress_record, tile_records
except ModuleNotFoundError:
    from tests.test_online_store import drop_project, progress_record, tile_records

pytestmark = pytest.mark.integration

REFS = ("card_velocity:txn_count_10m", "card_velocity:amount_sum_1h", "card_velocity:amount_mean_1h",
        "card_velocity:amount_max_1d", "merchant_activity:merchant_txn_count_1h",
        "card_velocity:merchant_id_distinct_count_10m")  # a distinct count arrives as Python ints
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def env(stack, temp_repo: Path):
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    plan = load_definitions(repo).plan
    rds = redis_lib.Redis.from_url(stack.redis_url)
    now = int(time.time() * 1000)
    rng = np.random.default_rng(1)
    events = []
    for i in range(400):  # 40 cards, 10 merchants, the last 50 minutes
        t = now - int(rng.integers(5_000, 3_000_000))
        events.append({"card_id": f"c{i % 40}", "merchant_id": f"m{i % 10}", "amount": float(rng.gamma(2, 30)),
                       "country": "DE", "event_time_ms": t, "append_time_ms": t + 100, "partition": i % 3,
                       "offset": i})
    writer = TileWriter(rds, repo.project, plan, source_partitions={v.name: 3 for v in plan.views})
    for vp in plan.views:
        writer.write(tile_records(vp, events))
        writer.write([progress_record(vp, p, now - 1000) for p in range(3)])
    yield {"repo": repo, "path": temp_repo, "plan": plan, "rds": rds, "now": now, "stack": stack}
    drop_project(rds, repo.project)
    rds.close()


def register(env: dict, name: str, seed: int, *, threshold: float | None = 0.5, refs=REFS, broken=False,
             plan=None) -> Any:
    rng = np.random.default_rng(seed)
    k = len(refs)
    model = DenseModel(impute=rng.normal(size=k), mean=rng.normal(size=k) * 10, scale=rng.uniform(1, 50, k),
                       layers=((rng.normal(size=(k, 1)), rng.normal(size=1)),))

    def write(d: Path) -> None:
        model.save(d)
        if broken:  # a version whose weights do not fit its features: the executor raises on predict
            np.savez(d / "dense.npz", impute=np.zeros(k), mean=np.zeros(k), scale=np.ones(k),
                     W0=np.ones((k + 1, 1)), b0=np.zeros(1))

    reg = Registry.for_repo(env["repo"])
    meta = reg.register(name, "logreg", refs, write, feature_hashes=feature_hashes(plan or env["plan"], refs),
                        threshold=threshold)
    return model, meta


def produce(env: dict, records: list[dict] | None = None, raw: list[bytes | None] = ()) -> list[str]:
    from confluent_kafka import Producer
    codec = codec_for(env["repo"], "events")
    p = Producer({"bootstrap.servers": env["stack"].bootstrap_servers, "linger.ms": 5})
    for r in records or []:
        p.produce(env["repo"].topics.events.name, codec.encode(r), r["card_id"].encode())
    for v in raw:
        p.produce(env["repo"].topics.events.name, v, b"k")
    assert p.flush(30) == 0
    return [r["event_id"] for r in records or []]


def transactions(n: int, now: int, cards: int = 60) -> list[dict]:
    return [{"event_id": f"e{i}-{uuid.uuid4().hex[:6]}", "card_id": f"c{i % cards}", "merchant_id": f"m{i % 13}",
             "device_id": "d", "amount": 10.0 + i, "currency": "EUR", "country": "DE", "event_time": now - 10}
            for i in range(n)]


def read_topic(env: dict, role: str, n: int, timeout_s: float = 30.0, committed: bool = True) -> list[dict]:
    """Up to ``n`` decoded records of a topic role (read_committed), with headers as ``_headers``."""
    from confluent_kafka import Consumer
    codec = codec_for(env["repo"], role)
    c = Consumer({"bootstrap.servers": env["stack"].bootstrap_servers, "group.id": f"read-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
    c.subscribe([getattr(env["repo"].topics, role).name])
    out: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    rec = codec.decode(m.value())
                    rec["_headers"] = dict(m.headers() or [])
                    out.append(rec)
        extra_until = time.monotonic() + 1.0  # anything beyond n is a duplicate: look for it briefly
        while time.monotonic() < extra_until:
            out += [dict(codec.decode(m.value()), _headers={}) for m in c.consume(1000, 0.2) if m.error() is None]
    finally:
        c.close()
    return out


def loop_for(env: dict, opts: ScoreOptions, captured: list | None = None):
    now_s = env["now"] / 1000.0
    on_batch = captured.append if captured is not None else None
    return build(env["path"], opts, redis=env["rds"], clock=lambda: now_s, on_batch=on_batch)


def reference_scores(env: dict, model: DenseModel, cards: list[str], merchants: list[str], refs=REFS) -> np.ndarray:
    """Independent fetch at the pinned t and the model's maths written out in float64."""
    res = fetch(env["rds"], env["repo"].project, env["plan"], {"card": cards, "merchant": merchants}, refs,
                at_ms=env["now"])
    X = np.empty((len(cards), len(refs)))
    for j, ref in enumerate(refs):
        v, null = res.numpy(ref)
        X[:, j] = np.where(null, np.nan, v.astype(np.float64))
    X = np.where(np.isnan(X), model.impute, X)
    (w, b), = model.layers
    z = ((X - model.mean) / model.scale) @ w + b
    return 1 / (1 + np.exp(-z[:, 0]))


def move_after_first_batch(reg: Registry, version: int) -> tuple[list[int], Any]:
    """An ``on_batch`` that moves fraud's champion to ``version`` once the first batch is scored;
    the list gets each batch's prediction count."""
    moved: list[int] = []

    def on_batch(out: Any) -> None:
        moved.append(len(out.predictions))
        if len(moved) == 1:
            reg.set_alias("fraud", "champion", version)

    return moved, on_batch


# ---------------------------------------------------------------- tests


def test_every_event_scored_once_with_shadows_and_reference_scores(env: dict) -> None:
    prod, meta = register(env, "fraud", 1)
    sh1, _ = register(env, "fraud_a", 2, threshold=None)
    sh2, _ = register(env, "fraud_b", 3)
    recs = transactions(500, env["now"])
    ids = produce(env, recs)
    import socket
    import urllib.request
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop, scorer = loop_for(env, ScoreOptions(model="fraud", shadows=("fraud_a", "fraud_b"), device="cpu",
                                              max_batch=128, feature_log_rate=1.0, metrics_port=port))
    stats = loop.run(max_events=500, idle_timeout_s=20)
    assert stats.events == 500 and stats.predictions == 500 and stats.dead_letters == 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "headwater_score_events_total 500.0" in text
    assert 'headwater_score_predictions_total{model="fraud",version="1"} 500.0' in text
    assert "headwater_score_consume_to_produce_seconds_count 500.0" in text
    assert 'headwater_score_shadow_abs_diff_count{shadow="fraud_a"} 500.0' in text
    assert 'headwater_score_feature_freshness_seconds_count{view="card_velocity"} 500.0' in text
    for stage in ("decode", "fetch", "score", "produce"):
        assert f'headwater_score_stage_seconds_count{{stage="{stage}"}}' in text
    preds = read_topic(env, "predictions", 500)
    shadows = read_topic(env, "shadow", 1000)
    assert sorted(p["event_id"] for p in preds) == sorted(ids)  # exactly N, each once
    assert len(shadows) == 1000 and {(s["event_id"], s["model_name"]) for s in shadows} == {
        (i, m) for i in ids for m in ("fraud_a", "fraud_b")}
    by_id = {r["event_id"]: r for r in recs}
    cards = [by_id[p["event_id"]]["card_id"] for p in preds]
    merchants = [by_id[p["event_id"]]["merchant_id"] for p in preds]
    got = np.array([p["score"] for p in preds])
    np.testing.assert_allclose(got, reference_scores(env, prod, cards, merchants), rtol=2e-5, atol=1e-6)
    sh = {(s["event_id"], s["model_name"]): s for s in shadows}
    np.testing.assert_allclose([sh[(p["event_id"], "fraud_a")]["score"] for p in preds],
                               reference_scores(env, sh1, cards, merchants), rtol=2e-5, atol=1e-6)
    assert all(sh[(p["event_id"], "fraud_b")]["production_score"] == p["score"] for p in preds)
    for p, card, merchant in zip(preds, cards, merchants):
        assert p["model_name"] == "fraud" and p["model_version"] == "1"
        assert p["_headers"]["model_version"] == b"1"
        assert p["decision"] == (p["score"] >= 0.5)
        # every requested feature at its no-data value: only when neither card nor merchant has tiles
        assert p["no_features"] == (int(card[1:]) >= 40 and int(merchant[1:]) >= 10)
        assert p["features_as_of_ms"] == env["now"] - 1000
        assert {"decode", "fetch", "score"} <= set(p["latency"])
    logs = read_topic(env, "feature_log", 1000)
    assert len(logs) == 1000 and {r["event_id"] for r in logs} == set(ids)  # one per (event, view)
    assert any(p["no_features"] for p in preds) and not all(p["no_features"] for p in preds)


def test_a_second_scorer_joining_mid_backlog_takes_over_without_a_crash_or_a_gap(env: dict) -> None:
    """A rebalance while the first scorer holds a pipelined, unsettled batch: it settles and
    commits that batch while its partitions are still its own, and the two score every event."""
    import dataclasses
    import threading
    register(env, "fraud", 1)
    ids = produce(env, transactions(40_000, env["now"]))
    opts = ScoreOptions(model="fraud", device="cpu", max_batch=256, feature_log_rate=0.0)
    first, _ = loop_for(env, dataclasses.replace(opts, instance_id="a"))  # static members: one id each
    first.on_batch = lambda _out: time.sleep(0.1)  # slow enough to be mid-backlog when the second joins
    second, _ = loop_for(env, dataclasses.replace(opts, instance_id="b"))
    errors: list[BaseException] = []

    def run(loop) -> None:
        try:
            loop.run(idle_timeout_s=8)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    deadline = time.monotonic() + 60
    while first.stats.events < 2_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    threads.append(threading.Thread(target=run, args=(second,)))
    threads[1].start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert first.stats.events < len(ids) and second.stats.events > 0  # both scored: a rebalance happened
    got = [p["event_id"] for p in read_topic(env, "predictions", len(ids), timeout_s=60)]
    assert set(got) == set(ids)  # at-least-once: nothing skipped
    assert len(got) - len(ids) <= 2 * 256  # at most the batches in hand at the revoke scored twice


def test_every_dead_letter_reason(env: dict) -> None:
    register(env, "fraud", 1)
    codec = codec_for(env["repo"], "events")
    good = transactions(3, env["now"])
    body = codec.encode(good[0])
    raw = [b"", b"\x07garbage", body[:3], b"\x00\x00\x00\x7f\x7f" + body[5:], body + b"\x01",
           codec.encode(dict(good[1], card_id="")), codec.encode(dict(good[2], event_time=0))]
    produce(env, transactions(5, env["now"]), raw)
    loop, _ = loop_for(env, ScoreOptions(model="fraud", device="cpu", feature_log_rate=0.0))
    stats = loop.run(max_events=12, idle_timeout_s=20)
    assert stats.predictions == 5 and stats.dead_letters == 7
    dlq = read_topic(env, "dlq", 7)
    assert sorted(d["reason"] for d in dlq) == sorted(["empty", "bad_magic", "truncated", "unknown_schema_id",
                                                       "avro_error", "missing_entity_key", "bad_event_time"])
    assert {d["value"] for d in dlq} == set(raw)  # original bytes kept
    assert all(d["topic"] == env["repo"].topics.events.name and d["error"] for d in dlq)


def test_a_champion_with_other_features_brings_its_matrix_without_restart(env: dict) -> None:
    """v2 reads card features only, in another order: after the move the scorer fetches and
    assembles v2's matrix (and decodes only the card key), and its scores equal the reference."""
    register(env, "fraud", 1)
    card_refs = ("card_velocity:amount_sum_1h", "card_velocity:txn_count_10m", "card_velocity:amount_max_1d")
    v2, _ = register(env, "fraud", 2, refs=card_refs)
    reg = Registry.for_repo(env["repo"])
    recs = transactions(64, env["now"])
    produce(env, recs)
    moved, on_batch = move_after_first_batch(reg, 2)
    loop, scorer = build(env["path"], ScoreOptions(model="fraud", device="cpu", reload_s=0.0, feature_log_rate=0.0,
                                                   max_batch=8), redis=env["rds"], on_batch=on_batch,
                         clock=lambda: env["now"] / 1000.0)
    assert loop.run(max_events=64, idle_timeout_s=20).predictions == 64
    assert scorer.spec.refs == card_refs and scorer.key_fields == ["card_id"]
    by_id = {r["event_id"]: r for r in recs}
    later = [p for p in read_topic(env, "predictions", 64) if p["model_version"] == "2"]
    assert 0 < len(later) < 64
    cards = [by_id[p["event_id"]]["card_id"] for p in later]
    np.testing.assert_allclose([p["score"] for p in later], reference_scores(
        env, v2, cards, ["m0"] * len(cards), refs=card_refs), rtol=2e-5, atol=1e-6)


def test_model_error_dead_letters_the_batch_and_the_consumer_survives(env: dict, monkeypatch) -> None:
    register(env, "fraud", 1, broken=True)
    opts = ScoreOptions(model="fraud", device="cpu", feature_log_rate=0.0)
    with pytest.raises(ScoreConfigError, match="fraud@1 cannot score on cpu"):
        loop_for(env, opts)  # the start-up check scores one row; a model may still fail on some batches:
    monkeypatch.setattr("scoring.service._warm", lambda model, xp: None)  # that path, past the check
    ids = produce(env, transactions(20, env["now"]))
    loop, _ = loop_for(env, opts)
    stats = loop.run(max_events=20, idle_timeout_s=20)
    assert stats.events == 20 and stats.predictions == 0
    dlq = read_topic(env, "dlq", 20)
    events = codec_for(env["repo"], "events")
    assert sorted(events.decode(d["value"])["event_id"] for d in dlq) == sorted(ids)
    assert {(d["reason"], d["stage"]) for d in dlq} == {("model_error", "score")}


def test_skew_guard_refuses_to_start(env: dict) -> None:
    from dataclasses import replace
    from scoring.models.errors import SkewError
    other = replace(env["plan"], views=tuple(replace(v, allowed_lateness_ms=v.allowed_lateness_ms + 1000)
                                             for v in env["plan"].views))
    register(env, "fraud", 1, plan=other)
    with pytest.raises(SkewError, match="card_velocity:txn_count_10m"):
        loop_for(env, ScoreOptions(model="fraud", device="cpu"))


def _cli(env: dict, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "headwater.cli", "score", "--repo", str(env["path"]), "--model", "fraud",
           "--device", "cpu", "--feature-log-rate", "0", "--max-batch", "64", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(env: dict, role: str, n: int, timeout_s: float) -> None:
    from confluent_kafka import Consumer
    from headwater.kafka_offsets import watermarks
    c = Consumer({"bootstrap.servers": env["stack"].bootstrap_servers, "group.id": "x"})
    topic = getattr(env["repo"].topics, role).name
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            parts = c.list_topics(topic, timeout=5).topics[topic].partitions
            if sum(hi for _, hi in watermarks(c, topic, parts, 5).values()) >= n:
                return
            time.sleep(0.1)
    finally:
        c.close()
    raise AssertionError(f"fewer than {n} records on {role} after {timeout_s}s")


def test_exactly_once_survives_kill_9_without_duplicates(env: dict) -> None:
    register(env, "fraud", 1)
    ids = produce(env, transactions(6000, env["now"]))
    first = _cli(env, "--exactly-once", "--max-wait-ms", "5")
    try:
        _wait_for(env, "predictions", 300, 60)  # mid-stream (the topic counts aborted/open records too)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    second = _cli(env, "--exactly-once", "--idle-exit", "5")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    preds = read_topic(env, "predictions", len(ids), timeout_s=30)
    got = [p["event_id"] for p in preds]
    assert len(got) == len(set(got)) == len(ids) and set(got) == set(ids)


def test_sigterm_finishes_the_batch_commits_and_exits(env: dict) -> None:
    register(env, "fraud", 1)
    ids = produce(env, transactions(6000, env["now"]))
    first = _cli(env)
    _wait_for(env, "predictions", 300, 60)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=30)
    assert first.returncode == 0 and "stopped:" in out, out
    done = int(out.split("stopped: ")[1].split(" events")[0].replace(",", ""))
    second = _cli(env, "--idle-exit", "5")
    out2, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out2
    preds = read_topic(env, "predictions", len(ids))
    got = [p["event_id"] for p in preds]
    # a clean stop commits exactly what it produced: the restart neither skips nor repeats an event
    assert 0 < done < len(ids) and len(got) == len(set(got)) == len(ids)


def test_gpu_device_without_gpu_is_a_one_line_error(env: dict) -> None:
    from scoring.xp import gpu_available
    if gpu_available():
        pytest.skip("a GPU is present: covered by test_gpu_scores_equal_cpu")
    register(env, "fraud", 1)
    p = _cli(env, "--device", "gpu")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2 and out.strip().count("\n") == 0 and "gpu" in out, out


def test_gpu_scores_equal_cpu(env: dict) -> None:
    pytest.importorskip("cupy")
    from scoring.xp import gpu_available
    if not gpu_available():
        pytest.skip("no CUDA GPU")
    import cupy
    from scoring.features import MatrixSpec, assemble
    prod, meta = register(env, "fraud", 1)
    model = Registry.for_repo(env["repo"]).load("fraud")
    spec = MatrixSpec.probe(env["rds"], env["repo"].project, env["plan"], REFS)
    res = fetch(env["rds"], env["repo"].project, env["plan"], {"card": ["c1", "c99"], "merchant": ["m1", "m2"]},
                REFS, at_ms=env["now"])
    cpu = model.predict(assemble(res, spec, np)[0], np)
    gpu = cupy.asnumpy(model.predict(assemble(res, spec, cupy)[0], cupy))
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)


def test_canary_routes_by_entity_hash_and_alias_moves_apply_without_restart(env: dict) -> None:
    from scoring.scorer import canary_mask
    register(env, "fraud", 1)
    register(env, "fraud", 2)  # version 2 of the same model
    reg = Registry.for_repo(env["repo"])
    reg.set_alias("fraud", "challenger", 2)
    recs = transactions(200, env["now"])
    ids = produce(env, recs)
    loop, scorer = loop_for(env, ScoreOptions(model="fraud@champion", device="cpu", canary_percent=30.0,
                                              feature_log_rate=0.0, max_batch=200))
    assert loop.run(max_events=200, idle_timeout_s=20).predictions == 200
    preds = {p["event_id"]: p for p in read_topic(env, "predictions", 200)}
    cards = [r["card_id"] for r in recs]
    want = canary_mask(cards, 30.0)
    assert [preds[i]["model_version"] == "2" for i in ids] == want.tolist() and 0 < want.sum() < 200

    # alias move while running: after the first batch champion -> 2, canary off; later batches follow
    reg.set_alias("fraud", "champion", 2)
    more = produce(env, transactions(64, env["now"]))
    moved, on_batch = move_after_first_batch(reg, 1)
    loop2, _ = build(env["path"], ScoreOptions(model="fraud", device="cpu", canary_percent=0.0, reload_s=0.0,
                                                feature_log_rate=0.0, max_batch=8),  # same group: resumes
                     redis=env["rds"], on_batch=on_batch)
    loop2.run(max_events=64, idle_timeout_s=20)
    versions = [p["model_version"] for p in read_topic(env, "predictions", 200 + 64) if p["event_id"] in more]
    # the move happens when the first batch is settled; the batch already scored by then (the flush
    # is pipelined: at most max_batch=8 events) still ran on version 2, every later one on version 1
    assert len(versions) == 64 and moved[0] <= versions.count("2") <= moved[0] + 8 and versions.count("1") > 0
