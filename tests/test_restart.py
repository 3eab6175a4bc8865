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

import pytest

from headwater.generator import GeneratorConfig, generate_table
from headwater.repo_schemas import codec_for
from streamjobs.job import checkpoint_dir, latest_checkpoint
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
