"""PyFlink 2.2 with the official flink-sql-connector-kafka 5.0.0-2.2 reads and writes real topics."""

from __future__ import annotations

import pytest

from headwater import jars

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def test_connector_matches_flink_minor():
    import importlib.metadata as md
    pyflink = md.version("apache-flink")
    assert pyflink == jars.FLINK_VERSION
    minor = ".".join(pyflink.split(".")[:2])
    assert jars.FLINK_KAFKA_CONNECTOR.endswith(f"-{minor}"), "connector must be built for this Flink minor"


def test_pyflink_reads_and_writes_kafka(stack, unique):
    from confluent_kafka import Consumer, Producer
    from streamjobs.job import table_env

    src, dst = f"flink-in-{unique}", f"flink-out-{unique}"
    p = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for i in range(50):
        p.produce(src, key=f"k{i % 5}".encode(), value=f'{{"k": "k{i % 5}", "v": {i}}}'.encode())
    assert p.flush(30) == 0

    env = table_env(stack, mode="streaming")
    env.execute_sql(f"""
        CREATE TABLE src (k STRING, v BIGINT,
            ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
            part INT METADATA FROM 'partition' VIRTUAL, off BIGINT METADATA FROM 'offset' VIRTUAL)
        WITH ('connector' = 'kafka', 'topic' = '{src}',
              'properties.bootstrap.servers' = '{stack.bootstrap_servers}',
              'properties.group.id' = 'hw-{unique}', 'scan.startup.mode' = 'earliest-offset',
              'scan.bounded.mode' = 'latest-offset', 'format' = 'json')""")
    env.execute_sql(f"""
        CREATE TABLE dst (k STRING, n BIGINT, total BIGINT, PRIMARY KEY (k) NOT ENFORCED)
        WITH ('connector' = 'upsert-kafka', 'topic' = '{dst}',
              'properties.bootstrap.servers' = '{stack.bootstrap_servers}',
              'key.format' = 'json', 'value.format' = 'json')""")
    env.execute_sql("INSERT INTO dst SELECT k, COUNT(*), SUM(v) FROM src GROUP BY k").wait(180_000)

    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"chk-{unique}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([dst])
    import json
    latest: dict[str, dict] = {}
    for _ in range(40):
        for m in c.consume(100, timeout=0.5):
            if not m.error() and m.value() is not None:
                latest[json.loads(m.key())["k"]] = json.loads(m.value())
        if len(latest) == 5 and all(v["n"] == 10 for v in latest.values()):
            break
    c.close()
    assert {k: v["n"] for k, v in latest.items()} == {f"k{i}": 10 for i in range(5)}
    assert sum(v["total"] for v in latest.values()) == sum(range(50))


def test_headwater_avro_format_reads_and_writes_confluent_framing(stack, temp_repo, unique):
    """Events framed by our Python codec are read by Flink, re-framed by Flink, decoded by Python."""
    from headwater.config import load_repo
    from headwater.repo_schemas import codec_for
    from headwater.topics import create_topics
    from headwater.generator import GeneratorConfig, generate_table
    from confluent_kafka import Consumer, Producer
    from schemas import AvroCodec, open_store
    from streamjobs.avro_ddl import ddl_columns
    from streamjobs.job import table_env

    repo = load_repo(temp_repo)
    create_topics(stack, repo.topics)
    codec = codec_for(repo, "events")
    events, _ = generate_table(GeneratorConfig(rate=200, entities=20, duration_s=1, seed=5))
    p = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for rec in events.to_pylist():
        p.produce(repo.topics.events.name, codec.encode(rec), rec["card_id"].encode())
    p.produce(repo.topics.events.name, b"\x01garbage")  # skipped, not fatal
    p.produce(repo.topics.events.name, codec.encode(rec)[:9])  # truncated body: skipped
    assert p.flush(30) == 0

    out_topic = f"flink-avro-out-{unique}"
    out_codec = AvroCodec.for_subject(open_store(repo.resolve(repo.schema_store)), f"{out_topic}-value",
                                      codec.schema)
    cols = ", ".join(f"`{n}` {t}" for n, t in ddl_columns(codec.schema))
    env = table_env(stack, mode="streaming")
    common = f"'properties.bootstrap.servers' = '{stack.bootstrap_servers}'"
    env.execute_sql(f"""CREATE TABLE ev ({cols}) WITH ('connector' = 'kafka',
        'topic' = '{repo.topics.events.name}', {common}, 'properties.group.id' = 'g-{unique}',
        'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
        'format' = 'headwater-avro', 'headwater-avro.schema-id' = '{codec.schema_id}')""")
    env.execute_sql(f"""CREATE TABLE outt ({cols}) WITH ('connector' = 'kafka', 'topic' = '{out_topic}',
        {common}, 'format' = 'headwater-avro', 'headwater-avro.schema-id' = '{out_codec.schema_id}')""")
    env.execute_sql("INSERT INTO outt SELECT * FROM ev").wait(180_000)

    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"chk-{unique}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([out_topic])
    got = []
    for _ in range(40):
        got += [out_codec.decode(m.value()) for m in c.consume(1000, timeout=0.5) if not m.error()]
        if len(got) >= events.num_rows:
            break
    c.close()
    assert sorted(got, key=lambda r: r["event_id"]) == sorted(events.to_pylist(), key=lambda r: r["event_id"])


