"""The second half of ``headwater demo``: replay -> training set -> train -> score -> parity.

Runs against the demo's own repository copy while its features job and writer keep running, so
every step uses the real components a user would: the replay is the same Flink SQL in batch mode,
the training set joins the replayed tiles point-in-time, the scorer is the ``headwater score``
process reading the live events topic, and parity compares that scorer's feature log with a
fresh replay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from headwater import produce
from headwater.errors import HeadwaterError
from headwater.generator import GeneratorConfig

__all__ = ["train_score_parity"]

def model_features(plan) -> tuple[str, ...]:
    """Every numeric feature of the plan (the models take a float matrix; last_country is a string)."""
    from streamjobs.ir import NUMERIC_TYPES
    out = []
    for fr in plan.features_by_ref([f"{v.name}:*" for v in plan.views]):
        f = fr.feature
        if f.op in ("count", "distinct_count", "sum", "mean", "stddev") or f.column_type in NUMERIC_TYPES:
            out.append(fr.ref)
    return tuple(out)


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def _replay(repo_dir: Path, out: Path) -> Any:
    from replay import run_replay
    return run_replay(repo_dir, out, progress=lambda m: print(f"  {m}", flush=True))


def train_score_parity(conn, repo, repo_dir: Path, events: list[dict], n_labels: int, work: Path,
                       score_events: int, rate: float, log_dir: Path) -> None:
    from backfill import parity_check, training_set
    from backfill.labelled import labelled_spine
    from headwater.demo import stop
    from scoring.registry import Registry
    from scoring.train import TrainConfig, train
    from streamjobs.repo import load_definitions
    features = model_features(load_definitions(repo).plan)

    _step(f"7/11 replay the events topic through the same Flink SQL in batch mode -> {work / 'tiles'}")
    _replay(repo_dir, work / "tiles")

    _step("8/11 point-in-time training set: labelled events x features at their own event time")
    found = labelled_spine(repo, conn, timeout_s=120)  # what `headwater spine` writes
    if found.labels_read < n_labels:
        raise HeadwaterError(f"read {found.labels_read} of {n_labels} labels back: see `headwater stack logs kafka`")
    spine = found.table
    print(f"  spine: {found.summary()}")
    if spine.num_rows == 0 or len(set(spine.column("is_fraud").to_pylist())) < 2:
        raise HeadwaterError("the generated run has too few labels of both classes to train: run the demo with more events")
    t0 = time.perf_counter()
    table = training_set(repo, spine, list(features), tiles=work / "tiles", timestamp_column="ts")
    path = work / "train.parquet"
    pq.write_table(table, path)
    print(f"  {table.num_rows:,} rows ({sum(spine.column('is_fraud').to_pylist()):,} fraud) x "
          f"{len(features)} features in {time.perf_counter() - t0:.1f}s -> {path}")

    _step("9/11 train a champion (GBDT, XGBoost) and a challenger (logistic regression)")
    registry = Registry.for_repo(repo)
    champ = train(repo, path, TrainConfig(model="fraud", kind="gbdt", features=features, trees=100),
                  registry=registry, log=lambda m: print(f"  {m}"))[0]
    chall = train(repo, path, TrainConfig(model="fraud", kind="logreg", features=features),
                  registry=registry, log=lambda m: print(f"  {m}"))[0]
    registry.set_alias("fraud", "champion", int(champ.version))
    registry.set_alias("fraud", "challenger", int(chall.version))
    print(f"  fraud@champion = v{champ.version} (gbdt), fraud@challenger = v{chall.version} (logreg)")

    _step("10/11 score live: headwater score with the champion and the challenger as a shadow")
    score_log = log_dir / f"demo-score-{repo.project}.log"
    scorer = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", "score", "--repo", str(repo_dir), "--model", "fraud@champion",
         "--shadow", "fraud@challenger", "--feature-log-rate", "1.0"],
        stdout=open(score_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _score_live(repo_dir, scorer, score_log, len(events), score_events, rate)
    finally:
        stop(scorer)

    _step("11/11 parity: the scorer's feature log against a fresh replay")
    time.sleep(3)  # let the last tiles of the live burst settle before the replay reads the range
    _replay(repo_dir, work / "tiles-parity")
    report = parity_check(repo, feature_log="topic", tiles=work / "tiles-parity", conn=conn,
                          say=lambda m: print(f"  {m}"))
    print(report.table())
    report.write_html(work / "parity.html")
    print(f"  report: {work / 'parity.html'}")
    if not report.ok:
        raise HeadwaterError(f"parity found {len(report.unexplained)} unexplained mismatches: see {work / 'parity.html'}")


def _score_live(repo_dir: Path, scorer, score_log: Path, already: int, n: int, rate: float) -> None:
    deadline = time.monotonic() + 120
    while b"scoring " not in score_log.read_bytes():
        if scorer.poll() is not None or time.monotonic() > deadline:
            raise HeadwaterError(f"the scorer did not start: see {score_log}")
        time.sleep(0.5)
    time.sleep(3)  # group join and partition assignment
    seed = int(time.time()) % 100_000 + 1
    cfg = GeneratorConfig(rate=rate, entities=max(200, n // 20), duration_s=n / rate,
                          seed=seed, disorder_ms=2_000, late_fraction=0.0)
    print(f"  producing {n:,} more transactions live at {rate:,.0f}/s")
    n = produce.to_kafka(repo_dir, cfg, pace=True)["events"]
    events = {r["event_id"]: r for r in produce.read_back(repo_dir, "events", already + n, timeout_s=60)}
    preds = list(produce.read_back(repo_dir, "predictions", already + n, timeout_s=90))
    shadows = list(produce.read_back(repo_dir, "shadow", already + n, timeout_s=30))
    live = [p for p in preds if p["event_id"].startswith(f"e{seed}-") and p["event_id"] in events]
    if len(preds) < already + n:
        raise HeadwaterError(f"only {len(preds):,} predictions for {already + n:,} events: see {score_log}")
    e2e = [p["produced_ms"] - events[p["event_id"]]["_timestamp_ms"] for p in live]
    first = min(p["produced_ms"] for p in preds)
    span_s = max(1e-3, (max(p["produced_ms"] for p in preds) - first) / 1000)
    fresh = [p["produced_ms"] - p["features_as_of_ms"] for p in live if p["features_as_of_ms"] > 0]
    agree = [(s["score"] >= 0.5) == (s["production_score"] >= 0.5) for s in shadows]
    diff = [abs(s["score"] - s["production_score"]) for s in shadows]
    print(f"  {len(preds):,} predictions and {len(shadows):,} shadow records for {len(events):,} events "
          f"({len(live):,} of them live); no-feature rows: {sum(p['no_features'] for p in preds):,}")
    print(f"  throughput while catching up and live: {len(preds) / span_s:,.0f} predictions/s over {span_s:.1f}s")
    print(f"  append -> prediction produced: p50 {_pct(e2e, 50):,.0f} ms, p99 {_pct(e2e, 99):,.0f} ms "
          f"(the {len(live):,} live events; the backlog was scored at start)")
    print(f"  feature freshness of the live events (t - as_of): p50 {_pct(fresh, 50):,.0f} ms, p99 {_pct(fresh, 99):,.0f} ms")
    print(f"  shadow agreement at 0.5: {100 * np.mean(agree):.1f}% (mean |score diff| {np.mean(diff):.3f})")
