"""The feature log: what each online fetch returned, and up to when it was complete.

One record (``schemas/avro/feature_log.avsc``) per (input row, view) of a fetch: the entity, the
query time ``t_ms``, that view's ``as_of_ms`` and the requested values by ``"view:feature"`` ref.
The parity checker (``backfill.parity``) recomputes exactly those values offline at
``(t_ms, as_of_ms)`` and demands equality, so the log must carry the values *as served*: it is
built from the ``FetchResult`` itself, never re-read from Redis.

Sampling is decided per input row from a stable hash of ``(seed, event id or entity, t)``, not a
random generator: a row is logged with all its views or not at all, and a rerun samples the same
rows. ``as_of_ms`` is 0 when the writer had not published one yet (nothing proven complete).
Booleans go on the wire as 0/1 (the Avro union has no boolean branch); ``True == 1`` in Python,
so parity comparisons are unaffected.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from online_store.errors import OnlineStoreError

if TYPE_CHECKING:
    from headwater.config import Connection, RepoConfig
    from online_store.reader import FetchResult
    from streamjobs.plan import FeaturePlan

__all__ = ["records", "FeatureLogWriter", "read", "write_file", "skipped", "FeatureLogError", "META_COLUMNS"]

#: Columns of ``read``'s table before the one-column-per-ref values.
META_COLUMNS = ("event_id", "entity_key", "entity", "t_ms", "as_of_ms", "plan_hash", "features")


class FeatureLogError(OnlineStoreError):
    """A feature-log source that cannot be read (missing file, unknown suffix, undecodable topic)."""


def _keep(key: str, seed: int, rate: float) -> bool:
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return zlib.crc32(f"{seed}|{key}".encode()) < rate * 2**32


def _py(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def records(result: FetchResult, plan: FeaturePlan, *, event_ids: Sequence[str | None] | None = None,
            sample_rate: float = 1.0, seed: int = 0) -> list[dict[str, Any]]:
    """Feature-log records of ``result``: one per (input row, view), row-major, views in ref order.

    ``event_ids``: row-aligned ids of the scored events (None outside scoring). ``sample_rate``
    keeps about that fraction of rows, deterministically for a given ``seed``."""
    n = len(result.entities)
    if event_ids is not None and len(event_ids) != n:
        raise FeatureLogError(f"event_ids has {len(event_ids)} ids for {n} fetched rows: pass one per row")
    by_view: dict[str, list[str]] = {}
    for ref in result.features:
        by_view.setdefault(ref.partition(":")[0], []).append(ref)
    views = []
    for name, refs in by_view.items():
        v = plan.view(name)
        ids = result.entity_columns[v.entity] if result.entity_columns else result.entities
        cols = []
        for ref in refs:
            vals, null = result.numpy(ref)
            py = vals.tolist()
            cols.append([None if m else _py(x) for x, m in zip(py, null.tolist())])
        as_of = result.as_of_ms.get(name)
        views.append((v, ids, refs, cols, 0 if as_of is None else int(as_of)))
    t = int(result.t_ms)
    out: list[dict[str, Any]] = []
    for i in range(n):
        eid = None if event_ids is None else event_ids[i]
        if sample_rate < 1.0 and not _keep(f"{eid if eid is not None else result.entities[i]}|{t}", seed, sample_rate):
            continue
        for v, ids, refs, cols, as_of in views:
            out.append({"event_id": eid, "entity_key": v.entity_key, "entity": str(ids[i]), "t_ms": t,
                        "as_of_ms": as_of, "values": {r: c[i] for r, c in zip(refs, cols)},
                        "features": list(refs), "plan_hash": v.plan_hash})
    return out


class FeatureLogWriter:
    """Produces feature-log records (framed Avro, key = entity) without flushing: the caller
    flushes with its own outputs (the scoring consumer commits offsets only after that)."""

    def __init__(self, producer: Any, topic: str, codec: Any) -> None:
        self.producer, self.topic, self.codec = producer, topic, codec
        self.written = 0

    @classmethod
    def for_repo(cls, conn: Connection, repo: RepoConfig, producer: Any = None) -> FeatureLogWriter:
        """Writer for the repository's ``feature_log`` topic role (registers the schema if needed)."""
        from headwater.repo_schemas import codec_for
        if producer is None:
            from confluent_kafka import Producer
            producer = Producer({"bootstrap.servers": conn.bootstrap_servers,
                                 "linger.ms": 20,  # batch log records; latency here is not user-facing
                                 "enable.idempotence": True})  # a retried send must not log a fetch twice
        return cls(producer, repo.topics.feature_log.name, codec_for(repo, "feature_log"))

    def write(self, recs: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for r in recs:
            value, key = self.codec.encode(r), str(r["entity"]).encode()
            while True:
                try:
                    self.producer.produce(self.topic, value, key)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self.producer.poll(0.1)
            n += 1
        self.producer.poll(0)
        self.written += n
        return n

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise FeatureLogError(f"{left} feature-log records not delivered to {self.topic} within "
                                  f"{timeout_s:.0f}s: check that Kafka is reachable")


# ---------------------------------------------------------------- reading back


def to_table(recs: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Records -> the ``read`` table: meta columns, then one column per ref (first-seen order);
    a ref a record did not request is null there (its ``features`` list says which it did)."""
    refs: dict[str, None] = {}
    for r in recs:
        refs.update(dict.fromkeys(r["features"]))
    cols: dict[str, pa.Array] = {
        "event_id": pa.array([r.get("event_id") for r in recs], pa.string()),
        "entity_key": pa.array([r["entity_key"] for r in recs], pa.string()),
        "entity": pa.array([r["entity"] for r in recs], pa.string()),
        "t_ms": pa.array([r["t_ms"] for r in recs], pa.int64()),
        "as_of_ms": pa.array([r["as_of_ms"] for r in recs], pa.int64()),
        "plan_hash": pa.array([r["plan_hash"] for r in recs], pa.string()),
        "features": pa.array([list(r["features"]) for r in recs], pa.list_(pa.string())),
    }
    for ref in refs:
        vals = [r["values"].get(ref) for r in recs]
        try:
            cols[ref] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds: keep them readable as text
            cols[ref] = pa.array([None if v is None else str(v) for v in vals], pa.string())
        if pa.types.is_null(cols[ref].type):
            cols[ref] = cols[ref].cast(pa.float64())
    return pa.table(cols)


def write_file(recs: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Records to ``.jsonl`` (appended, one record a line) or ``.parquet`` (the ``read`` table)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open("a", encoding="utf-8") as fh:
            for r in recs:
                fh.write(json.dumps(r, allow_nan=True) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pq.write_table(to_table(list(recs)), path)
    else:
        raise FeatureLogError(f"feature log file {path}: use a .jsonl or .parquet name")
    return path


#: What ``to_table`` reads from every record (``event_id`` may be absent).
_REQUIRED = {"entity_key": str, "entity": str, "t_ms": int, "as_of_ms": int, "plan_hash": str,
             "features": list, "values": dict}
#: ``read``'s table metadata key: how many records were skipped as unusable (``skipped``).
_SKIPPED = b"headwater.feature_log.skipped"


def _usable(rec: Any) -> bool:
    """Whether a record has every field ``to_table`` reads, of the right kind."""
    return isinstance(rec, dict) and all(isinstance(rec.get(k), t) for k, t in _REQUIRED.items())


def skipped(table: pa.Table) -> int:
    """How many records ``read`` skipped (undecodable, or missing fields) to build ``table``."""
    meta = table.schema.metadata or {}
    return int(meta.get(_SKIPPED, b"0"))


class _Skips:
    """Counts unusable records and logs the first few, naming where they are: parity checks the
    rest exactly (each logged fetch is checked on its own), and reports how many it could not."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, where: str, why: Any) -> None:
        import logging
        self.n += 1
        if self.n <= 5:
            logging.getLogger("headwater.feature_log").warning("feature log: %s skipped (%s)", where, why)


def _read_jsonl(path: Path, skip: _Skips) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise FeatureLogError(f"{path}:{i} is not a JSON record ({exc}); "
                                      f"write feature logs with feature_log.write_file") from exc
            if _usable(rec):
                out.append(rec)
            else:
                skip(f"{path}:{i}", f"not a feature-log record: needs {', '.join(_REQUIRED)}")
    return out


def _decode(value: bytes, codecs: dict[int, Any], store: Any, parsed: Any) -> dict[str, Any]:
    """One framed Avro value; raises ``DecodeError`` (or fastavro's errors) on bad bytes."""
    import io

    import fastavro
    from schemas import AvroCodec, DecodeError

    if len(value) < 5 or value[0] != 0:
        raise DecodeError("bad_magic", "not Confluent-framed Avro", bytes(value))
    sid = struct.unpack(">I", value[1:5])[0]
    if sid not in codecs:
        codecs[sid] = AvroCodec(store.get_by_id(sid), sid, store) if store is not None else None
    if codecs[sid] is not None:
        return codecs[sid].decode(value)
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, None)  # no store: the packaged schema


def _read_topic(topic: str, conn: Connection, store: Any, timeout_s: float, skip: _Skips) -> list[dict[str, Any]]:
    """Every record from the start to the end offsets seen on entry (a bounded read). Records that
    do not decode (bad framing, an unregistered id, bad bytes) or lack fields are skipped and
    counted: the topic keeps them, so failing on one would fail every later parity run."""
    import fastavro
    from headwater.topic_read import read_to_end
    from schemas import load_schema
    from schemas.errors import SchemaStoreError, UnknownSchemaIdError

    parsed = fastavro.parse_schema(load_schema("feature_log"))
    codecs: dict[int, Any] = {}
    out: list[dict[str, Any]] = []
    for batch in read_to_end(conn.bootstrap_servers, topic, timeout_s=timeout_s, error=FeatureLogError,
                             if_missing="run `headwater topics create` or pass --feature-log FILE.jsonl"):
        for m in batch:
            if not m.value():
                continue
            where = f"{topic}[{m.partition()}]@{m.offset()}"
            try:
                rec = _decode(m.value(), codecs, store, parsed)
            except UnknownSchemaIdError as exc:
                skip(where, exc)
                continue
            except SchemaStoreError as exc:  # the store is down: nothing is known about any record
                raise FeatureLogError(f"cannot decode {where}: schema store unavailable ({exc}); "
                                      "retry once it answers") from exc
            except Exception as exc:  # DecodeError, anything fastavro raises on bad bytes
                skip(where, exc)
                continue
            if _usable(rec):
                out.append(rec)
            else:
                skip(where, "not a feature-log record (written with another schema?)")
    return out


def read(source: str | Path, *, connection: Connection | None = None, repo: RepoConfig | None = None,
         timeout_s: float = 60.0) -> pa.Table:
    """The log as a table (``META_COLUMNS`` + one column per ref) from a ``.jsonl``/``.parquet``
    file or a topic (a name, or the ``feature_log`` role of ``repo`` when ``source`` is ``"topic"``).
    Unusable records are skipped; ``skipped(table)`` says how many."""
    text = str(source)
    skip = _Skips()
    if text.endswith((".jsonl", ".parquet")):
        path = Path(text)
        if not path.is_file():
            raise FeatureLogError(f"feature log file {path} not found: pass an existing .jsonl/.parquet file or a topic")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        return _counted(to_table(_read_jsonl(path, skip)), skip)
    store = None
    if repo is not None:
        from schemas import open_store
        store = open_store(repo.resolve(repo.schema_store), repo.schema_registry_url)
        if text == "topic":
            text = repo.topics.feature_log.name
    if connection is None:
        from headwater.config import load_connection
        connection = load_connection()
    return _counted(to_table(_read_topic(text, connection, store, timeout_s, skip)), skip)


def _counted(table: pa.Table, skip: _Skips) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), _SKIPPED: str(skip.n).encode()})

