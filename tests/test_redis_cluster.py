"""The online store on a real Redis Cluster (three redis-server processes in cluster mode, slots
assigned with CLUSTER ADDSLOTSRANGE): the writer's script calls group keys by slot, fetches equal
the same tiles on one server, and teardown finds and removes the project's keys on every node."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib

from headwater.config import load_repo
from online_store import TileWriter, fetch
from online_store.repo_fetch import redis_client
from streamjobs.repo import load_definitions

try:
    from test_online_store import drop_project, progress_record, tile_records
except ModuleNotFoundError:
    from tests.test_online_store import drop_project, progress_record, tile_records

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from headwater.stack import redis_server_binary
    binary = redis_server_binary(progress=lambda _m: None)
    ports, buses = [_free_port() for _ in range(3)], [_free_port() for _ in range(3)]
    procs, logs = [], []
    try:
        for port, bus in zip(ports, buses):
            d = tmp_path_factory.mktemp(f"node{port}")
            logs.append(d / "redis.log")
            # the bus port defaults to port + 10000, past 65535 for an ephemeral port: name one
            procs.append(subprocess.Popen([binary, "--port", str(port), "--cluster-port", str(bus),
                                           "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                           "--cluster-config-file", str(d / "nodes.conf"), "--save", "",
                                           "--appendonly", "no", "--dir", str(d), "--logfile", str(logs[-1])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        nodes = [redis_lib.Redis(host="127.0.0.1", port=p) for p in ports]
        deadline = time.monotonic() + 20
        for n, log in zip(nodes, logs):
            while True:
                try:
                    n.ping()
                    break
                except redis_lib.ConnectionError:
                    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
                    assert time.monotonic() < deadline, f"redis-server in cluster mode did not start:\n{tail}"
                    time.sleep(0.1)
        bounds = [0, 5461, 10923, 16384]
        for i, n in enumerate(nodes):
            n.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        for p, bus in zip(ports[1:], buses[1:]):
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p, bus)
        while not all(b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO") for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_writer_and_fetch_on_a_cluster_equal_one_server(stack, cluster, temp_repo: Path) -> None:
    from redis.cluster import RedisCluster
    from headwater.teardown import delete_keys
    from online_store.keys import project_pattern

    repo = load_repo(temp_repo)
    plan = load_definitions(repo).plan
    rc = redis_client(cluster)
    assert isinstance(rc, RedisCluster)
    single = redis_lib.Redis.from_url(stack.redis_url)
    now = int(time.time() * 1000)
    events = [{"card_id": f"c{i % 40}", "merchant_id": f"m{i % 10}", "amount": 1.0 + i, "country": "DE",
               "event_time_ms": now - 5_000 - i * 1_000, "append_time_ms": now - 4_000 - i * 1_000,
               "partition": i % 3, "offset": i} for i in range(300)]
    try:
        for client in (rc, single):
            w = TileWriter(client, repo.project, plan, source_partitions={v.name: 3 for v in plan.views},
                           max_tiles_per_call=16)
            for vp in plan.views:
                stats = w.write(tile_records(vp, events) * 2)  # the second copy: stale, on any node
                assert stats.written > 0 and stats.stale == stats.written
                w.write([progress_record(vp, p, now - 1_000) for p in range(3)])
        ids = {"card": [f"c{i}" for i in range(45)], "merchant": [f"m{i % 12}" for i in range(45)]}
        got, want = fetch(rc, repo.project, plan, ids, None, at_ms=now), fetch(single, repo.project, plan, ids, None,
                                                                                at_ms=now)
        assert got.as_of_ms == want.as_of_ms == {v.name: now - 1_000 for v in plan.views}
        assert got.rows() == want.rows() and any(r["card_velocity:txn_count_1h"] for r in got.rows())
        conn = stack.copy_with(redis_url=cluster)
        slots = {rc.keyslot(k) for k in rc.scan_iter(match=project_pattern(repo.project))}
        assert len(slots) > 3  # keys spread over the nodes
        assert delete_keys(conn, project_pattern(repo.project)) > 0
        assert not list(rc.scan_iter(match=project_pattern(repo.project)))
    finally:
        drop_project(single, repo.project)
        single.close()
        rc.close()
