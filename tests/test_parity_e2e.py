"""Parity end to end on the real stack: ~10 min of event time (disorder + late events) produced in
phases (compressed wall clock, CreateTime = the generator's arrival times) into Kafka, the
streaming features job + writer (``headwater features run``) into Redis db 12, logged fetches of
every card and merchant at several t between phases and after the stream, a replay, then
``parity``: 0 unexplained mismatches, and the explained ones are exactly fetches whose window
holds an on-time event appended after the fetch's as_of (brute force over the generated events).
Then ``online rebuild`` into a flushed db 12 gives parity 100 %.

Only db 12 is ever flushed (never db 0, which other tests share).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from backfill.parity import check
from headwater.generator import GeneratorConfig, generate_table
from headwater.repo_schemas import codec_for
from online_store import fetch, feature_log, rebuild
from streamjobs import windows
from streamjobs.repo import load_definitions
from tests.pipeline import setup

pytestmark = [pytest.mark.integration, pytest.mark.flink]

DB12 = "redis://127.0.0.1:6379/12"
PHASES_S = (200, 400, 10_000)  # arrival offsets ending each production phase (last: everything)


def _produce(conn, repo, rows, origin_ms):
    from confluent_kafka import Producer
    codec = codec_for(repo, "events")
    meta = []
    p = Producer({"bootstrap.servers": conn.bootstrap_servers, "linger.ms": 5})
    for rec in rows:
        ts = int(origin_ms + rec.pop("arrival_ms"))

        def cb(err, msg, rec=rec, ts=ts):
            assert err is None, err
            meta.append({**rec, "partition": msg.partition(), "offset": msg.offset(), "append_ms": ts})
        p.produce(repo.topics.events.name, codec.encode(rec), rec["card_id"].encode(), timestamp=ts, on_delivery=cb)
        p.poll(0)
    assert p.flush(60) == 0
    return meta


def _as_of(rds, repo, plan):
    from online_store import keys
    out = []
    for v in plan.views:
        raw = rds.hget(keys.progress_key(repo.project, v), keys.AS_OF_FIELD)
        out.append(None if raw is None else int(raw))
    return out


def _wait_as_of(rds, repo, plan, target, proc, log, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while True:
        got = _as_of(rds, repo, plan)
        if all(a is not None and a >= target for a in got):
            return got
        if proc.poll() is not None:
            text = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.lstrip().startswith("at ")]
            pytest.fail("features job exited:\n" + "\n".join(ln for ln in text if "rror" in ln or "xception" in ln)[-4000:])
        assert time.monotonic() < deadline, f"as_of {got} did not reach {target} in {timeout_s}s"
        time.sleep(1)


def _oracle_late(events, vp, f, entity, t, as_of):
    """Brute force from DESIGN: on-time events of ``entity`` in the window at t appended after as_of."""
    lo, hi = windows.window_bounds(t, f.window_ms, f.hop_ms, vp.tick_ms)
    return {(e["partition"], e["offset"]) for e in events
            if e[vp.entity_key] == entity and lo <= e["event_time"] < hi and e["append_ms"] > as_of
            and e["append_ms"] - e["event_time"] <= vp.allowed_lateness_ms
            and e["event_time"] - e["append_ms"] <= vp.allowed_future_ms}



def stop_job(proc) -> None:
    """SIGTERM the features job's process group (job + writer) and wait for it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)