_COLUMNS = ("b1 BOOLEAN, b2 BOOLEAN NOT NULL, i1 INT, i2 INT NOT NULL, l1 BIGINT, l2 BIGINT NOT NULL, f1 FLOAT, "
            "d1 DOUBLE, d2 DOUBLE NOT NULL, s1 STRING, s2 STRING NOT NULL, a1 ARRAY<STRING>, a2 ARRAY<BIGINT NOT NULL>")
_STRINGS = ["", "a", "card-000042", "é", "\ue000", "\U0001f600", "Ω" * 40]
_DOUBLES = [0.0, -0.0, 1.5, -2.25e300, 5e-324, float("nan"), float("inf"), float("-inf")]
_LONGS = [0, 1, -1, 63, 64, -65, 2**31 - 1, -2**31, 2**63 - 1, -2**63]
_INTS = [v for v in _LONGS if -2**31 <= v < 2**31]


def _rows(n: int, seed: int = 3) -> list[tuple]:
    import random
    rng = random.Random(seed)

    def null(v):
        return None if rng.random() < 0.25 else v

    def arr():
        return [null(rng.choice(_STRINGS)) for _ in range(rng.randint(0, 4))]

    return [(null(rng.random() < 0.5), rng.random() < 0.5, null(rng.choice(_INTS)), rng.choice(_INTS),
             null(rng.choice(_LONGS)), rng.choice(_LONGS), null(rng.choice(_DOUBLES)), null(rng.choice(_DOUBLES)),
             rng.choice(_DOUBLES), null(rng.choice(_STRINGS)), rng.choice(_STRINGS), null(arr()),
             [rng.choice(_LONGS) for _ in range(rng.randint(0, 3))]) for _ in range(n)]


def test_headwater_avro_writes_the_bytes_of_flinks_avro_format(stack, unique):
    """Our direct encoder (every type it takes, NULLs, empty arrays, NaN, -0.0, extreme ints, text
    beyond the BMP) and the fallback for other types write exactly Flink's `avro` bytes."""
    from confluent_kafka import Consumer

    from streamjobs.job import table_env

    from pyflink.table import DataTypes as T

    env = table_env(stack, mode="batch")
    common = f"'connector' = 'kafka', 'properties.bootstrap.servers' = '{stack.bootstrap_servers}'"
    rows = _rows(300)
    schema = T.ROW([T.FIELD(c.split()[0], t) for c, t in zip(_COLUMNS.split(", "), [
        T.BOOLEAN(), T.BOOLEAN(False), T.INT(), T.INT(False), T.BIGINT(), T.BIGINT(False), T.FLOAT(), T.DOUBLE(),
        T.DOUBLE(False), T.STRING(), T.STRING(False), T.ARRAY(T.STRING()), T.ARRAY(T.BIGINT(False))])])
    env.create_temporary_view("src", env.from_elements(rows, schema))
    topics = {}
    for name, cols, select in [
            ("direct", _COLUMNS, "SELECT * FROM src"),
            ("fallback", _COLUMNS + ", ts TIMESTAMP(3)", "SELECT *, TIMESTAMP '2026-01-02 03:04:05.678' FROM src")]:
        for fmt in ("avro", "headwater-avro"):
            topic = topics[(name, fmt)] = f"avro-bytes-{name}-{fmt}-{unique}"
            opts = "'format' = 'avro'" if fmt == "avro" else "'format' = 'headwater-avro', 'headwater-avro.schema-id' = '77'"
            env.execute_sql(f"CREATE TEMPORARY TABLE `{topic}` ({cols}) WITH ({common}, 'topic' = '{topic}', {opts})")
            env.execute_sql(f"INSERT INTO `{topic}` {select}").wait(180_000)

    def read(topic):
        c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"chk-{topic}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        got = []
        for _ in range(60):
            got += [m.value() for m in c.consume(1000, timeout=0.5) if not m.error()]
            if len(got) >= len(rows):
                break
        c.close()
        return sorted(got)

    for name in ("direct", "fallback"):
        flink, ours = read(topics[(name, "avro")]), read(topics[(name, "headwater-avro")])
        assert len(flink) == len(ours) == len(rows)
        assert {m[:5] for m in ours} == {b"\x00\x00\x00\x00\x4d"}
        assert sorted(m[5:] for m in ours) == flink, name


