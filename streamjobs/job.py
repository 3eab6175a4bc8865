"""PyFlink wiring: a TableEnvironment with the connector jars, in streaming or batch mode.

Streaming and replay differ only here (mode, sinks, bounds); the SQL they run comes from one
compiled plan.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from headwater.config import Connection, default_group
from headwater.errors import StackError

__all__ = ["table_env", "STATE_FORMAT", "checkpoint_dir", "latest_checkpoint", "older_checkpoints"]


def table_env(conn: Connection, mode: Literal["streaming", "batch"] = "streaming",
              parallelism: int = 1, extra: dict[str, str] | None = None):
    """A TableEnvironment on a local MiniCluster that can read and write Kafka and Parquet."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    if not conn.flink_jars:
        raise StackError("no Flink connector jars in the connection settings: run `headwater stack up` "
                         "(it fetches them with Maven)")
    missing = [j for j in conn.flink_jars if not Path(j).exists()]
    if missing:
        raise StackError(f"connector jar {missing[0]} is missing: rerun `headwater stack up` to fetch it")
    settings = (EnvironmentSettings.in_streaming_mode() if mode == "streaming"
                else EnvironmentSettings.in_batch_mode())
    env = TableEnvironment.create(settings)
    cfg = env.get_config()
    cfg.set("pipeline.jars", ";".join(Path(j).resolve().as_uri() for j in conn.flink_jars))
    cfg.set("python.executable", sys.executable)  # PyFlink workers use this interpreter, not PATH's
    cfg.set("parallelism.default", str(parallelism))
    cfg.set("table.local-time-zone", "UTC")  # TIMESTAMP_LTZ <-> epoch ms without surprises
    for k, v in (extra or {}).items():
        cfg.set(k, v)
    return env


# ---------------------------------------------------------------- the features job

def bindings(repo, defs):
    """Register (idempotently) every schema the job reads or writes; return what the compiler needs."""
    from headwater.repo_schemas import subject
    from online_store.tiles import TILE_KEY_SCHEMA, key_subject, tile_subject, tile_value_schema
    from schemas import load_schema, open_store
    from streamjobs.compiler import SourceBinding

    store = open_store(repo.resolve(repo.schema_store), repo.schema_registry_url)
    location = repo.schema_registry_url or str(repo.resolve(repo.schema_store).resolve())
    sources = {}
    for v in defs.views:
        src = v.source
        schema = load_schema(src.schema) if not isinstance(src.schema, dict) else dict(src.schema)
        sources[src.topic] = SourceBinding(src.topic, schema, store.register(subject(src.topic), schema), location)
    tiles_topic = repo.topics.tiles.name
    key_id = store.register(key_subject(tiles_topic), TILE_KEY_SCHEMA)
    values = {}
    for vp in defs.plan.views:
        schema = tile_value_schema(vp)
        values[vp.name] = (schema, store.register(tile_subject(tiles_topic, vp.name), schema))
    return sources, key_id, values


def markers_default(mode: str = "streaming") -> bool:
    """Markers (the writer's exact as_of rule, ``streamjobs.compiler``) need streaming at parallelism 1."""
    return mode == "streaming" and default_parallelism() == 1


def compile_features(conn: Connection, repo, defs, *, bounds=None, mode="streaming", checkpoint_dir=None,
                     group_id: str | None = None, markers: bool | None = None, downtime_ms: int = 0):
    """``markers``: default ``markers_default(mode)``; ``downtime_ms``: see ``compiler.state_ttl_ms``."""
    from streamjobs.compiler import KafkaBounds, compile_job
    if markers is None:
        markers = markers_default(mode)
    sources, key_id, values = bindings(repo, defs)
    return compile_job(defs.plan, sources, repo.topics.tiles.name, conn.bootstrap_servers, key_id, values,
                       group_id or default_group(repo.project, "features"), bounds or KafkaBounds(), mode,
                       checkpoint_dir, markers=markers, downtime_ms=downtime_ms)


def default_parallelism() -> int:
    """1 unless ``HEADWATER_FLINK_PARALLELISM`` says otherwise: on the 2-core dev machine, where
    Kafka, Redis and the writer share the cores, parallelism 2 measured slower (bench/flink_job.py:
    streaming 2.5k vs 3.7k events/s, batch 8.1k vs 9.2k); raise it where cores are free."""
    import os
    return int(os.environ.get("HEADWATER_FLINK_PARALLELISM", "1"))


