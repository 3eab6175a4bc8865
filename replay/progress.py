"""Progress of a running batch replay: records the Kafka source has read, from the MiniCluster's REST API.

The local MiniCluster serves Flink's REST API on the port the runner chose; every few seconds we
read the Kafka source operator's ``numRecordsOut`` (records it emitted) and print
``read / estimated`` (the estimate is exact offsets from ``replay.bounds``). Should the REST
API not answer, progress falls back to elapsed time so a long replay is never silent.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from typing import Callable

__all__ = ["free_port", "follow", "source_records"]

_SOURCE_OUT = re.compile(r"^Source__.*\.numRecordsOut$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 2.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def source_records(port: int, job_id: str) -> int | None:
    """Records emitted by the job's Kafka source vertices (None when the API does not answer)."""
    try:
        job = _get(port, f"/jobs/{job_id}")
        total = 0
        for v in job.get("vertices", []):
            if not v["name"].startswith("Source"):
                continue
            base = f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
            ids = [m["id"] for m in _get(port, base) if _SOURCE_OUT.match(m["id"])]
            if ids:  # the source operator itself, not the operators chained after it
                ms = _get(port, f"{base}?get={','.join(ids)}&agg=sum")
                total += int(sum(float(m.get("sum", 0)) for m in ms))
        return total
    except Exception:
        return None


def follow(result, port: int, total: int, say: Callable[[str], None], every_s: float = 3.0) -> None:
    """Block until the job ends, reporting progress every ``every_s`` seconds."""
    client = result.get_job_client()
    job_id = str(client.get_job_id()) if client is not None else None
    t0 = time.time()
    last = t0
    done = client.get_job_execution_result() if client is not None else None
    while done is not None and not done.done():
        time.sleep(0.5)
        now = time.time()
        if now - last < every_s:
            continue
        last = now
        read = source_records(port, job_id) if job_id else None
        el = now - t0
        if read is None:
            say(f"  replay running: {el:,.0f}s elapsed, ~{total:,} records to read")
        elif total and read >= total:
            say(f"  replay: read all {read:,} records; aggregating and writing tiles, {el:,.0f}s")
        else:
            pct = f" ({100 * read / total:.0f}%)" if total else ""
            say(f"  replay: read {read:,} / ~{total:,} records{pct}, {read / el:,.0f} records/s, {el:,.0f}s")
    result.wait()
