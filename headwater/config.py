"""Frozen, typed configuration; the only module that reads files or the environment.

Two sources, kept apart on purpose:

* the **connection file** ``<stack dir>/connection.json``, written by ``headwater stack up``
  (bootstrap servers, Redis URL, Flink connector jars). ``HEADWATER_BOOTSTRAP_SERVERS``,
  ``HEADWATER_REDIS_URL`` and ``HEADWATER_STACK_DIR`` override it, so a user can point every
  command at their own Kafka and Redis without a local stack.
* the **feature repository** file ``<repo>/headwater.yaml`` (project, tick, topics, schemas).

Components receive only the sub-model they need, never the whole world.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from headwater.errors import ConfigError

__all__ = [
    "Connection",
    "StackSettings",
    "TopicSpec",
    "TopicsConfig",
    "RepoConfig",
    "stack_dir",
    "load_connection",
    "save_connection",
    "load_repo",
    "clone_repo",
    "default_group",
    "DEFAULT_GROUP_ROLES",
]

CONNECTION_FILE = "connection.json"
REPO_FILE = "headwater.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def copy_with(self, **changes):
        """A revalidated copy (pydantic's model_copy skips validation)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class StackSettings(_Frozen):
    """How the local stack runs: ports, where it keeps its files, Redis persistence."""

    stack_dir: Path = Path(".stack")
    kafka_port: int = 9092
    """Broker listener; the KRaft controller listens on ``kafka_port + 1``."""
    redis_port: int = 6379
    redis_persistence: bool = False
    """Off for tests (a clean store each start); the demo turns it on (AOF, everysec)."""
    kafka_heap: str = "1g"
    mode: Literal["local", "docker"] = "local"


class Connection(_Frozen):
    """What every other command needs to reach the stack."""

    bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    flink_jars: tuple[str, ...] = ()
    """Absolute paths of the Flink connector jars (Kafka SQL connector, Parquet, Avro, Hadoop)."""
    mode: Literal["local", "docker", "external"] = "external"


class TopicSpec(_Frozen):
    name: str
    partitions: int | None = None
    """None: the repository-wide default."""
    compacted: bool = False
    log_append_time: bool = False
    retention_ms: int | None = None
    schema_file: str | None = Field(default=None, alias="schema")
    """An ``.avsc`` path relative to the repository, or a packaged schema name (``tile``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TopicsConfig(_Frozen):
    partitions: int = 3
    replication_factor: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    events: TopicSpec
    labels: TopicSpec
    tiles: TopicSpec
    predictions: TopicSpec
    shadow: TopicSpec
    feature_log: TopicSpec
    dlq: TopicSpec

    def all(self) -> dict[str, TopicSpec]:
        return {k: getattr(self, k) for k in
                ("events", "labels", "tiles", "predictions", "shadow", "feature_log", "dlq")}


class RepoConfig(_Frozen):
    """``<repo>/headwater.yaml``: one feature repository (project)."""

    project: str
    path: Path
    tick: str = "1s"
    topics: TopicsConfig
    schema_registry_url: str | None = None
    """When set, schemas live in a Confluent Schema Registry instead of the repo's file store."""
    schema_store: str = "schema_registry.json"
    """File-based schema store, relative to the repository: ids stay stable across runs."""
    features_module: str = "features.py"
    models_dir: str = "models"

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.path / p


def stack_dir(settings: StackSettings | None = None) -> Path:
    """``$HEADWATER_STACK_DIR``, else the nearest ``.stack`` in the working directory or its
    parents, else the checkout's ``.stack`` when it exists, else ``./.stack``."""
    env = os.environ.get("HEADWATER_STACK_DIR")
    if env:
        return Path(env).resolve()
    if settings is not None and settings.stack_dir != Path(".stack"):
        return settings.stack_dir.resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / ".stack").is_dir():
            return d / ".stack"
    checkout = Path(__file__).resolve().parent.parent / ".stack"
    return checkout if checkout.is_dir() else here / ".stack"


def save_connection(conn: Connection, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONNECTION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(conn.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def load_connection(directory: Path | None = None) -> Connection:
    """The connection file, overridden by ``HEADWATER_*`` environment variables."""
    directory = directory or stack_dir()
    path = directory / CONNECTION_FILE
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            Connection.model_validate(data)
        except (ValueError, ValidationError) as exc:
            raise ConfigError(
                f"corrupt connection file {path}: delete it and run `headwater stack up` again "
                f"({_first_error(exc)})") from exc
    if v := os.environ.get("HEADWATER_BOOTSTRAP_SERVERS"):
        data["bootstrap_servers"] = v
    if v := os.environ.get("HEADWATER_REDIS_URL"):
        data["redis_url"] = v
    return Connection.model_validate(data)


def load_repo(repo: str | Path) -> RepoConfig:
    root = Path(repo).resolve()
    path = root / REPO_FILE
    if not path.exists():
        raise ConfigError(f"no {REPO_FILE} in {root}: pass --repo pointing at a feature repository "
                          f"(for example examples/fraud)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_first_error(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping with at least `project:` and `topics:`")
    try:
        return RepoConfig.model_validate({**raw, "path": root})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from exc


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return f"{loc}: {err['msg']}"
    return str(exc).splitlines()[0]


def clone_repo(src: Path, dest: Path, suffix: str) -> Path:
    """A copy of a feature repository whose project and topic names carry ``suffix``, so a demo,
    benchmark or test run never shares topics or Redis keys with another (schema store not copied)."""
    import shutil
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("schema_registry.json", "models", "__pycache__"))
    cfg = yaml.safe_load((dest / REPO_FILE).read_text())
    cfg["project"] = f"{cfg['project']}_{suffix}"
    for spec in cfg.get("topics", {}).values():
        if isinstance(spec, dict) and "name" in spec:
            spec["name"] = f"{spec['name']}.{suffix}"
    (dest / REPO_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


DEFAULT_GROUP_ROLES = ("features", "writer", "score")


def default_group(project: str, role: str) -> str:
    """The consumer group a project's features job, online writer or scorer uses unless given one
    (``headwater teardown`` deletes these)."""
    return {"features": f"headwater-features-{project}", "writer": f"headwater-online-writer.{project}",
            "score": f"headwater-score.{project}"}[role]