# Schema evolution: the reader (the job's schema) and writers a producer may have used.
_READER = {"type": "record", "name": "Txn", "namespace": "hw.test", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "double"}, {"name": "country", "type": ["null", "string"], "default": None},
    {"name": "channel", "type": "string", "default": "web"},
    {"name": "tags", "type": ["null", {"type": "array", "items": "string"}], "default": None},
    {"name": "event_time", "type": "long"}]}
_OLDER = {"type": "record", "name": "Txn", "namespace": "hw.test", "fields": [  # float amount, fewer fields
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "float"}, {"name": "event_time", "type": "long"}]}
_NEWER = {"type": "record", "name": "Txn", "namespace": "hw.test", "fields": [  # reordered, one more field
    {"name": "event_time", "type": "long"}, {"name": "risk", "type": "int"},
    {"name": "card_id", "type": "string"}, {"name": "event_id", "type": "string"},
    {"name": "channel", "type": "string"}, {"name": "country", "type": "string"},
    {"name": "tags", "type": {"type": "array", "items": "string"}}, {"name": "amount", "type": "double"}]}
_BROKEN = {"type": "record", "name": "Txn", "namespace": "hw.test", "fields": [  # amount cannot become a double
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "string"}, {"name": "event_time", "type": "long"}]}


def _framed(schema: dict, schema_id: int, rec: dict) -> bytes:
    import io
    import fastavro
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def _evolved(kind: str, i: int) -> dict:
    base = {"event_id": f"{kind}-{i}", "card_id": f"c{i % 7}", "amount": 0.25 * i, "event_time": 1_700_000_000_000 + i}
    if kind == "newer":
        return {**base, "risk": i, "channel": "pos", "country": "FR", "tags": [f"t{i}", "x"]}
    if kind == "reader":
        return {**base, "country": None if i % 2 else "DE", "channel": "app", "tags": None if i % 3 else ["a"]}
    if kind == "broken":
        return {**base, "amount": str(i)}
    return base


