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
