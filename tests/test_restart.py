"""Kill the streaming features job mid-stream, restart it from its checkpoint: the final tiles
equal a clean computation (ir.update over every on-time event, proven equal to a clean Flink
run by test_pipeline_conformance). Tile writes are whole-IR upserts, so events replayed after
the restore are not double counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from headwater.generator import GeneratorConfig, generate_table
from headwater.repo_schemas import codec_for
from online_store import keys
from streamjobs import compiler
from streamjobs.job import checkpoint_dir, latest_checkpoint, newest_checkpoint
from streamjobs.repo import load_definitions
from tests.pipeline import assert_tiles_equal, read_tiles, setup

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def _produce(conn, repo, table, origin_ms, arrival):
    from confluent_kafka import Producer
    codec = codec_for(repo, "events")
    offsets = {}
    p = Producer({"bootstrap.servers": conn.bootstrap_servers, "linger.ms": 5})
    for i, rec in enumerate(table.to_pylist()):
        def cb(err, msg, i=i):
            assert err is None
            offsets[i] = (msg.partition(), msg.offset())
        p.produce(repo.topics.events.name, codec.encode(rec), rec["card_id"].encode(),
                  timestamp=int(origin_ms + arrival[i]), on_delivery=cb)
    assert p.flush(60) == 0
    return offsets


def _start(repo_dir):
    return subprocess.Popen([sys.executable, "-m", "headwater.cli", "features", "run", "--repo", str(repo_dir),
                             "--no-writer"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _progress_total(conn, repo, view):
    tiles = read_tiles(conn, repo)
    return sum(r["n_events"] for k, r in tiles.items() if k[0] == view and k[2] == 0)


def test_kill_and_restore_from_checkpoint_gives_clean_tiles(stack, temp_repo):
    repo = setup(stack, temp_repo)
    defs = load_definitions(repo)
    cfg = GeneratorConfig(rate=400, entities=60, duration_s=20, seed=11, disorder_ms=3000, late_fraction=0.02)
    events, _ = generate_table(cfg, with_arrival=True)
    arrival = events.column("arrival_ms").to_pylist()
    events = events.drop(["arrival_ms"])
    half = events.num_rows // 2
    offsets = _produce(stack, repo, events.slice(0, half), cfg.origin_ms, arrival[:half])

    ckpt = checkpoint_dir(repo.project)
    proc = _start(temp_repo)
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(ckpt) is None or _progress_total(stack, repo, "card_velocity") < half:
            assert proc.poll() is None, "features job exited early"
            assert time.monotonic() < deadline, "no checkpoint / progress within 240 s"
            time.sleep(2)
    finally:
        _kill(proc)  # mid-stream: no clean shutdown, no final checkpoint

    rest = _produce(stack, repo, events.slice(half), cfg.origin_ms, arrival[half:])
    offsets.update({half + i: po for i, po in rest.items()})
    proc = _start(temp_repo)
    try:
        deadline = time.monotonic() + 240
        while _progress_total(stack, repo, "card_velocity") < events.num_rows:
            assert proc.poll() is None, "restarted features job exited early"
            assert time.monotonic() < deadline, "restarted job did not catch up within 240 s"
            time.sleep(2)
        time.sleep(2)  # let the last mini-batch of tiles land
    finally:
        _kill(proc, signal.SIGTERM)

    recs = events.to_pylist()
    for i, r in enumerate(recs):
        r["partition"], r["offset"] = offsets[i]
        r["event_time_ms"], r["append_time_ms"] = r["event_time"], cfg.origin_ms + arrival[i]
    tiles = read_tiles(stack, repo)
    for vp in defs.plan.views:
        assert_tiles_equal(vp, tiles, recs)


SHORT_VIEW = """
from pathlib import Path
from streamjobs.dsl import Aggregation, Entity, FeatureView, Source

HERE = Path(__file__).resolve().parent
transactions = Source("transactions", topic="events", schema=HERE / "schemas" / "transaction.avsc",
                      event_time_field="event_time")
card_5m = FeatureView(name="card_5m", entity=Entity("card", key="card_id"), source=transactions,
                      aggregations=(Aggregation("count", "amount", windows=("5m",)),
                                    Aggregation("sum", "amount", windows=("5m",))),
                      allowed_lateness="2s", allowed_future="0s", ttl="10m")
VIEWS = [card_5m]
"""


def _wait(proc, stack, repo, view, n, what, until=lambda: True, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while _progress_total(stack, repo, view) < n or not until():
        assert proc.poll() is None, f"{what}: the features job exited early"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(1)


def test_a_restore_after_an_outage_longer_than_the_state_ttl_keeps_open_tiles(stack, temp_repo):
    """Flink counts STATE_TTL in processing time, so an outage longer than a tile's TTL would let
    the restored job restart the tiles it had open from nothing; the restored run extends the TTL
    by the downtime (``compiler.state_ttl_ms``). A 5 m window with 2 s lateness (none ahead) gives its 10 s
    tiles an 84 s TTL and 312 s of retention: the job stops after the first half of the events
    (all in one 10 s tile, the halves in different 1 s tiles, so no 1 s tile spans the outage),
    stays down well past 84 s, and the second half lands in that open 10 s tile."""
    (temp_repo / "features.py").write_text(SHORT_VIEW)
    repo = setup(stack, temp_repo)
    defs = load_definitions(repo)
    (vp,) = defs.plan.views
    assert compiler.state_ttl_ms(vp, 10_000) == 84_000 and keys.retention_ms(vp)[10_000] > 200_000
    cfg = GeneratorConfig(rate=100, entities=20, duration_s=4, seed=5)
    events = generate_table(cfg)[0].to_pylist()
    t0 = cfg.origin_ms - cfg.origin_ms % 10_000
    half = len(events) // 2
    arrival = []
    for i, r in enumerate(events):  # first half in [t0, t0 + 5 s), second in [t0 + 5 s, t0 + 10 s); on time
        r["event_time"] = t0 + (0 if i < half else 5000) + (i % half) * 4900 // half
        arrival.append(r["event_time"] + i % 1500 - t0)
    table = pa.Table.from_pylist(events, schema=generate_table(cfg)[0].schema)
    offsets = _produce(stack, repo, table.slice(0, half), t0, arrival[:half])

    proc = _start(temp_repo)
    try:
        _wait(proc, stack, repo, vp.name, half, "first half")
        done = time.time()
        ckpt = checkpoint_dir(repo.project)
        _wait(proc, stack, repo, vp.name, half, "a checkpoint after the first half",  # triggered after it too
              until=lambda: (newest_checkpoint(ckpt) or (None, 0.0))[1] > done + 6)
    finally:
        _kill(proc)
    time.sleep(80)  # down: the 10 s tile's state last written > 84 s before the restored job reads it

    rest = _produce(stack, repo, table.slice(half), t0, arrival[half:])
    offsets.update({half + i: po for i, po in rest.items()})
    proc = _start(temp_repo)
    try:
        _wait(proc, stack, repo, vp.name, len(events), "restored job catching up")
        time.sleep(2)  # let the last mini-batch of tiles land
    finally:
        _kill(proc, signal.SIGTERM)

    for i, r in enumerate(events):
        r["partition"], r["offset"] = offsets[i]
        r["event_time_ms"], r["append_time_ms"] = r["event_time"], t0 + arrival[i]
    assert_tiles_equal(vp, read_tiles(stack, repo), events)
