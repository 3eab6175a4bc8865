"""Shared fixtures. ``stack`` gives integration tests a real Kafka broker and redis-server.

It reuses a healthy stack that is already up (``headwater stack up``), otherwise starts one
(testcontainers when a Docker engine is present, local processes otherwise) and stops only
what it started.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from headwater.config import Connection, StackSettings, load_connection, stack_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_REPO = REPO_ROOT / "examples" / "fraud"
CONFORMANCE_DIR = REPO_ROOT.parent / "shared" / "conformance"


def _healthy(conn: Connection) -> bool:
    from headwater.stack import probe
    redis_addr = conn.redis_url.split("//")[1].split("/")[0]
    return probe("kafka", conn.bootstrap_servers)[0] and probe("redis", redis_addr)[0]


_SUFFIXES: set[str] = set()


def new_suffix() -> str:
    """A short unique suffix for a test's copy of the example (topics, project, groups); the
    session removes what carries it when it ends."""
    s = uuid.uuid4().hex[:8]
    _SUFFIXES.add(s)
    return s


def _remove_test_leftovers(conn: Connection) -> None:
    """Delete the topics, Redis keys and Flink state of this session's copies, so that a
    developer's stack does not grow with every run (``HEADWATER_KEEP=1`` keeps them)."""
    import shutil

    from headwater.teardown import KEEP_ENV, delete_keys
    from headwater.topics import delete_topics, existing_topics
    from online_store.keys import PREFIX
    if not _SUFFIXES or os.environ.get(KEEP_ENV) == "1":
        return
    try:
        delete_topics(conn, [t for t in existing_topics(conn) if re.split(r"[.-]", t)[-1] in _SUFFIXES])
        for d in (stack_dir() / "flink").glob("*_*"):
            if d.name.rsplit("_", 1)[-1] in _SUFFIXES:
                shutil.rmtree(d, ignore_errors=True)
        delete_keys(conn, f"{PREFIX}:*", where=lambda k: k.split(b":")[1].rsplit(b"_", 1)[-1].decode() in _SUFFIXES)
    except Exception as exc:  # noqa: BLE001 - cleanup never fails the session
        print(f"\ntest leftovers not removed ({exc})")


@pytest.fixture(scope="session")
def stack() -> Connection:
    from headwater import compose, stack as local
    try:
        conn = load_connection()
        if (stack_dir() / "connection.json").exists() and _healthy(conn):
            yield conn
            _remove_test_leftovers(conn)
            return
    except Exception:
        pass
    if compose.docker_available() and os.environ.get("HEADWATER_TEST_DOCKER", "1") == "1":
        yield from _testcontainers_stack()
        return
    settings = StackSettings()
    conn = local.up(settings)
    try:
        yield conn
    finally:
        _remove_test_leftovers(conn)
        local.down(settings)


def _testcontainers_stack():
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer
    from headwater import jars
    from headwater.config import save_connection
    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, RedisContainer("redis:7") as redis_c:
        root = stack_dir()
        conn = Connection(
            bootstrap_servers=kafka.get_bootstrap_server(),
            redis_url=f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0",
            flink_jars=tuple(str(p) for p in jars.flink_classpath(root)), mode="docker")
        os.environ["HEADWATER_BOOTSTRAP_SERVERS"] = conn.bootstrap_servers
        os.environ["HEADWATER_REDIS_URL"] = conn.redis_url
        save_connection(conn, root)
        yield conn


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names, so tests never see each other's data."""
    return new_suffix()


@pytest.fixture
def temp_repo(tmp_path: Path, unique: str) -> Path:
    """A copy of the example repository whose topic names carry a unique suffix."""
    from headwater.config import clone_repo
    return clone_repo(EXAMPLE_REPO, tmp_path / "repo", unique)


@pytest.fixture(scope="session")
def conformance_pipeline(stack, tmp_path_factory):
    """Every conformance vector through one streaming Flink job (Kafka -> tiles topic), shared by the
    tests that check its tiles, its fetches and training sets over it: (repo, defs, cases, offsets)."""
    import json
    from headwater.config import clone_repo
    from tests.oracle import feature_view_from_case
    from tests.pipeline import EVENT_TIME, event_schema, pipeline_view, produce_cases, run_job, setup
    from tests.test_conformance_ir import CASES
    suffix = new_suffix()
    repo = setup(stack, clone_repo(EXAMPLE_REPO, tmp_path_factory.mktemp("conf") / "repo", suffix))
    schema = event_schema()
    cases = [json.loads(p.read_text()) for p in CASES]
    views = [pipeline_view(feature_view_from_case(c, event_time_field=EVENT_TIME), repo.topics.events.name, schema)
             for c in cases]
    offsets = produce_cases(stack, repo, schema, [(c["name"], c["view"]["entity"], c["events"]) for c in cases])
    defs = run_job(stack, repo, views, group=f"conf-{suffix}")
    return repo, defs, cases, offsets
