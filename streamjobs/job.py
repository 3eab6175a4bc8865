"""PyFlink wiring: a TableEnvironment with the connector jars, in streaming or batch mode.

Streaming and replay differ only here (mode, sinks, bounds); the SQL they run comes from one
compiled plan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from headwater.config import Connection
from headwater.errors import StackError

__all__ = ["table_env"]


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