def test_parity_end_to_end_then_rebuild(stack, temp_repo: Path, tmp_path: Path):
    from replay import run_replay

    t_start = time.monotonic()
    conn = stack.copy_with(redis_url=DB12)
    repo = setup(stack, temp_repo)
    plan = load_definitions(repo).plan
    cfg = GeneratorConfig(rate=10, entities=40, duration_s=600, seed=5, disorder_ms=5_000, late_fraction=0.02)
    table, _ = generate_table(cfg, with_arrival=True)
    rows = table.to_pylist()
    rds = redis_lib.Redis.from_url(DB12)
    env = {**os.environ, "HEADWATER_REDIS_URL": DB12}
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli", "features", "run", "--repo", str(temp_repo)],
                            env=env, stdout=(tmp_path / "features.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    cards = sorted({r["card_id"] for r in rows})
    merchants = sorted({r["merchant_id"] for r in rows})
    ids = {"card": cards, "merchant": [merchants[i % len(merchants)] for i in range(len(cards))]}
    writer = feature_log.FeatureLogWriter.for_repo(conn, repo)
    produced, logged, lo = [], 0, 0
    try:
        for end_s in PHASES_S:
            batch = [dict(r) for r in rows if lo <= r["arrival_ms"] < end_s * 1000]
            lo = end_s * 1000
            meta = _produce(stack, repo, batch, cfg.origin_ms)
            produced += meta
            last = {}
            for m in produced:
                last[m["partition"]] = max(last.get(m["partition"], 0), m["append_ms"])
            # as_of stops a ms below the newest append on a CreateTime topic (no idleness rule): records
            # after the last one read could share its time
            _wait_as_of(rds, repo, plan, min(last.values()) - 1, proc, tmp_path / "features.log")
            head = max(last.values())
            for t in (head + 1, head - 20_000 + 337, head - 61_500):  # several t behind the stream's head
                res = fetch(rds, repo.project, plan, ids, None, at_ms=t)
                logged += writer.write(feature_log.records(res, plan))
        writer.flush()
    finally:
        stop_job(proc)
    said = (tmp_path / "features.log").read_text(errors="replace")
    assert "stopping: cancelling the Flink job" in said and "Traceback" not in said, said[-3000:]  # a clean stop
    t_stream = time.monotonic()

    tiles = tmp_path / "tiles"
    run_replay(repo, tiles, conn=stack, progress=None)
    t_replay = time.monotonic()
    report = check(repo, feature_log="topic", tiles=tiles, conn=stack, say=lambda _m: None)
    t_check = time.monotonic()
    report.write_html(tmp_path / "parity.html")
    print(report.table())
    print(f"timings: stream+fetch {t_stream - t_start:.0f}s, replay {t_replay - t_stream:.0f}s, "
          f"parity {t_check - t_replay:.1f}s for {report.n_fetches} fetches ({report.fetches_per_s:.0f} fetches/s)")
    assert report.n_fetches == logged == 3 * 3 * 2 * len(cards)
    assert not report.unexplained, report.table()

    # the explained mismatches are exactly those the brute force says may differ, and they do occur
    by_ref = {fr.ref: (plan.view(fr.view), fr.feature) for fr in plan.features_by_ref([f"{v.name}:*" for v in plan.views])}
    for c in report.checks:
        vp, f = by_ref[c.ref]
        want = _oracle_late(produced, vp, f, c.entity, c.t_ms, c.as_of_ms) if c.kind != "match" else None
        if c.kind != "match":
            assert {(e.partition, e.offset) for e in c.late} == want and want, c
    assert report.late, "no fetch lacked a later append: the late path was not exercised"
    late_events = {(e.partition, e.offset) for c in report.late for e in c.late}
    assert all(any(m["partition"] == p and m["offset"] == o and m["append_ms"] > min(c.as_of_ms for c in report.late)
                   for m in produced) for p, o in late_events)

    # online rebuild into a flushed private db: every value equals the offline recompute
    rds.flushdb()
    rebuild(conn, repo, plan)
    head = max(m["append_ms"] for m in produced)
    res = fetch(rds, repo.project, plan, ids, None, at_ms=head + 1)
    assert res.min_as_of_ms == min(last.values()) - 1  # rebuilt progress: a ms below each newest append
    rebuilt = check(repo, feature_log=feature_log.to_table(feature_log.records(res, plan)), tiles=tiles, conn=stack,
                    say=lambda _m: None)
    assert rebuilt.ok and not rebuilt.late, rebuilt.table()
    assert sum(f.exact for f in rebuilt.features) == len(rebuilt.checks) > 0
    rds.flushdb()
    rds.close()


def test_parity_now_on_a_live_stream(stack, temp_repo: Path, tmp_path: Path):
    """``parity --now``: a paced (LogAppendTime) stream, the features job + writer (db 12), then
    sample recent entities, fetch now with logging, replay, check: 0 unexplained mismatches."""
    from backfill.parity_cli import check_now
    from headwater import produce
    from headwater.config import load_repo
    from headwater.topics import create_topics

    conn = stack.copy_with(redis_url=DB12)
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    plan = load_definitions(repo).plan
    env = {**os.environ, "HEADWATER_REDIS_URL": DB12}
    log = tmp_path / "features.log"
    proc = subprocess.Popen([sys.executable, "-m", "headwater.cli", "features", "run", "--repo", str(temp_repo)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    rds = redis_lib.Redis.from_url(DB12)
    try:
        out = produce.to_kafka(temp_repo, GeneratorConfig(rate=100, entities=30, duration_s=15, seed=3,
                                                          disorder_ms=1_000), pace=True, quiet=True)
        ended = int(time.time() * 1000)
        # every partition caught up and idle: as_of passes the stream's end (the idleness rule; the
        # features job's progress carries MAX(offset) + 1), not the quietest partition's last event
        _wait_as_of(rds, repo, plan, ended, proc, log, timeout_s=60)
        assert out["events"] > 1000
        report = check_now(repo, sample=25, tiles=tmp_path / "tiles", conn=conn, say=lambda _m: None)
    finally:
        stop_job(proc)
    print(report.table())
    assert report.n_fetches == 50 and report.ok, report.table()
    assert sum(f.exact for f in report.features) + len(report.late) == len(report.checks)
    assert any(c.online not in (0, None) for c in report.checks)  # real values, not only no-data
    from online_store import keys
    ks = list(rds.scan_iter(match=keys.project_pattern(repo.project), count=1000))
    if ks:
        rds.delete(*ks)
    rds.close()