def _registry_endpoint(store):
    """``GET /schemas/ids/<id>`` of the Schema Registry REST API over ``store``: the one call the
    format makes (no Confluent registry installs here; the Python client is tested in test_schemas)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from schemas.errors import UnknownSchemaIdError

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            head, _, sid = self.path.rpartition("/")
            try:
                if head != "/schemas/ids":
                    raise UnknownSchemaIdError(-1, "path")
                body, status = {"schema": json.dumps(store.get_by_id(int(sid)))}, 200
            except (UnknownSchemaIdError, ValueError):
                body, status = {"error_code": 40403, "message": "Schema not found"}, 404
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("where", ["file", "registry"])
def test_headwater_avro_resolves_records_under_other_schema_ids(stack, tmp_path, unique, where):
    """Records written under older and newer versions of a topic's schema reach the job resolved to its
    schema exactly as the scoring consumer (fastavro) resolves them, also under an id registered after
    the job started; ids nobody registered, writers that do not resolve and garbage are skipped.
    The source uses the marker column, as the streaming features job does."""
    import time
    from confluent_kafka import Consumer, Producer
    from schemas import AvroCodec, FileSchemaStore
    from streamjobs.avro_ddl import ddl_columns
    from streamjobs.job import table_env

    store = FileSchemaStore(tmp_path / "schema_registry.json")
    subject = f"evolve-{unique}-value"
    ids = {k: store.register(subject, s) for k, s in (("reader", _READER), ("older", _OLDER), ("broken", _BROKEN))}
    ids["newer"] = max(ids.values()) + 1  # not registered yet
    src, out = f"evolve-in-{unique}", f"evolve-out-{unique}"  # auto-created by the first write
    p = Producer({"bootstrap.servers": stack.bootstrap_servers})
    sent: list[bytes] = []

    def produce(kind: str, n: int, keep: bool) -> None:
        schema = {"reader": _READER, "older": _OLDER, "newer": _NEWER, "broken": _BROKEN}[kind]
        for i in range(n):
            v = _framed(schema, ids[kind], _evolved(kind, i + len(sent) * 1000))
            p.produce(src, v)
            if keep:
                sent.append(v)
        assert p.flush(30) == 0

    produce("reader", 20, True)
    produce("older", 20, True)
    produce("newer", 5, False)  # its id is not registered yet: skipped
    produce("broken", 5, False)
    p.produce(src, b"\x00\x00\x00\x00")  # truncated header
    assert p.flush(30) == 0

    server = _registry_endpoint(store) if where == "registry" else None
    location = f"http://127.0.0.1:{server.server_port}" if server else str(store.path)
    cols = ", ".join(f"`{n}` {t}" for n, t in ddl_columns(_READER))
    names = ", ".join(f"`{n}`" for n, _ in ddl_columns(_READER))
    env = table_env(stack, mode="streaming")
    common = f"'properties.bootstrap.servers' = '{stack.bootstrap_servers}'"
    env.execute_sql(f"""CREATE TABLE ev ({cols}, hw_marked BIGINT NOT NULL) WITH ('connector' = 'kafka',
        'topic' = '{src}', {common}, 'properties.group.id' = 'g-{unique}', 'scan.startup.mode' = 'earliest-offset',
        'format' = 'headwater-avro', 'headwater-avro.schema-id' = '{ids["reader"]}', 'headwater-avro.mark-every' = '3',
        'headwater-avro.schema-store' = '{location}')""")
    env.execute_sql(f"""CREATE TABLE outt ({cols}) WITH ('connector' = 'kafka', 'topic' = '{out}',
        {common}, 'format' = 'headwater-avro', 'headwater-avro.schema-id' = '{ids["reader"]}')""")
    job = env.execute_sql(f"INSERT INTO outt SELECT {names} FROM ev WHERE hw_marked = 0")
    reader = AvroCodec(_READER, ids["reader"], store)
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"chk-{unique}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([out])
    got: list[dict] = []

    def read_until(n: int) -> None:
        deadline = time.monotonic() + 120
        while len(got) < n and time.monotonic() < deadline:
            got.extend(reader.decode(m.value()) for m in c.consume(1000, timeout=0.5) if not m.error())

    try:
        read_until(40)
        assert len(got) == 40
        time.sleep(1.5)  # past WriterSchemas.RETRY_MS since the job last looked the new id up
        assert store.register(subject, _NEWER) == ids["newer"]
        produce("newer", 15, True)
        produce("reader", 5, True)
        read_until(60)
        for _ in range(4):  # nothing more arrives: the skipped records stay skipped
            got.extend(reader.decode(m.value()) for m in c.consume(1000, timeout=0.5) if not m.error())
    finally:
        c.close()
        job.get_job_client().cancel().result()
        if server:
            server.shutdown()
    key = lambda r: r["event_id"]  # noqa: E731
    assert sorted(got, key=key) == sorted((reader.decode(v) for v in sent), key=key)
    assert {r["channel"] for r in got} == {"web", "app", "pos"}  # the default, and both writers' values
    older = [r for r in got if r["event_id"].startswith("older")]
    assert len(older) == 20 and all(r["country"] is None and r["channel"] == "web" for r in older)
