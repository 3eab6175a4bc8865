"""Long-running feature services behind the CLI: the streaming job, the online writer, fetch.

``features run`` starts the Flink job on a local MiniCluster *and*, unless ``--no-writer``, the
online writer in a thread of the same process, so one command keeps Redis fresh. Both stop on
Ctrl-C or SIGTERM: the job is cancelled (its last checkpoint is retained for the next run) and
the writer commits the offsets of what it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from headwater.config import load_connection, load_repo
from headwater.errors import ConfigError
from headwater.topics import create_topics

__all__ = ["run", "write", "rebuild", "fetch_cli", "parse_time"]


def _sigterm_as_interrupt() -> None:
    def handler(_sig, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


class _Stop:
    """Ctrl-C and SIGTERM ask for a stop instead of raising: a KeyboardInterrupt inside a blocking
    py4j call makes py4j log a traceback and drop its gateway connection. The handler only sets a
    flag (taking a lock there could deadlock with the main thread); a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, sig, _frame) -> None:
        if self.requested:
            signal.signal(sig, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.requested = True


def _quiet_py4j() -> None:
    """Once stopping: a SIGTERM to the whole process group (systemd, `kill -- -PGID`) stops the JVM
    too, and py4j would log a traceback for the cancel and for every Java object released until
    exit. Only py4j's records go; the writer's still show."""
    for name in ("py4j", "py4j.java_gateway", "py4j.clientserver"):
        logging.getLogger(name).disabled = True
    logging.getLogger().addFilter(lambda r: f"{os.sep}py4j{os.sep}" not in r.pathname)  # its logging.exception


def _wait_for(result, stop: _Stop) -> bool:
    """Poll the job once a second until it ends (True; a failed job raises its cause) or a stop is
    asked for (False)."""
    while not stop.requested:
        time.sleep(1.0)
        if stop.requested:
            break
        try:
            status = result.get_job_client().get_job_status().result()
        except Exception:
            if stop.requested:  # SIGTERM to the process group: the gateway may go first
                return False
            raise
        if status.is_globally_terminal_state():
            result.wait()
            return True
    return False


def _writer_metrics(port: int | None):
    """Writer metrics (lag, tiles written, freshness histogram, as_of age, progress by rule) on http://:port/metrics."""
    if not port:
        return None
    from prometheus_client import start_http_server
    from online_store import WriterMetrics
    m = WriterMetrics()
    start_http_server(port, registry=m.registry)
    print(f"writer metrics on http://127.0.0.1:{port}/metrics")
    return m


def run(repo, defs, *, with_writer: bool = True, fresh: bool = False, metrics_port: int | None = None) -> int:
    from streamjobs.job import run_streaming
    conn = load_connection()
    create_topics(conn, repo.topics)
    stopping = _Stop()
    stop = threading.Event()
    writer = None
    if with_writer:
        from online_store.writer import run_writer
        writer = threading.Thread(target=run_writer, args=(conn, repo, defs.plan),
                                  kwargs={"stop_event": stop, "verbose": True, "metrics": _writer_metrics(metrics_port)},
                                  name="online-writer", daemon=True)
    result = run_streaming(conn, repo, defs, fresh=fresh)
    if writer is not None:
        writer.start()
        print("online writer: tiles topic -> Redis, running in this process")
    try:
        if not _wait_for(result, stopping):
            print("stopping: cancelling the Flink job (checkpoint kept) and the writer ...", flush=True)
            _quiet_py4j()
            try:
                result.get_job_client().cancel().result()  # a hang here: a second Ctrl-C stops at once
            except Exception:  # already finished or cluster gone: nothing to cancel
                pass
    finally:
        stop.set()
        if writer is not None:
            writer.join(timeout=30)
    return 0


def write(repo, defs, metrics_port: int | None = None) -> int:
    from online_store.writer import run_writer
    _sigterm_as_interrupt()
    stop = threading.Event()
    try:
        run_writer(load_connection(), repo, defs.plan, stop_event=stop, verbose=True,
                   metrics=_writer_metrics(metrics_port))
    except KeyboardInterrupt:
        stop.set()
    return 0


def rebuild(repo, defs) -> int:
    from online_store.writer import rebuild as rebuild_store
    t0 = time.perf_counter()
    stats = rebuild_store(load_connection(), repo, defs.plan, verbose=True)
    print(f"rebuilt the online store from {repo.topics.tiles.name} in {time.perf_counter() - t0:.1f}s: {stats}")
    return 0


def parse_time(text: str | None) -> int | None:
    """ISO-8601 (naive = UTC) or epoch ms -> epoch ms."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--at {text!r} is not a time: use ISO-8601 like 2026-01-05T14:27:00Z "
                          f"or epoch milliseconds") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _log_fetch(repo, result, target: str) -> None:
    """``fetch --log``: the fetch's feature-log records to the feature_log topic or a .jsonl file."""
    from online_store import feature_log
    from streamjobs.repo import load_definitions
    recs = feature_log.records(result, load_definitions(repo).plan)
    if target == "topic":
        writer = feature_log.FeatureLogWriter.for_repo(load_connection(), repo)
        writer.write(recs)
        writer.flush()
        where = repo.topics.feature_log.name
    else:
        where = feature_log.write_file(recs, target)
    print(f"logged {len(recs)} feature-log records to {where}", file=sys.stderr)


def fetch_cli(repo_path, entity_args: list[str], features: str | None, at: str | None, as_json: bool,
              log: str | None = None) -> int:
    from online_store import fetch_repo
    repo = load_repo(repo_path)
    keys = []
    for arg in entity_args:
        name, sep, value = arg.partition("=")
        if not sep or not value:
            raise ConfigError(f"--entity {arg!r} must be KEY=VALUE, e.g. --entity card_id=c42")
        keys.append((name, value))
    refs = [r.strip() for r in features.split(",")] if features else None
    result = fetch_repo(repo, keys, refs, at=parse_time(at))
    if log is not None:
        _log_fetch(repo, result, log)
    rows = result.rows()
    as_of = result.min_as_of_ms
    freshness = None if as_of is None else result.t_ms - as_of
    trimmed = result.trimmed_views
    if trimmed:
        since = result.exact_since_ms or {}
        print(f"warning: t={result.t_ms} is older than the online store keeps exact for "
              + ", ".join(f"{v} (from {since[v]}: now - allowed_lateness - the writer's history_ms)" for v in trimmed)
              + "; older tiles may be trimmed, so counts and sums may be too small: for the past, replay and "
              "build a training set (`headwater replay`, `headwater training-set`)", file=sys.stderr)
    if as_json:
        print(json.dumps({"t_ms": result.t_ms, "as_of_ms": dict(result.as_of_ms), "freshness_ms": freshness,
                          "exact_since_ms": None if result.exact_since_ms is None else dict(result.exact_since_ms),
                          "complete": not trimmed, "rows": rows}, default=str, indent=2))
        return 0
    ids = set(result.entity_columns or {"entity": ()})
    for row in rows:
        print("  ".join(f"{k}={row[k]}" for k in ids))
        for k, v in row.items():
            if k not in ids:
                print(f"  {k:48} {v}")
    if freshness is None:
        fresh = "unknown (no progress published yet)"
    elif freshness < 0:  # --at in the past: t - as_of is no staleness
        fresh = f"n/a (a read of the past: as_of is {-freshness:,} ms after t)"
    else:
        fresh = f"{freshness} ms"
    print(f"t={result.t_ms}  as_of={as_of}  freshness={fresh}")
    return 0
