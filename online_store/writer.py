"""Tiles topic -> Redis: monotonic, pipelined, trimmed upserts, and as_of from progress records.

**Monotonic.** Every value starts with its version ``(n_events, max_append_ms)`` (``keys.VERSION``);
a Lua script compares it server-side and stores a tile only when strictly newer, so replays,
duplicates, a rebuild racing the live writer, or two writers never move a tile backwards. One
``EVALSHA`` carries up to ``max_tiles_per_call`` tiles of one view (bounded so a script never blocks
readers for long); all calls of a batch go in one pipeline, one round trip.

**Generated path.** The Kafka loop turns a tile record of a plan view straight from its bytes into
write arguments (``online_store.transcode``, byte-identical to decode + ``ir.from_row`` +
``TileCodec.encode``); progress, other plans, bad bytes and JSON-form strings take the full path,
which counts and logs them.

**Trimmed and expiring.** The same script deletes tiles that fell behind ``keys.retention_ms`` as
the entity's newest ``tile_start`` (capped at the writer's clock, so one event from a skewed
future clock cannot trim the present) moves forward, skips tiles already too old on arrival, and
refreshes the key's TTL (``keys.key_ttl_ms``). See ``online_store.keys`` for why those bounds.

**as_of: markers, and the settle rule.** The streaming job (parallelism 1) puts markers into
every tile query's own output (``online_store.tiles``); once a query's next marker for a source
partition is read, the tiles before the previous one are all read (``online_store.markers``), so
after the batch's write the view's per-partition progress rises at once: exact, and about one
mini-batch behind the tiles. A progress record (``resolution_ms == 0``) says the job has
aggregated a source partition up to an append time, but comes from an operator of its own, so it
can reach the tiles topic *before* tiles of the same mini-batch. The writer therefore holds every
progress record it reads until it has written, on every tiles-topic partition it consumes,
everything up to the end offsets it observed at least ``settle_ms`` after reading that record;
only then does it store the per-partition value. That rule is the fallback for what markers do not
cover (a partition whose events stopped before a second marker; jobs without markers) and the
source of the next offsets the idleness rule compares. Both store maxima, and ``as_of = min`` over
the partitions seen so far. Caveats: a partition that never reported does not
hold as_of back unless the source partition count is known (``source_partitions``; ``run_writer``
reads it from the broker when the source topic exists); and a writer that owns only some tiles
partitions (several writers in one group) can vouch only for those: run one writer per tiles topic.

**Idle source partitions.** A progress record also carries the partition's next offset (``n_events``
of a progress record is ``MAX(offset) + 1``), stored with it once settled. About once a second
``run_writer`` reads each source topic's partitions and end offsets (high watermarks); a partition
whose settled next offset equals its end offset (or that is empty and never reported) has nothing
appended up to T - ``idle_margin_ms`` which is not already in Redis, T being the time taken just
before that read, so its value rises to that (``keys.IDLE_LUA``). Without this a partition that
stops receiving events would hold as_of at its last event forever. It needs broker timestamps
(``message.timestamp.type=LogAppendTime``, as ``headwater topics create`` makes the events topic;
CreateTime topics keep the old behaviour). The margin (1 s) must cover the skew between the
writer's and the brokers' clocks and the replication delay (a record is stamped when the leader
appends it, but the high watermark passes it only once the in-sync replicas have it). A partition
whose last record is a transaction marker never looks idle. Offsets are stored (committed) only
below the oldest progress record still settling, so a restart reads it again rather than losing it.

**Late counts.** Late-count records (``resolution_ms == -1``) carry, per source partition, how many
events the job has dropped as late; the writer keeps the newest per partition in the view's
progress key (``l:<partition>``, read back by the next writer) and exposes their sum per view
(``headwater_writer_events_late``, ``note_late``), logging when it grows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from headwater.heap import frozen_heap
from headwater.kafka_batch import take
from online_store import keys
from online_store.errors import StoreUnavailableError
from schemas.errors import SchemaStoreError
from online_store.metrics import WriterMetrics
from online_store.markers import MarkerTracker
from online_store.tiles import is_late, is_marker, marker_key, is_progress, tile_ir, tile_value_schema, tile_version
from online_store.transcode import ERRORS as TRANSCODE_ERRORS
from online_store.transcode import Transcoded, compile_transcoder
from schemas.store import canonical_json
from streamjobs.plan import FeaturePlan, ViewPlan

if TYPE_CHECKING:
    from headwater.config import Connection, RepoConfig

__all__ = ["TileWriter", "WriteStats", "run_writer", "rebuild"]

log = logging.getLogger("headwater.online_store.writer")


@dataclass
class WriteStats:
    """What one ``write`` (or a whole writer run) did. ``too_old``: beyond retention on arrival;
    ``transcoded``: records that took the generated path (``online_store.transcode``)."""

    records: int = 0
    transcoded: int = 0
    written: int = 0
    stale: int = 0
    too_old: int = 0
    deleted: int = 0
    progress: int = 0
    rejected_plan: int = 0
    unknown_view: int = 0
    invalid: int = 0
    undecodable: int = 0
    tombstones: int = 0
    markers: int = 0
    late_counts: int = 0

    def __iadd__(self, other: WriteStats) -> WriteStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


class _Once:
    """Log a warning once per key: a stream of bad records must not flood the log."""

    def __init__(self) -> None:
        self._seen: set[Any] = set()

    def __call__(self, key: Any, msg: str, *args: Any) -> None:
        if key not in self._seen and len(self._seen) < 1000:
            self._seen.add(key)
            log.warning(msg, *args)


class TileWriter:
    """Writes decoded tile-topic records of ``plan`` into Redis (see module docstring)."""

    def __init__(self, redis: Any, project: str, plan: FeaturePlan, *, metrics: WriterMetrics | None = None,
                 max_tiles_per_call: int = 256, source_partitions: Mapping[str, int] | None = None,
                 clock: Callable[[], float] = time.time, history_ms: int | None = None) -> None:
        """``history_ms``: keep this much more history per entity, so ``fetch(at=t)`` is exact for any
        ``t >= newest - allowed_lateness - history_ms``; default: only what "now" needs. Added to
        ``R(r)`` and the key TTL, not a floor under them: a fetch ``history_ms`` back still reads
        ``R(r)`` behind its own t."""
        self.redis = redis
        self.project = keys.check_project(project)
        self.plan = plan
        self.metrics = metrics
        self.max_tiles_per_call = max(1, int(max_tiles_per_call))
        self.source_partitions = dict(source_partitions or {})
        self._clock = clock
        self._views = {v.name: v for v in plan.views}
        self._prefix = {v.name: keys.entity_key_prefix(project, v) for v in plan.views}
        self._codecs = {v.name: keys.TileCodec(v) for v in plan.views}
        self._res_args: dict[str, list[int]] = {}
        for v in plan.views:
            ret = {r: x + (history_ms or 0) for r, x in keys.retention_ms(v).items()}
            ttl = keys.key_ttl_ms(v) + (history_ms or 0)
            self._res_args[v.name] = [ttl, len(ret), *(x for r in sorted(ret) for x in (r, ret[r]))]
        self._once = _Once()
        #: per view and source partition, the newest late count read (``note_late``), kept in Redis
        self.late: dict[str, dict[int, int]] = {}
        self._load_scripts()
        self._seed_late()
        self._publish_history(history_ms or 0)

    def _publish_history(self, history_ms: int) -> None:
        """Tell fetches how far back this writer keeps exact history (``keys.exact_since``)."""
        from redis.exceptions import RedisClusterException, RedisError
        try:
            for v in self.plan.views:
                self.redis.hset(keys.progress_key(self.project, v), keys.HISTORY_FIELD, int(history_ms))
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailableError(f"writing to Redis failed: {exc}; is redis-server up "
                                        "(`headwater stack up`)?") from exc

    def _seed_late(self) -> None:
        """The late counts a writer before this one stored (progress keys' ``l:`` fields), so the
        gauge holds them from the start, not only from each partition's next late event."""
        from redis.exceptions import RedisClusterException, RedisError
        try:
            for v in self.plan.views:
                stored = self.redis.hgetall(keys.progress_key(self.project, v))
                for k, n in stored.items():
                    k = k.decode() if isinstance(k, bytes) else k
                    if k.startswith(keys.LATE_PREFIX):
                        self.late.setdefault(v.name, {})[int(k[len(keys.LATE_PREFIX):])] = int(n)
                if self.metrics is not None and v.name in self.late:
                    self.metrics.late.labels(v.name).set(sum(self.late[v.name].values()))
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailableError(f"reading the late counts from Redis failed: {exc}; is redis-server up "
                                        "(`headwater stack up`)?") from exc

    def _load_scripts(self) -> None:
        try:
            self._write_sha = self.redis.script_load(keys.WRITE_LUA)
            self._progress_sha = self.redis.script_load(keys.PROGRESS_LUA)
            self._idle_sha = self.redis.script_load(keys.IDLE_LUA)
        except Exception as exc:  # redis-py raises ConnectionError/ResponseError/...
            raise StoreUnavailableError(f"cannot load the writer scripts into Redis: {exc}; is redis-server up "
                                        "(`headwater stack up`)?") from exc

    def _rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()

    def check(self, rec: Mapping[str, Any], stats: WriteStats) -> ViewPlan | None:
        """The record's view, or None (counted and logged once) for an unknown view or another plan."""
        view = self._views.get(rec.get("view"))  # type: ignore[arg-type]
        if view is None:
            stats.unknown_view += 1
            self._rejected("unknown_view")
            self._once(("view", rec.get("view")), "tiles of view %r are not in the plan; dropped", rec.get("view"))
            return None
        if rec.get("plan_hash") != view.plan_hash:
            stats.rejected_plan += 1
            self._rejected("other_plan")
            self._once(("plan", view.name, rec.get("plan_hash")),
                       "view %r: tiles of plan %r rejected (this writer's plan is %r); run the writer of the job's plan",
                       view.name, rec.get("plan_hash"), view.plan_hash)
            return None
        return view

    def usable(self, rec: Mapping[str, Any], stats: WriteStats) -> dict[str, Any] | None:
        """A progress record or marker with its numbers as ints, or None (counted by reason: another
        view or plan, or ``invalid``): one record of another shape must never stop the writer, since
        a restart reads it again."""
        view = self.check(rec, stats)
        if view is None:
            return None
        try:
            return dict(rec, **{f: int(rec[f]) for f in ("resolution_ms", "tile_start", "n_events", "max_append_ms")})
        except (KeyError, TypeError, ValueError) as exc:
            stats.invalid += 1
            self._rejected("invalid")
            self._once(("invalid", view.name), "view %r: invalid progress or marker record dropped (%s)", view.name, exc)
            return None

    def note_late(self, rec: Mapping[str, Any]) -> None:
        """Take a usable late-count record: its partition's count replaces the last one read (records
        of one key arrive in order; a ``--fresh`` job starts again from 0), stored in the view's
        progress key (``l:<partition>``), logged when it grows."""
        from redis.exceptions import RedisClusterException, RedisError
        view, part, n = rec["view"], int(rec["tile_start"]), int(rec["n_events"])
        counts = self.late.setdefault(view, {})
        before = sum(counts.values())
        counts[part] = n
        try:
            self.redis.hset(keys.progress_key(self.project, self._views[view]), f"{keys.LATE_PREFIX}{part}", n)
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailableError(f"storing a late count in Redis failed: {exc}") from exc
        total = sum(counts.values())
        if self.metrics is not None:
            self.metrics.late.labels(view).set(total)
        if total > before:
            log.info("view %r: the features job has dropped %d event(s) as late so far (source partition %d: %d)",
                     view, total, part, n)

    def write(self, records: Sequence[Mapping[str, Any] | None],
              transcoded: Sequence[tuple[str, Transcoded]] = ()) -> WriteStats:
        """Store tiles (monotonic) and publish progress records immediately; one round trip for the tiles.

        ``transcoded``: ``(view, tile)`` already turned into write arguments from their bytes
        (``online_store.transcode``; the Kafka loop's common case). The Kafka loop passes progress
        through the settle rule instead (``publish_progress``).
        """
        stats = WriteStats()
        per_view: dict[str, tuple[dict[str, int], list[Any]]] = {}
        progress: list[Mapping[str, Any]] = []
        now_s = self._clock()
        fresh = self.metrics.freshness.observe if self.metrics is not None else None
        for name, (entity, r, s, n, a, value) in transcoded:  # markers: taken out by the Kafka loop
            index, args = per_view.setdefault(name, ({}, []))
            args.append((index.setdefault(entity, len(index) + 1), r, s, n, a, value))
            if fresh is not None:
                fresh(max(0.0, now_s - a / 1000.0))
        stats.records += len(transcoded)
        stats.transcoded += len(transcoded)
        for rec in records:
            if rec is None:
                continue
            stats.records += 1
            if is_progress(rec):
                ok = self.usable(rec, stats)
                if ok is not None:
                    progress.append(ok)
                continue
            if is_late(rec):
                ok = self.usable(rec, stats)
                if ok is not None:
                    stats.late_counts += 1
                    self.note_late(ok)
                continue
            view = self.check(rec, stats)
            if view is None:
                continue
            if is_marker(rec):
                stats.markers += 1
                continue
            try:
                value = self._codecs[view.name].encode(tile_version(rec), tile_ir(view, rec))
                r, s, n, a = int(rec["resolution_ms"]), int(rec["tile_start"]), int(rec["n_events"]), int(rec["max_append_ms"])
                entity = str(rec["entity"])
            except Exception as exc:  # malformed record: count, never crash the loop
                stats.invalid += 1
                self._rejected("invalid")
                self._once(("invalid", view.name), "view %r: invalid tile record dropped (%s)", view.name, exc)
                continue
            index, args = per_view.setdefault(view.name, ({}, []))
            k = index.setdefault(entity, len(index) + 1)
            args.append((k, r, s, n, a, value))
            if self.metrics is not None:
                self.metrics.freshness.observe(max(0.0, now_s - a / 1000.0))
        if per_view:
            self._write_tiles(per_view, int(now_s * 1000), stats)
        if progress:
            stats.progress += len(progress)
            self.publish_progress(progress)
        return stats

    def _write_tiles(self, per_view: dict[str, tuple[dict[str, int], list[Any]]], now_ms: int, stats: WriteStats) -> None:
        calls: list[tuple[str, list[Any]]] = []
        slot = getattr(self.redis, "keyslot", None)  # Redis Cluster: one script call's keys share a slot
        for name, (index, tiles) in per_view.items():
            prefix = self._prefix[name]
            entities = list(index)
            groups = [tiles]
            if slot is not None:
                slots = [slot(f"{prefix}{e}}}") for e in entities]  # once per entity
                by_slot: dict[int, list[Any]] = {}
                for t in tiles:
                    by_slot.setdefault(slots[t[0] - 1], []).append(t)
                groups = list(by_slot.values())
            for group in groups:
                for i in range(0, len(group), self.max_tiles_per_call):
                    local: dict[int, int] = {}
                    argv: list[Any] = [now_ms, *self._res_args[name]]
                    for k, r, s, n, a, value in group[i:i + self.max_tiles_per_call]:
                        argv += (local.setdefault(k, len(local) + 1), r, s, n, a, value)
                    ks = [f"{prefix}{entities[k - 1]}}}" for k in local]
                    calls.append((name, [self._write_sha, len(ks), *ks, *argv]))
        results = self._execute([c for _, c in calls])
        for (name, _), (written, stale, too_old, deleted) in zip(calls, results):
            stats.written += written
            stats.stale += stale
            stats.too_old += too_old
            stats.deleted += deleted
            if self.metrics is not None:
                self.metrics.written.labels(name).inc(written)
                self.metrics.stale.labels(name).inc(stale)
                self.metrics.too_old.labels(name).inc(too_old)

    def _execute(self, calls: list[list[Any]]) -> list[Any]:
        """All EVALSHA calls in one pipeline; reload scripts once if Redis lost them (retry is idempotent)."""
        from redis.exceptions import NoScriptError, RedisClusterException, RedisError

        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for c in calls:
                pipe.execute_command("EVALSHA", *c)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                self._load_scripts()
            except (RedisError, RedisClusterException) as exc:
                raise StoreUnavailableError(f"writing tiles to Redis failed: {exc}") from exc
        raise AssertionError("unreachable")

    def publish_progress(self, records: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
        """Store per-partition progress (append time and next offset, each a max) and recompute as_of
        per view; returns the new as_of."""
        per_view: dict[str, dict[int, tuple[int, int]]] = {}
        for rec in records:
            view = self.check(rec, WriteStats())
            if view is None:
                continue
            parts = per_view.setdefault(view.name, {})
            p, a, o = int(rec["tile_start"]), int(rec["max_append_ms"]), int(rec["n_events"])
            a0, o0 = parts.get(p, (a, o))
            parts[p] = (max(a0, a), max(o0, o))
        return self._as_of(self._progress_sha, {n: [x for p in sorted(parts) for x in (p, *parts[p])]
                                                for n, parts in per_view.items()})

    def publish_idle(self, ends: Mapping[str, Mapping[int, tuple[int, int]]], now_ms: int) -> dict[str, int | None]:
        """Raise idle source partitions to ``now_ms`` (module docstring); ``ends``: per view, the
        source topic's ``(low, high)`` offsets per partition, read after ``now_ms`` was taken.
        Partitions added to the topic since are expected from now on."""
        for n, e in ends.items():
            if n in self._views:
                self.source_partitions[n] = max(self.source_partitions.get(n, 0), len(e))
        return self._as_of(self._idle_sha, {n: [int(now_ms), *(x for p in sorted(e) for x in (p, *e[p]))]
                                            for n, e in ends.items() if n in self._views and e})

    def _as_of(self, sha: str, args: Mapping[str, list[int]]) -> dict[str, int | None]:
        names = list(args)
        calls = [[sha, 1, keys.progress_key(self.project, self._views[n]), self.source_partitions.get(n, 0), *args[n]]
                 for n in names]
        out: dict[str, int | None] = {}
        for n, res in zip(names, self._execute(calls) if calls else []):
            out[n] = None if res is None else int(res)
            if out[n] is not None and self.metrics is not None:
                self.metrics.as_of_age.labels(n).set(max(0.0, self._clock() - out[n] / 1000.0))
        return out


# ---------------------------------------------------------------- the Kafka loop


_AT = "_tiles_at"  # (partition, offset) of a progress record in the tiles topic, added on read


class _Settler:
    """Holds progress records until the settle rule is met (module docstring)."""

    def __init__(self, settle_ms: int) -> None:
        self.settle_s = settle_ms / 1000.0
        self._pending: list[tuple[float, Mapping[str, Any]]] = []
        self._batch: list[Mapping[str, Any]] = []
        self._snapshot: dict[int, tuple[int, int]] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._batch)

    def add(self, records: Sequence[Mapping[str, Any]], now: float) -> None:
        self._pending.extend((now, r) for r in records)

    def held(self) -> dict[int, int]:
        """Per tiles partition, the offset of the oldest progress record not yet published."""
        out: dict[int, int] = {}
        for r in chain((r for _, r in self._pending), self._batch):
            p, o = r[_AT]
            out[p] = min(out.get(p, o), o)
        return out

    def drop(self, parts: set[int]) -> None:
        """Forget what was read from tiles partitions a rebalance took away: their new owner reads
        those progress records again (offsets are stored only below them), and waiting on a
        partition this consumer no longer reads would hold the settle rule for good."""
        self._pending = [(t, r) for t, r in self._pending if r[_AT][0] not in parts]
        self._batch = [r for r in self._batch if r[_AT][0] not in parts]
        if self._snapshot is not None:
            self._snapshot = {p: v for p, v in self._snapshot.items() if p not in parts}

    def _caught_up(self, pos: Mapping[int, int]) -> bool:
        assert self._snapshot is not None
        return all(high <= low or pos.get(p, -1) >= high for p, (low, high) in self._snapshot.items())

    def poll(self, now: float, pos: Mapping[int, int],
             watermarks: Callable[[], dict[int, tuple[int, int]] | None]) -> list[Mapping[str, Any]]:
        """Records now safe to publish. ``pos``: next offset written, per tiles partition."""
        ready: list[Mapping[str, Any]] = []
        if self._snapshot is not None and self._caught_up(pos):
            ready, self._batch, self._snapshot = self._batch, [], None
        if self._snapshot is None and any(now - t >= self.settle_s for t, _ in self._pending):
            snap = watermarks()  # observed now, i.e. >= settle_ms after every due record was read
            if snap:
                self._batch = [r for t, r in self._pending if now - t >= self.settle_s]
                self._pending = [(t, r) for t, r in self._pending if now - t < self.settle_s]
                self._snapshot = snap
                if self._caught_up(pos):
                    ready, self._batch, self._snapshot = ready + self._batch, [], None
        return ready


class _Decoder:
    """Confluent-framed Avro values, decoded with the writer schema of the id in their header.

    With a ``plan``, a value written with one of its views' tile schemas can also go straight to
    write arguments (``transcode``); the first value of each schema id takes ``decode``."""

    def __init__(self, store: Any, plan: FeaturePlan | None = None) -> None:
        self._store = store
        self._codecs: dict[int, Any] = {}
        self._unknown: dict[int, float] = {}
        self._tile_schemas = {} if plan is None else {
            canonical_json(tile_value_schema(v)): v for v in plan.views}
        self._fast: dict[int, tuple[str, Any]] = {}

    def transcode(self, value: bytes) -> tuple[str, Transcoded] | None:
        """``(view, write arguments)``, or None: then ``decode`` the value (and count what is wrong)."""
        if len(value) < 5 or value[0] != 0:
            return None
        fx = self._fast.get(int.from_bytes(value[1:5], "big"))
        if fx is None:
            return None
        try:
            out = fx[1](value)
        except TRANSCODE_ERRORS:
            return None
        return None if out is None else (fx[0], out)

    def decode(self, value: bytes) -> dict:
        from schemas import AvroCodec, DecodeError, UnknownSchemaIdError

        if len(value) < 5 or value[0] != 0:
            raise DecodeError("bad_magic", "not Confluent-framed Avro", bytes(value))
        sid = int.from_bytes(value[1:5], "big")
        codec = self._codecs.get(sid)
        if codec is None:
            if time.monotonic() < self._unknown.get(sid, 0.0):
                raise DecodeError("unknown_schema_id", f"schema id {sid} is not registered", bytes(value))
            try:
                codec = AvroCodec(self._store.get_by_id(sid), sid, self._store, validate=False)
            except UnknownSchemaIdError as exc:
                self._unknown[sid] = time.monotonic() + 30.0
                raise DecodeError("unknown_schema_id", str(exc), bytes(value)) from exc
            self._codecs[sid] = codec
            view = self._tile_schemas.get(codec.canonical)
            tx = None if view is None else compile_transcoder(keys.codec_for(view))
            if tx is not None:
                self._fast[sid] = (view.name, tx)
        return codec.decode(value)


def _consumer_conf(conn: Connection, group_id: str, commit: bool) -> dict[str, Any]:
    return {
        "bootstrap.servers": conn.bootstrap_servers,
        "group.id": group_id,
        "enable.auto.offset.store": False,  # store an offset only after its tile is in Redis
        "enable.auto.commit": commit,       # commits stored offsets in the background (off for rebuild)
        "auto.offset.reset": "earliest",    # a new group replays the compacted topic: the store rebuilds itself
        "enable.partition.eof": True,       # settle rule: know we reached an end offset, past txn markers too
        "log_level": 3,
    }


class _EndOffsets:
    """``(low, high)`` per partition of ``topic``, through an AdminClient of its own; read committed
    for the tiles topic (the settle rule), uncommitted for a source topic (idleness: every record
    Flink may still read counts).

    Not the consumer's ``get_watermark_offsets(cached=False)``: that ListOffsets request queues on
    the consumer's broker connection behind its outstanding fetch long-poll (``fetch.wait.max.ms``,
    500 ms), one partition after another. Measured: 1.1-1.5 s for three partitions of a quiet
    topic against 1-3 ms here, and at 1k events/s 36 % of the writer loop's time, during which it
    read no tiles, so as_of lagged."""

    def __init__(self, conn: Connection, topic: str, committed: bool = True) -> None:
        from confluent_kafka.admin import AdminClient

        self.topic = topic
        self.committed = committed
        self._admin = AdminClient({"bootstrap.servers": conn.bootstrap_servers, "log_level": 3})

    def partitions(self) -> int | None:
        """How many partitions the topic has now (None: unknown)."""
        try:
            meta = self._admin.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
        except Exception as exc:  # KafkaException and timeouts: as_of waits, the loop goes on
            log.warning("cannot read the metadata of %s (%s); as_of waits", self.topic, exc)
            return None
        return None if meta is None or meta.error is not None else len(meta.partitions)

    def __call__(self, partitions: Sequence[int]) -> dict[int, tuple[int, int]] | None:
        from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        tps = [TopicPartition(self.topic, p) for p in partitions]
        try:  # both requests in flight before either is awaited
            low, high = (self._admin.list_offsets({tp: spec for tp in tps}, request_timeout=5.0,
                                                  isolation_level=IsolationLevel.READ_COMMITTED if self.committed
                                                  else IsolationLevel.READ_UNCOMMITTED)
                         for spec in (OffsetSpec.earliest(), OffsetSpec.latest()))
            return {tp.partition: (low[tp].result().offset, high[tp].result().offset) for tp in tps}
        except KafkaException as exc:
            log.warning("cannot read end offsets of %s (%s); as_of waits", self.topic, exc)
            return None


def _sources(consumer: Any, plan: FeaturePlan, repo_cfg: RepoConfig) -> dict[str, tuple[str, int]]:
    """``(topic, partitions)`` of each view's source (a topic role of headwater.yaml or a literal
    name), for the views whose topic exists."""
    roles = {role: spec.name for role, spec in repo_cfg.topics.all().items()}
    try:
        topics = consumer.list_topics(timeout=10).topics
    except Exception as exc:  # never a reason to stop; the idleness check reads the counts again
        log.warning("cannot read topic metadata (%s): until the idleness check reads the source partitions, "
                    "as_of is the minimum over those that reported", exc)
        return {}
    names = {v.name: roles.get(v.topic, v.topic) for v in plan.views}
    return {v: (t, len(topics[t].partitions)) for v, t in names.items() if t in topics}


def _log_append_time(conn: Connection, topics: set[str]) -> set[str]:
    """The topics whose records carry the broker's append time (``message.timestamp.type``)."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    if not topics:
        return set()
    admin = AdminClient({"bootstrap.servers": conn.bootstrap_servers, "log_level": 3})
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in sorted(topics)],
                                         request_timeout=10.0)
    except Exception as exc:  # an optimisation of as_of, never a reason to stop
        log.warning("cannot read the timestamp type of %s (%s): no idleness rule", ", ".join(sorted(topics)), exc)
        return set()
    out = set()
    for res, fut in futures.items():
        try:
            entry = fut.result().get("message.timestamp.type")
        except Exception as exc:  # an optimisation of as_of, never a reason to stop
            log.warning("cannot read the timestamp type of %s (%s): no idleness rule for it", res.name, exc)
            continue
        if entry is not None and entry.value == "LogAppendTime":
            out.add(res.name)
    return out


class _Idleness:
    """At most every ``every_s``: each source topic's offsets -> ``TileWriter.publish_idle``.

    Only for LogAppendTime topics: with CreateTime a producer sets the timestamps, so a record
    appended after the offsets were read may carry any earlier time (the rule would be unsound)."""

    def __init__(self, conn: Connection, sources: Mapping[str, tuple[str, int]], every_s: float = 1.0,
                 margin_ms: int = 1000) -> None:
        broker_time = _log_append_time(conn, {t for t, _ in sources.values()})
        for t in sorted({t for t, _ in sources.values()} - broker_time):
            log.info("source topic %s does not use LogAppendTime: its idle partitions hold as_of", t)
        self.topics = {v: t for v, (t, _) in sources.items() if t in broker_time}
        self.every_s = every_s
        self.margin_ms = margin_ms
        self._ends = {t: _EndOffsets(conn, t, committed=False) for t in self.topics.values()}
        self._last = float("-inf")

    def __call__(self, writer: TileWriter, now: float) -> dict[str, int | None]:
        if not self.topics or now - self._last < self.every_s:
            return {}
        self._last = now
        t_ms = int(writer._clock() * 1000) - self.margin_ms  # taken before the offsets are read: see IDLE_LUA
        seen: dict[str, dict[int, tuple[int, int]] | None] = {}
        for topic in set(self.topics.values()):
            n = self._ends[topic].partitions()  # partitions added since the start count from now on
            seen[topic] = self._ends[topic](range(n)) if n else None
        ends = {v: seen[t] for v, t in self.topics.items() if seen[t]}
        return writer.publish_idle(ends, t_ms) if ends else {}


def _loop(consumer: Any, ends: _EndOffsets, writer: TileWriter, decoder: _Decoder, settle_ms: int,
          done: Callable[[dict[int, int], float, bool], bool], verbose: bool,
          idle: _Idleness | None = None) -> WriteStats:
    with frozen_heap():  # the process's modules (PyFlink's too, in `features run`): not walked while it runs
        return _write_loop(consumer, ends, writer, decoder, settle_ms, done, verbose, idle)


def _write_loop(consumer: Any, ends: _EndOffsets, writer: TileWriter, decoder: _Decoder, settle_ms: int,
                done: Callable[[dict[int, int], float, bool], bool], verbose: bool,
                idle: _Idleness | None) -> WriteStats:
    from confluent_kafka import KafkaError, TopicPartition

    topic = ends.topic
    total, settler, markers = WriteStats(), _Settler(settle_ms), MarkerTracker(writer.plan)
    pos: dict[int, int] = {}
    read_to: dict[int, int] = {}  # next offset read, per tiles partition
    stored: dict[int, int] = {}  # offsets stored for commit: never past a progress record still settling
    last_msg = last_status = last_line = time.monotonic()
    shown: tuple[int, int, int] | None = None  # (written, stale, lag) of the last status line
    as_of: dict[str, int | None] = {}
    owned: set[int] = set()  # tiles partitions assigned at the last look
    once = _Once()
    while True:
        msgs = take(consumer, 5000, 0.2)  # never waits to fill: a trickle of tiles is written at once
        read_at = time.monotonic()  # the settle clock of this batch's progress records starts here, not after the write
        tiles, transcoded, progress, offsets = [], [], [], {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pos[m.partition()] = max(pos.get(m.partition(), 0), m.offset())
                elif err.fatal():
                    raise StoreUnavailableError(f"tiles consumer failed: {err.str()}")
                else:
                    once(("kafka", err.code()), "tiles consumer: %s", err.str())
                continue
            offsets[m.partition()] = m.offset() + 1
            value = m.value()
            if value is None:
                total.tombstones += 1
                continue
            fast = decoder.transcode(value)
            if fast is not None:
                t = fast[1]  # (entity, resolution, tile_start, n_events, max_append_ms, value)
                if marker_key(t[0], t[2]):
                    markers.add(fast[0], t[1], -1 - t[2], t[0], t[3], t[4])
                    total.records += 1
                    total.markers += 1
                else:
                    transcoded.append(fast)
                continue
            try:
                rec = decoder.decode(value)
                kind = ("progress" if is_progress(rec) else "late" if is_late(rec) else "marker" if is_marker(rec)
                        else "tile")
            except SchemaStoreError as exc:  # the registry is down (an unknown id is a DecodeError): no data
                raise StoreUnavailableError(f"schema store unavailable while reading {topic}[{m.partition()}]@"
                                            f"{m.offset()} ({exc}): the writer stops before that record, nothing "
                                            "past it committed; restart it once the store answers") from exc
            except Exception as exc:  # DecodeError, anything fastavro raises, a record of another shape
                total.undecodable += 1
                if writer.metrics is not None:
                    writer.metrics.rejected.labels("undecodable").inc()
                once(("decode", type(exc).__name__), "undecodable tile record at %s[%d]@%d: %s",
                     topic, m.partition(), m.offset(), exc)
                continue
            if kind == "progress":
                ok = writer.usable(rec, total)  # else counted by reason, skipped
                if ok is not None:
                    ok[_AT] = (m.partition(), m.offset())
                    progress.append(ok)
            elif kind == "late":
                total.records += 1
                ok = writer.usable(rec, total)  # else counted by reason, skipped
                if ok is not None:
                    total.late_counts += 1
                    writer.note_late(ok)
            elif kind == "marker":
                total.records += 1
                ok = writer.usable(rec, total)  # else counted by reason, skipped
                if ok is not None:
                    markers.add(ok["view"], ok["resolution_ms"], -1 - ok["tile_start"], str(ok["entity"]),
                                ok["n_events"], ok["max_append_ms"])
                    total.markers += 1
            else:
                tiles.append(rec)
        if tiles or transcoded:
            total += writer.write(tiles, transcoded)
        confirmed = markers.confirmed()  # exact: every tile read so far, this batch's too, is in Redis
        if confirmed:
            as_of.update(writer.publish_progress(confirmed))
            if writer.metrics is not None:
                writer.metrics.progress.labels("markers").inc(len(confirmed))
        if offsets:
            for p, o in offsets.items():
                pos[p] = max(pos.get(p, 0), o)
                read_to[p] = max(read_to.get(p, 0), o)
            last_msg = time.monotonic()
        now = time.monotonic()
        total.progress += len(progress)
        settler.add(progress, read_at)
        parts = sorted(tp.partition for tp in consumer.assignment())
        if not parts:
            last_msg = now  # idle time counts from the first assignment, not while the group forms
        gone = owned - set(parts)
        if gone:  # revoked: reading resumes from the committed offset if they come back
            settler.drop(gone)
            for p in gone:
                read_to.pop(p, None)
                stored.pop(p, None)
        owned = set(parts)
        ready = settler.poll(now, pos, lambda: ends(parts) if parts else None)
        if ready:  # one ms below, as markers: the broker stamps a producer batch with one time
            as_of.update(writer.publish_progress([dict(r, max_append_ms=int(r["max_append_ms"]) - 1) for r in ready]))
            if writer.metrics is not None:
                writer.metrics.progress.labels("settle").inc(len(ready))
        held = settler.held()
        safe = {p: min(o, held.get(p, o)) for p, o in read_to.items()}  # tiles up to there are in Redis
        moved = [TopicPartition(topic, p, o) for p, o in safe.items() if stored.get(p) != o and p in owned]
        if moved:
            consumer.store_offsets(offsets=moved)
            stored.update((tp.partition, tp.offset) for tp in moved)
        if idle is not None:
            as_of.update({v: a for v, a in idle(writer, now).items() if a is not None})
        if (verbose or writer.metrics is not None) and now - last_status >= 5.0:
            last_status = now
            lag = sum(max(0, consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] - pos.get(p, 0))
                      for p in parts)
            if writer.metrics is not None:
                writer.metrics.lag.set(lag)
            if verbose and ((total.written, total.stale, lag) != shown or now - last_line >= 60.0):
                shown, last_line = (total.written, total.stale, lag), now  # idle: one line a minute
                ages = {v: f"{time.time() - a / 1000:.1f}s" for v, a in as_of.items() if a is not None}
                print(f"writer: {total.written} tiles written, {total.stale} stale, lag {lag} records, "
                      f"as_of age {ages or 'n/a'}", flush=True)
        if done(pos, now - last_msg, settler.busy):
            return total


def _open(conn: Connection, repo_cfg: RepoConfig, redis_client: Any,
          plan: FeaturePlan | None = None) -> tuple[Any, _Decoder]:
    from online_store.repo_fetch import redis_client as client_for
    from schemas import open_store

    client = redis_client or client_for(conn.redis_url)
    return client, _Decoder(open_store(repo_cfg.resolve(repo_cfg.schema_store), repo_cfg.schema_registry_url), plan)


def run_writer(conn: Connection, repo_cfg: RepoConfig, plan: FeaturePlan, group_id: str | None = None, stop_event: Any = None,
               idle_exit_s: float | None = None, *, verbose: bool = False, settle_ms: int = 1000,
               redis_client: Any = None, metrics: WriterMetrics | None = None,
               history_ms: int | None = None, idle_margin_ms: int = 1000) -> WriteStats:
    """Consume the tiles topic into Redis until ``stop_event`` is set or idle for ``idle_exit_s``
    (with no progress record still settling). Offsets are stored only after the Redis write.
    ``idle_margin_ms``: see "Idle source partitions" in the module docstring."""
    from confluent_kafka import Consumer

    from headwater.config import default_group
    topic = repo_cfg.topics.tiles.name
    client, decoder = _open(conn, repo_cfg, redis_client, plan)
    consumer = Consumer(_consumer_conf(conn, group_id or default_group(repo_cfg.project, "writer"), True))
    try:
        sources = _sources(consumer, plan, repo_cfg)
        writer = TileWriter(client, repo_cfg.project, plan, metrics=metrics, history_ms=history_ms,
                            source_partitions={v: n for v, (_, n) in sources.items()})
        consumer.subscribe([topic])

        def done(pos: dict[int, int], idle_s: float, busy: bool) -> bool:
            if stop_event is not None and stop_event.is_set():
                return True
            return idle_exit_s is not None and idle_s >= idle_exit_s and not busy

        return _loop(consumer, _EndOffsets(conn, topic), writer, decoder, settle_ms, done, verbose,
                     _Idleness(conn, sources, margin_ms=idle_margin_ms))
    finally:
        consumer.close()  # commits the stored offsets and leaves the group


def rebuild(conn: Connection, repo_cfg: RepoConfig, plan: FeaturePlan, *, settle_ms: int = 1000, timeout_s: float = 3600.0,
            verbose: bool = False, redis_client: Any = None, metrics: WriterMetrics | None = None,
            generated: bool = True) -> WriteStats:
    """Write the compacted tiles topic, from the beginning to the end offsets seen at start, into Redis.

    Safe while the live writer runs: writes are monotonic. Commits nothing (a throwaway group).
    ``generated=False`` sends every record down the full path (``bench/writer.py`` compares both)."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = repo_cfg.topics.tiles.name
    client, decoder = _open(conn, repo_cfg, redis_client, plan if generated else None)
    consumer = Consumer(_consumer_conf(conn, f"headwater-rebuild.{uuid.uuid4().hex[:12]}", False))
    try:
        writer = TileWriter(client, repo_cfg.project, plan, metrics=metrics,
                            source_partitions={v: n for v, (_, n) in _sources(consumer, plan, repo_cfg).items()})
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise StoreUnavailableError(f"tiles topic {topic!r} not found; run `headwater topics create` first")
        parts = sorted(meta.partitions)
        ends = _EndOffsets(conn, topic)
        end = ends(parts)
        if end is None:
            raise StoreUnavailableError(f"cannot read the end offsets of {topic!r}; is Kafka up?")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout_s

        def done(pos: dict[int, int], idle_s: float, busy: bool) -> bool:
            if time.monotonic() > deadline:
                raise StoreUnavailableError(f"rebuild did not reach the end of {topic!r} in {timeout_s:.0f}s")
            return not busy and all(hi <= lo or pos.get(p, -1) >= hi for p, (lo, hi) in end.items())

        return _loop(consumer, ends, writer, decoder, settle_ms, done, verbose)
    finally:
        consumer.close()
