"""The local stack launcher against real processes: a second, private stack on other ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from headwater import stack as hwstack
from headwater.config import StackSettings, load_connection
from headwater.errors import StackError

pytestmark = pytest.mark.integration


@pytest.fixture
def private_stack(tmp_path, monkeypatch, stack):
    """A separate stack dir and ports; shares the already-fetched jars to avoid a second fetch."""
    from headwater.config import stack_dir
    shared_jars = stack_dir() / "jars"
    root = tmp_path / "stack"
    root.mkdir()
    if shared_jars.exists():
        (root / "jars").symlink_to(shared_jars, target_is_directory=True)
    monkeypatch.setenv("HEADWATER_STACK_DIR", str(root))
    monkeypatch.delenv("HEADWATER_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("HEADWATER_REDIS_URL", raising=False)
    settings = StackSettings(kafka_port=_free_port_pair(), redis_port=_free_port())
    yield settings
    hwstack.down(settings, progress=lambda _m: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_pair() -> int:
    for _ in range(50):
        p = _free_port()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", p + 1)) != 0:
                return p
    raise RuntimeError("no free port pair")


def test_up_status_kill_restart_down(private_stack):
    s = private_stack
    conn = hwstack.up(s, progress=lambda _m: None)
    assert conn.bootstrap_servers == f"127.0.0.1:{s.kafka_port}"
    assert load_connection().redis_url == conn.redis_url  # written to the one connection file
    assert conn.flink_jars and all(p.endswith(".jar") for p in conn.flink_jars)
    rows = {r.name: r for r in hwstack.status(s)}
    assert rows["kafka"].healthy and rows["redis"].healthy

    # a killed redis is noticed by status
    os.kill(rows["redis"].pid, signal.SIGKILL)
    time.sleep(0.5)
    rows = {r.name: r for r in hwstack.status(s)}
    assert not rows["redis"].running and not rows["redis"].healthy
    assert "gone" in rows["redis"].detail
    assert rows["kafka"].healthy

    # up is idempotent: kafka is left alone, redis comes back
    kafka_pid = rows["kafka"].pid
    msgs: list[str] = []
    hwstack.up(s, progress=msgs.append)
    assert any("kafka: already running" in m for m in msgs)
    rows = {r.name: r for r in hwstack.status(s)}
    assert rows["kafka"].pid == kafka_pid and rows["redis"].healthy

    assert "redis" in hwstack.logs(s, "redis")
    hwstack.down(s, progress=lambda _m: None)
    rows = {r.name: r for r in hwstack.status(s)}
    assert not rows["kafka"].running and not rows["redis"].running
    assert not os.path.exists(f"/proc/{kafka_pid}") or open(f"/proc/{kafka_pid}/stat").read().split(") ")[1].startswith("Z")


def test_port_in_use_is_one_line_error(private_stack):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", private_stack.redis_port))
        blocker.listen(1)
        with pytest.raises(StackError, match=r"port \d+ for redis is already in use.*--redis-port"):
            hwstack.up(private_stack, progress=lambda _m: None)
    # nothing was left half-started
    assert all(not r.running for r in hwstack.status(private_stack))


def test_cli_status_exit_code_and_corrupt_config(private_stack, tmp_path):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "headwater.cli", "stack", "status"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "down" in out.stdout
    (tmp_path / "stack" / "connection.json").write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "headwater.cli", "consume", "--repo", "examples/fraud"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "corrupt connection file" in out.stderr
    assert "stack up" in out.stderr


def test_missing_java_and_maven_are_one_line_errors(private_stack, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(StackError, match="Java 17 is not on PATH"):
        hwstack.up(private_stack, progress=lambda _m: None)
    from headwater import jars
    with pytest.raises(StackError, match=r"Maven \(mvn\) is not on PATH"):
        jars.fetch(jars.ArtifactSet("nothing", (jars.Artifact("org.example", "x", "1"),)), tmp_path)


def test_unresolvable_artifact_names_maven(tmp_path):
    from headwater import jars
    bogus = jars.ArtifactSet("bogus", (jars.Artifact("org.apache.flink", "no-such-artifact-hw", "0.0.1"),))
    with pytest.raises(StackError, match="Maven could not resolve the bogus jars"):
        jars.fetch(bogus, tmp_path, quiet=True)


def test_redis_missing_and_apt_not_permitted_is_one_line_error(monkeypatch):
    import shutil as _shutil
    real_which = _shutil.which
    monkeypatch.setattr(hwstack.shutil, "which", lambda name: None if name in ("redis-server", "apt-get") else real_which(name))
    monkeypatch.setattr(hwstack.os, "geteuid", lambda: 1000)
    with pytest.raises(StackError, match="redis-server is not on PATH and cannot be installed here.*HEADWATER_REDIS_URL"):
        hwstack.redis_server_binary(progress=lambda _m: None)


def test_cluster_id_never_starts_with_a_dash(monkeypatch):
    """kafka-storage parses an id starting with '-' as an option; CI once failed on exactly that."""
    import uuid
    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # url-safe base64 of 0xf8.. starts with '-'
    draws = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(hwstack.uuid, "uuid4", lambda: next(draws))
    cid = hwstack._cluster_id()
    assert not cid.startswith("-")
    assert cid == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_a_bare_stack_up_keeps_the_ports_of_the_last_one(tmp_path, monkeypatch):
    """`setup.sh --kafka-port 19092 ...` then `stack up`: the second must not probe 9092 (another
    stack may live there) nor point the connection file at it."""
    import argparse
    from headwater.cli import _stack_settings
    from headwater.config import StackSettings
    monkeypatch.setenv("HEADWATER_STACK_DIR", str(tmp_path))
    args = argparse.Namespace(action="up", kafka_port=None, redis_port=None)
    assert (_stack_settings(args).kafka_port, _stack_settings(args).redis_port) == (9092, 6379)  # nothing saved
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text(StackSettings(kafka_port=19092, redis_port=16379).model_dump_json())
    got = _stack_settings(args)
    assert (got.kafka_port, got.redis_port) == (19092, 16379)
    got = _stack_settings(argparse.Namespace(action="up", kafka_port=29092, redis_port=None))
    assert (got.kafka_port, got.redis_port) == (29092, 16379)
