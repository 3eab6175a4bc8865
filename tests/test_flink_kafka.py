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
