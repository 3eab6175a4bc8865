"""Findings of the online-store review (F1 as_of order, F2 history retention, F3 Redis errors,
F4 bad progress records, F9 feature-log records): each test failed on the code before its fix."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ConnectionError as RedisConnectionError

from online_store import TileWriter, feature_log, fetch, keys, reader
from online_store import writer as W
from online_store.errors import StoreUnavailableError
from streamjobs import build_plan

try:
    from test_online_store import _tile, drop_project, progress_record, rds, small_view, tile_records
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.test_online_store import _tile, drop_project, progress_record, rds, small_view, tile_records

S = 1_704_067_200_000
COUNT = "card:amount_count_1m"


__all__ = ["rds"]  # the fixture, shared with test_online_store


@pytest.fixture
def project(rds: Any, unique: str) -> str:
    name = f"t{unique}"
    yield name
    drop_project(rds, name)
    drop_project(rds, name + "u")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- F1: as_of before the tiles


def _race(rds: Any, project: str) -> tuple[Any, Any]:
    """One event in Redis and as_of at its append time; ``writer()`` is the live writer landing
    mid-fetch: a second event's tile, then as_of raised to that event's append time."""
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    w = TileWriter(rds, project, plan)
    w.write([_tile(vp, "c1", 1000, S, 1, S + 100, 1.0)])
    rds.hset(keys.progress_key(project, vp), keys.AS_OF_FIELD, S + 100)

    def writer() -> None:
        w.write([_tile(vp, "c1", 1000, S, 2, S + 200, 1.0)])
        rds.hset(keys.progress_key(project, vp), keys.AS_OF_FIELD, S + 200)
    return plan, writer


class _OneByOne:
    """A pipeline run command by command on a real server, the writer landing once after the first
    tile read (``tiles_first``: each execute runs tile reads before as_of reads, as cluster nodes
    answering in parallel may)."""

    def __init__(self, client: Any, hook: Any, tiles_first: bool = False) -> None:
        self.client, self.hook, self.tiles_first, self.cmds = client, hook, tiles_first, []

    def execute_command(self, *args: Any) -> None:
        self.cmds.append(args)

    def execute(self) -> list[Any]:
        order = sorted(range(len(self.cmds)), key=lambda i: self.cmds[i][0] == "HGET") if self.tiles_first \
            else range(len(self.cmds))
        out: list[Any] = [None] * len(self.cmds)
        for i in order:
            out[i] = self.client.execute_command(*self.cmds[i])
            if self.cmds[i][0] in ("HMGET", "HGETALL"):
                self.hook()
        return out


class _Hook:
    def __init__(self, writer: Any) -> None:
        self.writer, self.fired = writer, False

    def run(self) -> None:
        if not self.fired:
            self.fired = True
            self.writer()


class _Pipelined:
    """A client without ``connection_pool``: fetch takes the client-pipeline path."""

    def __init__(self, client: Any, hook: _Hook) -> None:
        self.client, self.hook = client, hook

    def pipeline(self, transaction: bool = False) -> _OneByOne:
        return _OneByOne(self.client, self.hook.run)


class _Cluster(RedisCluster):
    """Passes for a RedisCluster (fetch's cluster path); each pipeline answers tile reads first."""

    def __init__(self, client: Any, hook: _Hook) -> None:  # no RedisCluster.__init__: nothing to connect
        self.client, self.hook = client, hook

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _OneByOne:
        return _OneByOne(self.client, self.hook.run, tiles_first=True)


def _consistent(res: Any) -> None:
    """Every event appended at or before the returned as_of is in the served count."""
    as_of, count = res.as_of_ms["card"], res.values[COUNT].to_pylist()[0]
    assert count >= (2 if as_of >= S + 200 else 1), (as_of, count)


@pytest.mark.integration
@pytest.mark.parametrize("read", ["hmget", "hgetall"])
@pytest.mark.parametrize("client", ["pipeline", "cluster"])
def test_as_of_is_read_before_the_tiles(rds: Any, project: str, read: str, client: str) -> None:
    plan, writer = _race(rds, project)
    hook = _Hook(writer)
    other = _Pipelined(rds, hook) if client == "pipeline" else _Cluster(rds, hook)
    res = fetch(other, project, plan, ["c1"], [COUNT], at_ms=S + 1500, read=read)
    assert hook.fired
    _consistent(res)


def test_the_single_node_payload_asks_as_of_first_per_view() -> None:
    """Redis runs one connection's commands in order: as_of must be each view's first command."""
    plan = build_plan([small_view("card"), small_view("card2")])
    lays = [reader._layout("p", vp, tuple(f.name for f in vp.features), S) for vp in plan.views]
    ents = [[b"c1", b"c2"], [b"c1"]]
    payload, n = reader._commands(lays, ents, ["hmget", "hgetall"])
    assert n == 2 + 3
    cmds = [c for c in payload.split(b"*") if c]
    first_card2 = next(i for i, c in enumerate(cmds) if keys.progress_key("p", plan.view("card2")).encode() in c)
    assert keys.progress_key("p", plan.view("card")).encode() in cmds[0] and b"HGET\r\n" in cmds[0]
    assert b"HMGET" in cmds[1] and b"HGETALL" in cmds[first_card2 + 1] and first_card2 == 3


@pytest.mark.integration
def test_raw_path_values_and_as_of_unchanged(rds: Any, project: str) -> None:
    plan, _ = _race(rds, project)
    for read in ("hmget", "hgetall"):
        res = fetch(rds, project, plan, ["c1", "c9"], [COUNT], at_ms=S + 1500, read=read)
        assert res.values[COUNT].to_pylist() == [1, 0] and res.as_of_ms == {"card": S + 100}


@pytest.mark.integration
@pytest.mark.parametrize("client", ["raw", "pipeline", "cluster"])
def test_a_fetch_of_the_past_says_how_far_back_it_is_exact(rds: Any, project: str, client: str) -> None:
    """The library's ``fetch(at_ms=...)`` itself reports ``exact_since_ms`` (the writer's history,
    read in the same round trip), not only ``fetch_repo`` and the CLI: a read further back than
    the store keeps lists the view in ``trimmed_views`` instead of being silently too small."""
    import time
    plan, _ = _race(rds, project)
    vp = plan.view("card")
    hook = _Hook(lambda: None)
    other = {"raw": rds, "pipeline": _Pipelined(rds, hook), "cluster": _Cluster(rds, hook)}[client]
    hour = 3_600_000
    for history, trimmed in ((None, ("card",)), (10 * 365 * 24 * hour, ())):  # history: none, then ten years
        if history is not None:
            rds.hset(keys.progress_key(project, vp), keys.HISTORY_FIELD, history)
        before = int(time.time() * 1000)
        res = fetch(other, project, plan, ["c1"], [COUNT], at_ms=S + 1500)
        after = int(time.time() * 1000)
        since = res.exact_since_ms["card"] + vp.allowed_lateness_ms + (history or 0)
        assert before <= since <= after and res.trimmed_views == trimmed
        assert res.values[COUNT].to_pylist() == [1] and res.as_of_ms == {"card": S + 100}
    assert fetch(other, project, plan, ["c1"], [COUNT]).exact_since_ms is None  # now: not a read of the past


# ---------------------------------------------------------------- F3: Redis errors, wrapped


def test_redis_down_is_one_store_unavailable_error() -> None:
    plan = build_plan([small_view("card")])
    port = _free_port()
    for client in (redis_lib.Redis(port=port),
                   redis_lib.Redis(connection_pool=redis_lib.BlockingConnectionPool(port=port, timeout=0.1))):
        with pytest.raises(StoreUnavailableError, match="fetch from Redis failed"):
            fetch(client, "p", plan, ["c1"], at_ms=S)


class _Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def execute_command(self, *args: Any) -> None:
        pass

    def execute(self) -> list[Any]:
        raise self.exc


class _FailingCluster(RedisCluster):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _Failing:
        return _Failing(self.exc)


@pytest.mark.parametrize("exc", [RedisConnectionError("node down"), ClusterDownError("CLUSTERDOWN")])
def test_cluster_pipeline_errors_are_store_unavailable(exc: Exception) -> None:
    """The scorer retries a batch on StoreUnavailableError only: a failover must read as one."""
    plan = build_plan([small_view("card")])
    with pytest.raises(StoreUnavailableError, match="fetch from Redis failed"):
        fetch(_FailingCluster(exc), "p", plan, ["c1"], at_ms=S)


@pytest.mark.integration
def test_cli_fetch_with_redis_down_is_one_line(stack, temp_repo: Path, capsys: Any, monkeypatch: Any) -> None:
    from headwater.cli import main
    monkeypatch.setenv("HEADWATER_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    assert main(["fetch", "--repo", str(temp_repo), "--entity", "card_id=c1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("headwater: error: fetch from Redis failed"), err


# ---------------------------------------------------------------- F4: bad progress and marker records


class _Pipe:
    def __init__(self, calls: list[Any]) -> None:
        self.calls, self.n = calls, 0

    def execute_command(self, *args: Any) -> None:
        self.calls.append(args)
        self.n += 1

    def execute(self) -> list[Any]:
        return [None] * self.n


class _Redis:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def script_load(self, src: str) -> str:
        return "sha"

    def hgetall(self, key: str) -> dict:  # the late counts a writer seeds its gauge from: none
        return {}

    def hset(self, key: str, field: str, value: Any) -> None:  # the writer's history_ms
        self.calls.append(("HSET", key, field, value))

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe(self.calls)


class _Msg:
    def __init__(self, offset: int) -> None:
        self.off = offset

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.off

    def value(self) -> bytes:
        return b"\x00\x00\x00\x00\x07%d" % self.off


class _TP:
    partition = 0


class _Consumer:
    def __init__(self, n: int) -> None:
        self.msgs = [_Msg(i) for i in range(n)]

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        out, self.msgs = self.msgs[:n], self.msgs[n:]
        return out

    def assignment(self) -> list[_TP]:
        return [_TP()]

    def store_offsets(self, offsets: Any) -> None:
        pass


class _Decoder:
    def __init__(self, recs: list[dict[str, Any]]) -> None:
        self.recs = recs

    def transcode(self, value: bytes) -> None:
        return None

    def decode(self, value: bytes) -> dict[str, Any]:
        return dict(self.recs[int(value[5:])])


class _Ends:
    topic = "tiles"

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, parts: Any) -> dict[int, tuple[int, int]]:
        return {0: (0, self.n)}


def test_progress_and_markers_of_another_shape_are_counted_never_fatal() -> None:
    """Each bad record is skipped and counted by reason; the good progress record after them
    is still published. Before: KeyError/TypeError out of the write loop (and again on restart)."""
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    marker = {"view": vp.name, "entity": "\x00hw-marker:r1", "resolution_ms": vp.ladder[0], "tile_start": -1,
              "plan_hash": vp.plan_hash, "n_events": "x", "max_append_ms": 5}
    recs = [{"resolution_ms": 0, "other": "shape"},                        # unknown_view
            dict(progress_record(vp, 0, S), plan_hash="0" * 16),           # other plan
            dict(progress_record(vp, 0, S), max_append_ms=None),           # invalid
            {k: v for k, v in progress_record(vp, 0, S).items() if k != "n_events"},  # invalid
            marker,                                                        # invalid
            progress_record(vp, 1, S + 500, n=7)]                          # good
    redis = _Redis()
    wr = W.TileWriter(redis, "p", plan)
    rounds = iter(range(4))
    stats = W._write_loop(_Consumer(len(recs)), _Ends(len(recs)), wr, _Decoder(recs), 0,
                          lambda *a: next(rounds, None) is None, False, None)
    assert (stats.unknown_view, stats.rejected_plan, stats.invalid) == (1, 1, 3)
    published = [c for c in redis.calls if c[0] == "EVALSHA"]
    assert len(published) == 1
    assert list(published[0][-3:]) == [1, S + 499, 7]  # partition, append ms (a ms below), next offset


def test_direct_write_of_a_bad_progress_record_is_counted() -> None:
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    stats = W.TileWriter(_Redis(), "p", plan).write([dict(progress_record(vp, 0, S), tile_start="zero")])
    assert stats.invalid == 1 and stats.progress == 0


# ---------------------------------------------------------------- F2 (c): history_ms on top of R(r)


@pytest.mark.integration
def test_history_ms_keeps_that_much_history_on_top_of_what_now_needs(rds: Any, project: str) -> None:
    """A fetch at newest - history is exact (as an untrimmed store gives it). Before, retention
    was max(R(r), history): the windows reaching back past newest - history came up short."""
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    hour = 3_600_000
    events = [{"card_id": "c1", "amount": 1.0, "n": 1, "merchant": "m", "event_time_ms": S + 30_000 * i,
               "append_time_ms": S + 30_000 * i + 10, "partition": 0, "offset": i} for i in range(360)]
    recs = sorted(tile_records(vp, events), key=lambda r: r["tile_start"])
    newest = max(r["tile_start"] for r in recs)
    kept = TileWriter(rds, project, plan, history_ms=hour, clock=lambda: newest / 1000)
    full = TileWriter(rds, project + "u", plan, history_ms=400 * 86_400_000, clock=lambda: newest / 1000)
    for i in range(0, len(recs), 50):  # in time order, so trimming runs as the newest tile advances
        kept.write(recs[i:i + 50])
        full.write(recs[i:i + 50])
    t = newest - hour
    refs = [f"card:{f.name}" for f in vp.features if f.op in ("count", "sum", "mean")]
    got = fetch(rds, project, plan, ["c1"], refs, at_ms=t).rows()
    want = fetch(rds, project + "u", plan, ["c1"], refs, at_ms=t).rows()
    assert want[0]["card:amount_count_10m"] == 20
    assert got == want


# ---------------------------------------------------------------- F9: feature-log records


def _log_record(entity: str = "c1") -> dict[str, Any]:
    return {"event_id": None, "entity_key": "card_id", "entity": entity, "t_ms": S, "as_of_ms": S - 800,
            "values": {"card_velocity:txn_count_1m": 3}, "features": ["card_velocity:txn_count_1m"],
            "plan_hash": "0" * 16}


def test_jsonl_records_missing_fields_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    bad = [{k: v for k, v in _log_record().items() if k != "features"},
           {k: v for k, v in _log_record().items() if k != "entity"}, [1, 2], dict(_log_record(), t_ms="soon")]
    path.write_text("\n".join(json.dumps(r) for r in [_log_record("c1"), *bad, _log_record("c2")]) + "\n")
    table = feature_log.read(path)
    assert table.column("entity").to_pylist() == ["c1", "c2"]
    assert feature_log.skipped(table) == 4
    good = tmp_path / "good.jsonl"
    feature_log.write_file([_log_record()], good)
    assert feature_log.skipped(feature_log.read(good)) == 0


@pytest.mark.integration
def test_topic_records_that_do_not_decode_are_skipped_and_counted(stack, temp_repo: Path) -> None:
    from confluent_kafka import Producer
    from headwater.config import load_repo
    from headwater.topics import create_topics
    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    w = feature_log.FeatureLogWriter.for_repo(stack, repo, producer)
    good = w.codec.encode(_log_record())
    topic = repo.topics.feature_log.name
    for value in (b"\x00\x01", b"not framed at all", good[:7], b"\x00\x7f\xff\xff\xf0" + good[5:]):
        producer.produce(topic, value, b"c1")  # short, bad magic, truncated Avro, unregistered id
    w.write([_log_record("c2")])
    w.flush()
    table = feature_log.read("topic", connection=stack, repo=repo)
    assert table.column("entity").to_pylist() == ["c2"]
    assert feature_log.skipped(table) == 4


# ---------------------------------------------------------------- late counts survive a writer restart


def test_late_counts_are_stored_and_a_restarted_writer_starts_from_them(rds: Any, project: str) -> None:
    from online_store.metrics import WriterMetrics
    plan = build_plan([small_view("card")])
    vp = plan.view("card")
    late = [{**progress_record(vp, p, S + 10 * p, n), "resolution_ms": -1} for p, n in ((0, 3), (1, 4), (0, 5))]
    m1 = WriterMetrics()
    stats = TileWriter(rds, project, plan, metrics=m1).write(late)
    assert stats.late_counts == 3 and stats.written == 0 and stats.progress == 0  # no tile, no progress
    gauge = lambda m: m.registry.get_sample_value("headwater_writer_events_late", {"view": "card"})  # noqa: E731
    assert gauge(m1) == 5 + 4  # the newest count per partition, summed
    raw = rds.hgetall(keys.progress_key(project, vp))
    assert raw[b"l:0"] == b"5" and raw[b"l:1"] == b"4" and keys.AS_OF_FIELD.encode() not in raw
    m2 = WriterMetrics()
    restarted = TileWriter(rds, project, plan, metrics=m2)
    assert restarted.late == {"card": {0: 5, 1: 4}} and gauge(m2) == 9  # before any new late record
