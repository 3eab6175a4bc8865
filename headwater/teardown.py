"""Remove what a project left on the stack: its topics, consumer groups, Redis keys and Flink state.

Demos, benchmarks and tests clone the example repository under a fresh suffix
(``config.clone_repo``) so that runs never share data. Nothing removed those copies' data, and a
developer's stack had gathered ~1,000 topics with 20 GB of logs and 2.5 GB of checkpoints.
The repository directory itself (schema store, model registry) is the user's and is left alone.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from headwater.config import (DEFAULT_GROUP_ROLES, Connection, RepoConfig, clone_repo, default_group, load_connection,
                              load_repo, stack_dir)
from headwater.errors import StackError
from online_store.keys import project_pattern

__all__ = ["Leftovers", "find", "remove", "delete_keys", "scratch_repo", "default_groups", "KEEP_ENV"]

KEEP_ENV = "HEADWATER_KEEP"
"""Set to 1 to keep a scratch repository's topics, keys and state after the run (to debug it)."""


@dataclass(frozen=True)
class Leftovers:
    project: str
    topics: tuple[str, ...]
    groups: tuple[str, ...]
    redis_keys: int
    flink_dir: Path | None

    @property
    def empty(self) -> bool:
        return not (self.topics or self.groups or self.redis_keys or self.flink_dir)

    def summary(self) -> str:
        parts = [f"{len(self.topics)} topic(s)", f"{len(self.groups)} consumer group(s)",
                 f"{self.redis_keys} Redis key(s)", f"Flink state {self.flink_dir}" if self.flink_dir else "no Flink state"]
        return f"project {self.project}: " + ", ".join(parts)


def default_groups(project: str) -> tuple[str, ...]:
    """The consumer groups Headwater's commands use for a project when no ``--group`` is given."""
    return tuple(default_group(project, role) for role in DEFAULT_GROUP_ROLES)


def _redis(conn: Connection):
    from online_store.repo_fetch import redis_client
    return redis_client(conn.redis_url)


def _key_names(conn: Connection, pattern: str) -> list[bytes]:
    import redis
    try:
        return list(_redis(conn).scan_iter(match=pattern, count=5000))
    except (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException) as exc:
        raise StackError(f"cannot reach Redis at {conn.redis_url} ({exc}): run `headwater stack up` "
                         f"or set HEADWATER_REDIS_URL") from exc


def delete_keys(conn: Connection, pattern: str, where: Callable[[bytes], bool] | None = None) -> int:
    """UNLINK every key matching the SCAN ``pattern`` (and ``where``, if given); returns how many."""
    keys = [k for k in _key_names(conn, pattern) if where is None or where(k)]
    client = _redis(conn)
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])
    return len(keys)


def find(repo: RepoConfig, conn: Connection | None = None, timeout_s: float = 10.0) -> Leftovers:
    """What of ``repo``'s project exists now (reads only)."""
    from confluent_kafka import ConsumerGroupState

    from headwater.topics import admin, existing_topics
    conn = conn or load_connection()
    names = {spec.name for spec in repo.topics.all().values()}
    topics = tuple(sorted(names & existing_topics(conn, timeout_s)))
    client = admin(conn)  # held: futures of a collected client never complete
    described = client.describe_consumer_groups(list(default_groups(repo.project)), request_timeout=timeout_s)
    groups = tuple(g for g, fut in described.items() if fut.result().state != ConsumerGroupState.DEAD)  # DEAD: none
    flink = stack_dir() / "flink" / repo.project
    return Leftovers(repo.project, topics, groups, len(_key_names(conn, project_pattern(repo.project))),
                     flink if flink.exists() else None)


def remove(left: Leftovers, conn: Connection | None = None, timeout_s: float = 30.0) -> list[str]:
    """Delete what ``find`` listed; returns what could not be deleted, each with what to do."""
    from headwater.topics import admin, delete_topics
    conn = conn or load_connection()
    delete_topics(conn, left.topics, timeout_s)
    problems = []
    if left.groups:
        client = admin(conn)  # held while its futures run
        for group, fut in client.delete_consumer_groups(list(left.groups), request_timeout=timeout_s).items():
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - a group in use is reported, the rest still goes
                problems.append(f"consumer group {group} not deleted ({exc}): stop the process using it "
                                f"(scorer, writer, features job) and run `headwater teardown` again")
    delete_keys(conn, project_pattern(left.project))
    if left.flink_dir is not None:
        shutil.rmtree(left.flink_dir, ignore_errors=True)
    return problems


@contextmanager
def scratch_repo(src: Path, dest: Path, suffix: str, conn: Connection | None = None) -> Iterator[Path]:
    """A suffixed copy of ``src`` (``clone_repo``) whose topics, keys and Flink state are removed
    when the block ends, unless ``HEADWATER_KEEP=1``."""
    path = clone_repo(src, dest, suffix)
    try:
        yield path
    finally:
        if os.environ.get(KEEP_ENV) != "1":
            try:
                for problem in remove(find(load_repo(path), conn), conn):
                    print(f"teardown: {problem}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome behind cleanup
                print(f"teardown of {path} failed ({exc}); run `headwater teardown --repo {path} --yes` "
                      f"once the stack is up", file=sys.stderr)
