"""`headwater produce` and read-back against the real broker, plus CLI error handling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwater import produce
from headwater.generator import GeneratorConfig
from headwater.topics import create_topics
from headwater.config import load_repo


@pytest.mark.integration
def test_produce_and_read_back_every_event(stack, temp_repo):
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    cfg = GeneratorConfig(rate=5000, entities=200, duration_s=1.0, seed=7, labels=True,
                          disorder_ms=500)
    out = produce.to_kafka(temp_repo, cfg, pace=False, quiet=True)
    assert out["events"] >= 4000 and out["labels"] > 0
    recs = list(produce.read_back(temp_repo, "events", out["events"], timeout_s=30))
    assert len(recs) == out["events"]
    assert len({r["event_id"] for r in recs}) == out["events"]
    # LogAppendTime: the broker stamps arrival, never earlier than the event time we set
    assert all(r["_timestamp_ms"] >= r["event_time"] for r in recs)
    labels = list(produce.read_back(temp_repo, "labels", out["labels"], timeout_s=30))
    assert len(labels) == out["labels"] and {l["event_id"] for l in labels} <= {r["event_id"] for r in recs}


@pytest.mark.integration
def test_paced_produce_keeps_intended_lateness(stack, temp_repo):
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    cfg = GeneratorConfig(rate=400, entities=50, duration_s=1.0, seed=3, disorder_ms=200)
    out = produce.to_kafka(temp_repo, cfg, pace=True, quiet=True)
    recs = list(produce.read_back(temp_repo, "events", out["events"], timeout_s=30))
    delays = [r["_timestamp_ms"] - r["event_time"] for r in recs]
    assert len(recs) == out["events"]
    assert min(delays) >= 0 and max(delays) < 200 + 1500  # generator delay + produce jitter


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headwater.cli", *args], capture_output=True, text=True)


def test_cli_bad_repo_is_one_line():
    r = _cli("topics", "create", "--repo", "/nonexistent")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "headwater.yaml" in r.stderr and "--repo" in r.stderr


def test_cli_bad_generator_args_are_one_line(tmp_path):
    r = _cli("produce", "--repo", "examples/fraud", "--rate", "-5", "--parquet", str(tmp_path / "x.parquet"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "rate" in r.stderr


def test_cli_unknown_subcommand_usage():
    r = _cli("nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_produce_to_parquet_via_cli(tmp_path):
    import pyarrow.parquet as pq
    path = tmp_path / "events.parquet"
    r = _cli("produce", "--repo", "examples/fraud", "--rate", "1000", "--duration", "2", "--seed", "1",
             "--parquet", str(path))
    assert r.returncode == 0, r.stderr
    t = pq.read_table(path)
    assert t.num_rows >= 1500
    assert set(t.column_names) >= {"event_id", "card_id", "merchant_id", "amount", "event_time"}
