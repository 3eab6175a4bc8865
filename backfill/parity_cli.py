"""``headwater parity``: check a feature log against replay tiles, or (``--now``) sample entities,
fetch them online now with logging, replay the range their windows need and check at once."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from backfill.parity import ParityError, check

__all__ = ["run_cli", "check_now", "recent_entities"]


def recent_entities(conn: Any, repo: Any, keys: list[str], n: int, *, per_partition: int = 5000,
                    seed: int = 0) -> dict[str, list[str]]:
    """``n`` rows of entity ids (one id per key field, from the same event) sampled from the newest
    ``per_partition`` events of each events-topic partition."""
    from headwater.repo_schemas import codec_for
    from headwater.topic_read import read_to_end
    from schemas import ColumnarCodec

    topic = repo.topics.events.name
    values = [m.value() or b"" for batch in read_to_end(conn.bootstrap_servers, topic, tail=per_partition,
                                                         timeout_s=120, error=ParityError,
                                                         if_missing="produce events first (`headwater produce`)")
              for m in batch]
    if not values:
        raise ParityError(f"events topic {topic!r} is empty: produce events first (`headwater produce`)")
    codec = codec_for(repo, "events")
    table, ok, _ = ColumnarCodec.from_codec(codec).decode_batch(values, resolve=codec)
    rows = table.filter(pa.array(ok)).select(keys).to_pylist()
    picked = random.Random(seed).sample(rows, min(n, len(rows)))
    return {k: [str(r[k]) for r in picked] for k in keys}


def check_now(repo: Any, *, sample: int, tiles: Path, conn: Any, seed: int = 0, say: Any = print,
              replace: bool = False):
    """Fetch ``sample`` recent entity rows online now (logged to the feature_log topic), replay
    from the oldest event any of their windows can read to the current end, then check.
    ``replace``: the replay may replace tiles of a range it does not cover (its own temp dir)."""
    from online_store import feature_log, fetch_repo
    from replay import run_replay
    from streamjobs.repo import load_definitions

    plan = load_definitions(repo).plan
    keys = sorted({v.entity_key for v in plan.views})
    ids = recent_entities(conn, repo, keys, sample, seed=seed)
    t0 = time.perf_counter()
    from online_store.repo_fetch import redis_client
    result = fetch_repo(repo, ids, None, at=None, plan=plan, redis=redis_client(conn.redis_url))
    recs = feature_log.records(result, plan)
    writer = feature_log.FeatureLogWriter.for_repo(conn, repo)
    writer.write(recs)
    writer.flush()
    fetch_s = time.perf_counter() - t0
    say(f"parity --now: fetched {len(ids[keys[0]])} rows at t={result.t_ms} ({len(recs)} logged to "
        f"{repo.topics.feature_log.name})")
    # a window at t reads events from floor(t - W, h); their append time is >= that (a minute of
    # producer clock skew allowed), so replaying appends from there to the end covers every window
    start = result.t_ms - max(max(v.longest_window_ms, v.ttl_ms or 0) + max(v.ladder) for v in plan.views) - 60_000
    t0 = time.perf_counter()
    run_replay(repo, tiles, start=start, progress=say, conn=conn, replace=replace)
    replay_s = time.perf_counter() - t0
    report = check(repo, feature_log=feature_log.to_table(recs), tiles=tiles, conn=conn, say=say)
    report.timing.extra.update({"now_fetch": fetch_s, "now_replay": replay_s})
    return report


def run_cli(repo_path: str, *, feature_log: str | None, tiles: str | None, sample: int | None,
            json_path: str | None, report_path: str | None, now: bool, seed: int = 0) -> int:
    """Exit 0 when every mismatch is explained, 1 on any unexplained mismatch."""
    from headwater.config import load_connection, load_repo

    repo = load_repo(repo_path)
    conn = load_connection()
    if now:
        out = Path(tiles) if tiles else Path(tempfile.mkdtemp(prefix="headwater-parity-"))
        report = check_now(repo, sample=sample or 100, tiles=out, conn=conn, seed=seed, replace=not tiles)
    else:
        if not tiles:
            raise ParityError("parity needs --tiles DIR (a `headwater replay` output) or --now")
        if not Path(tiles).is_dir():
            raise ParityError(f"--tiles {tiles}: no such directory; run `headwater replay --out {tiles}` first")
        report = check(repo, feature_log=feature_log or "topic", tiles=tiles, sample=sample, seed=seed, conn=conn)
    print(report.table())
    if json_path:
        report.write_json(json_path)
        print(f"wrote {json_path}")
    if report_path:
        report.write_html(report_path)
        print(f"wrote {report_path}")
    return 0 if report.ok else 1
