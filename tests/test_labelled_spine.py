"""`headwater spine`: labelled events from the real events and labels topics, against a
brute-force join written here from the module's rules (first copy of an event, latest label),
and the dedupe rules alone on tables (ties, null label times)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from headwater.config import load_repo

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000


def _events_and_labels(rng: random.Random, n: int):
    events = [{"event_id": f"e{i}", "card_id": f"c{rng.randrange(20)}", "merchant_id": f"m{rng.randrange(5)}",
               "device_id": "d1", "amount": round(rng.uniform(1, 500), 2), "currency": "EUR", "country": "DE",
               "event_time": T0 + rng.randrange(3_600_000)} for i in range(n)]
    again = [{**e, "merchant_id": "mDUP"} for e in rng.sample(events, n // 10)]  # a second copy, told apart
    sent = events + again
    rng.shuffle(sent)
    sent.sort(key=lambda e: e["merchant_id"] == "mDUP")  # stable: copies after their originals
    labels = []
    for e in rng.sample(events, n // 2):
        for _ in range(rng.choice([1, 1, 2, 3])):  # relabels, some at the same label time
            labels.append({"event_id": e["event_id"], "is_fraud": rng.random() < 0.3,
                           "label_time": e["event_time"] + rng.choice([86_400_000, 172_800_000])})
    labels += [{"event_id": f"gone{i}", "is_fraud": True, "label_time": T0} for i in range(7)]
    return sent, labels


def _reference(sent: list[dict], labels: list[dict]) -> list[dict]:
    best: dict[str, dict] = {}
    for lab in labels:  # one partition per event id (keyed by it): produce order is offset order
        cur = best.get(lab["event_id"])
        if cur is None or lab["label_time"] >= cur["label_time"]:
            best[lab["event_id"]] = lab
    seen: dict[str, dict] = {}
    for e in sent:
        seen.setdefault(e["event_id"], e)
    rows = [{"event_id": i, "card_id": e["card_id"], "merchant_id": e["merchant_id"], "ts": e["event_time"],
             "is_fraud": best[i]["is_fraud"], "label_time": best[i]["label_time"]}
            for i, e in seen.items() if i in best]
    return sorted(rows, key=lambda r: (r["ts"], r["event_id"]))


def test_spine_equals_a_brute_force_join(stack, temp_repo: Path, tmp_path: Path):
    from confluent_kafka import Producer
    from backfill.labelled import labelled_spine
    from headwater.repo_schemas import codec_for
    from headwater.topics import create_topics

    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    sent, labels = _events_and_labels(random.Random(11), 400)
    ev_codec, lab_codec = codec_for(repo, "events"), codec_for(repo, "labels")
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True})
    for e in sent[:200]:
        p.produce(repo.topics.events.name, ev_codec.encode(e), key=e["card_id"].encode())
    p.produce(repo.topics.events.name, b"\x00garbage", key=b"c1")
    for e in sent[200:]:
        p.produce(repo.topics.events.name, ev_codec.encode(e), key=e["card_id"].encode())
    for lab in labels:
        p.produce(repo.topics.labels.name, lab_codec.encode(lab), key=lab["event_id"].encode())
    p.produce(repo.topics.labels.name, b"not avro", key=b"x")
    assert p.flush(30) == 0

    res = labelled_spine(repo, stack, timeout_s=60)
    want = _reference(sent, labels)
    assert res.table.to_pylist() == want
    assert "mDUP" not in res.table.column("merchant_id").to_pylist()  # the first copy, not a later one
    assert res.events_read == len(sent) + 1 and res.labels_read == len(labels) + 1
    labelled = {lab["event_id"] for lab in labels}
    copies = [e["event_id"] for e in sent if e["event_id"] in labelled]
    assert res.duplicate_events == len(copies) - len(set(copies)) > 0
    assert res.unmatched_labels == 7
    assert sum(res.undecodable.values()) == 2 and all(k.split(":")[0] in ("events", "labels") for k in res.undecodable)
    assert "7 labels name no event" in res.summary()

    out = tmp_path / "spine.parquet"
    r = subprocess.run([sys.executable, "-m", "headwater.cli", "spine", "--repo", str(temp_repo), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"wrote {len(want):,} labelled events" in r.stdout
    assert pq.read_table(out).to_pylist() == want


def test_spine_without_topics_is_a_one_line_error(stack, temp_repo: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "headwater.cli", "spine", "--repo", str(temp_repo),
                        "--out", str(tmp_path / "s.parquet")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "headwater topics create" in r.stderr


def test_latest_label_wins_ties_go_to_the_later_row_and_a_null_time_loses() -> None:
    import pyarrow as pa
    from backfill.labelled import first_events, latest_labels
    labels = pa.table({"event_id": ["a", "a", "b", "b", "c", "c", "d"],
                       "is_fraud": [True, False, True, False, True, False, True],
                       "label_time": [5, 5, None, 1, 2, None, None]})
    got, superseded = latest_labels(labels, "event_id", "label_time")
    assert superseded == 3
    assert dict(zip(got.column("event_id").to_pylist(), got.column("is_fraud").to_pylist())) == {
        "a": False, "b": False, "c": True, "d": True}
    no_time, _ = latest_labels(labels, "event_id", None)  # no timestamp field: the later row
    assert dict(zip(no_time.column("event_id").to_pylist(), no_time.column("is_fraud").to_pylist())) == {
        "a": False, "b": False, "c": False, "d": True}
    events = pa.table({"event_id": ["x", "y", "x", "z", "y"], "n": [1, 2, 3, 4, 5]})
    firsts, repeats = first_events(events, "event_id")
    assert firsts.column("n").to_pylist() == [1, 2, 4] and repeats == 2