def submit(conn: Connection, job, mode="streaming", restore_from: str | None = None,
           parallelism: int | None = None):
    """Run a compiled job on a local MiniCluster; returns the TableResult (``.wait()`` blocks)."""
    extra = dict(job.config)
    parallelism = parallelism or default_parallelism()
    if job.markers and parallelism != 1:
        raise StackError(f"this features job was compiled with markers, which need parallelism 1 (asked: {parallelism}): "
                         "compile it with markers=False to run it wider")
    if restore_from:
        extra["execution.state-recovery.path"] = restore_from
    env = table_env(conn, mode=mode, parallelism=parallelism, extra=extra)
    for stmt in job.ddl:
        env.execute_sql(stmt)
    stmts = env.create_statement_set()
    for ins in job.inserts:
        stmts.add_insert_sql(ins)
    return stmts.execute()


#: Bumped whenever an accumulator's serialized form or the job's stateful operators change, which
#: makes older checkpoints unrestorable (Flink refuses them as incompatible state): 2 =
#: ``HW_DISTINCT``'s own serializer (sorted UTF-8 items) in place of Kryo over a ``HashSet``; 3 =
#: markers (one-phase aggregation, the source's marker column); 4 = stddev's per-tile ``m2``
#: (``HW_M2``) in place of ``SUM(x*x)``. A job with markers (parallelism 1) and one without (more)
#: do not restore each other's checkpoints either.
STATE_FORMAT = 4


def checkpoint_dir(project: str, markers: bool = True) -> Path:
    """Jobs with and without markers keep their checkpoints apart: neither restores the other's."""
    from headwater.config import stack_dir
    return stack_dir() / "flink" / project / "checkpoints" / f"state-v{STATE_FORMAT}{'' if markers else '-wide'}"


def older_checkpoints(directory: Path) -> list[Path]:
    """Completed checkpoints of earlier state formats next to ``directory`` (format 1 wrote
    ``checkpoints/<job id>/chk-N`` with no format folder)."""
    root = directory.parent
    return sorted(m.parent for m in root.glob("*/*/chk-*/_metadata") if m.parent.parent.parent != directory) + \
        sorted(m.parent for m in root.glob("*/chk-*/_metadata") if not m.parent.parent.name.startswith("state-v"))


def latest_checkpoint(directory: Path) -> str | None:
    """The newest completed checkpoint (``chk-N/_metadata``) under ``directory``, for resuming."""
    found = newest_checkpoint(directory)
    return found[0].as_uri() if found else None


def newest_checkpoint(directory: Path) -> tuple[Path, float] | None:
    """(folder, completion time in epoch seconds) of the newest completed checkpoint."""
    best: tuple[Path, float] | None = None
    for meta in directory.glob("*/chk-*/_metadata"):
        t = meta.stat().st_mtime
        if best is None or t > best[1]:
            best = (meta.parent, t)
    return best


def run_streaming(conn: Connection, repo, defs, *, fresh: bool = False, progress=print):
    """Submit the unbounded features job; resumes from the newest checkpoint unless ``fresh``.

    Returns the TableResult; the job runs in this process's MiniCluster until the process ends.
    Tile writes are whole-IR upserts, so resuming (even replaying some events twice) never double counts.
    """
    ckpt = checkpoint_dir(repo.project, markers_default())
    ckpt.mkdir(parents=True, exist_ok=True)
    found = None if fresh else newest_checkpoint(ckpt)
    restore = found[0].as_uri() if found else None
    downtime_ms = int((time.time() - found[1]) * 1000) if found else 0
    if restore is None and not fresh:
        stale = older_checkpoints(ckpt)
        if stale:
            raise StackError(f"checkpoint {stale[-1]} was written by an older Headwater, or by this job at another "
                             "parallelism (HEADWATER_FLINK_PARALLELISM: 1 runs with markers, more without), and "
                             "cannot be restored: rerun with `--fresh` to start from the committed offsets "
                             "(tiles still open at the restart then hold only the events read after it)")
    job = compile_features(conn, repo, defs, checkpoint_dir=ckpt.as_uri(), downtime_ms=downtime_ms)
    progress(f"features job: {len(defs.plan.views)} view(s), {len(job.inserts)} tile queries, "
             f"plan {defs.plan.plan_hash}; checkpoints in {ckpt}"
             + (f"; resuming from {restore} (stopped {downtime_ms / 60_000:.1f} min: state TTL extended by that)"
                if restore else ""))
    return submit(conn, job, restore_from=restore)
