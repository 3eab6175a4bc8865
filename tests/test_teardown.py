"""`headwater teardown` and scratch repositories remove a project's topics, groups, keys and state
from the real broker and redis-server, and nothing of another project."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis

from headwater.config import clone_repo, load_repo, stack_dir
from headwater.teardown import KEEP_ENV, default_groups, find, remove, scratch_repo
from headwater.topics import create_topics, existing_topics
from online_store import keys

pytestmark = pytest.mark.integration


def _leave_traces(conn, repo) -> None:
    """What running the project leaves: topics, a committed group, Redis keys, Flink state."""
    from confluent_kafka import Consumer, TopicPartition
    create_topics(conn, repo.topics)
    c = Consumer({"bootstrap.servers": conn.bootstrap_servers, "group.id": default_groups(repo.project)[1]})
    c.commit(offsets=[TopicPartition(repo.topics.tiles.name, 0, 0)], asynchronous=False)
    c.close()
    r = redis.Redis.from_url(conn.redis_url)
    prefix = f"{keys.PREFIX}:{repo.project}"
    r.hset(f"{prefix}:card_velocity:abc:{{c1}}", "60000:0", b"x")
    r.hset(f"{prefix}:progress:card_velocity:abc", "as_of", 1)
    chk = stack_dir() / "flink" / repo.project / "checkpoints" / "state-v3" / "chk-1"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"x")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headwater.cli", *args], capture_output=True, text=True)


def test_teardown_lists_then_removes_only_its_project(stack, temp_repo, tmp_path):
    repo = load_repo(temp_repo)
    other = load_repo(clone_repo(temp_repo, tmp_path / "other", "o" + uuid.uuid4().hex[:7]))
    _leave_traces(stack, repo)
    _leave_traces(stack, other)

    left = find(repo, stack)
    assert set(left.topics) == {s.name for s in repo.topics.all().values()}
    assert left.groups == (default_groups(repo.project)[1],)
    assert left.redis_keys == 2 and left.flink_dir == stack_dir() / "flink" / repo.project

    dry = _cli("teardown", "--repo", str(temp_repo))
    assert dry.returncode == 0 and "run again with --yes" in dry.stdout, dry.stdout + dry.stderr
    assert find(repo, stack) == left  # listing removes nothing

    done = _cli("teardown", "--repo", str(temp_repo), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    gone = find(repo, stack)
    assert gone.empty, gone
    assert not set(left.topics) & existing_topics(stack)

    kept = find(other, stack)  # the other project is untouched
    assert len(kept.topics) == 7 and kept.redis_keys == 2 and kept.flink_dir is not None and kept.groups
    assert remove(kept, stack) == []
    assert find(other, stack).empty


def test_scratch_repo_removes_on_error_and_keeps_on_request(stack, tmp_path, monkeypatch):
    from tests.conftest import EXAMPLE_REPO
    monkeypatch.delenv(KEEP_ENV, raising=False)
    with pytest.raises(RuntimeError, match="the run's own error"):
        with scratch_repo(EXAMPLE_REPO, tmp_path / "a", uuid.uuid4().hex[:8], stack) as path:
            repo = load_repo(path)
            _leave_traces(stack, repo)
            raise RuntimeError("the run's own error")
    assert find(repo, stack).empty

    monkeypatch.setenv(KEEP_ENV, "1")
    with scratch_repo(EXAMPLE_REPO, tmp_path / "b", uuid.uuid4().hex[:8], stack) as path:
        repo = load_repo(path)
        _leave_traces(stack, repo)
    left = find(repo, stack)
    assert not left.empty
    remove(left, stack)


def test_teardown_without_redis_says_what_to_do(stack, temp_repo):
    import os
    r = subprocess.run([sys.executable, "-m", "headwater.cli", "teardown", "--repo", str(temp_repo)],
                       capture_output=True, text=True, env={**os.environ, "HEADWATER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0] and "headwater stack up" in lines[0]
