"""Create a feature repository's topics, idempotently, with the configs the design depends on.

* events: ``message.timestamp.type=LogAppendTime``: the lateness rule compares the broker's
  append time with the event time, so producers cannot fake arrival times.
* tiles: ``cleanup.policy=compact``: the latest IR per (view, resolution, entity, tile_start)
  survives forever, which is what ``online rebuild`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from headwater.config import Connection, TopicsConfig, TopicSpec
from headwater.errors import StackError

__all__ = ["TopicResult", "topic_configs", "create_topics", "describe_topics", "existing_topics", "delete_topics"]


@dataclass(frozen=True)
class TopicResult:
    role: str
    name: str
    action: str  # "created" | "exists"
    partitions: int
    detail: str = ""


def topic_configs(topics: TopicsConfig, spec: TopicSpec) -> dict[str, str]:
    cfg: dict[str, str] = {}
    if spec.compacted:
        cfg["cleanup.policy"] = "compact"
    else:
        cfg["retention.ms"] = str(spec.retention_ms or topics.retention_ms)
    if spec.log_append_time:
        cfg["message.timestamp.type"] = "LogAppendTime"
    return cfg


def admin(conn: Connection) -> AdminClient:
    return AdminClient({"bootstrap.servers": conn.bootstrap_servers, "log_level": 0})


def _metadata(client: AdminClient, conn: Connection, timeout: float) -> dict:
    try:
        return client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StackError(f"cannot reach Kafka at {conn.bootstrap_servers} ({exc}): "
                         f"run `headwater stack up` or set HEADWATER_BOOTSTRAP_SERVERS") from exc


def existing_topics(conn: Connection, timeout: float = 30.0) -> set[str]:
    return set(_metadata(admin(conn), conn, timeout))


def delete_topics(conn: Connection, names: Sequence[str], timeout: float = 30.0) -> list[str]:
    """Delete ``names``; the ones already gone are skipped. Returns those deleted."""
    if not names:
        return []
    deleted = []
    client = admin(conn)  # held while its futures run
    for name, fut in client.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout).items():
        try:
            fut.result()
            deleted.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StackError(f"deleting topic {name} failed: {exc.args[0]}; check the broker log "
                                 f"(`headwater stack logs kafka`)") from exc
    return sorted(deleted)


def create_topics(conn: Connection, topics: TopicsConfig, timeout: float = 30.0) -> list[TopicResult]:
    client = admin(conn)
    existing = _metadata(client, conn, timeout)
    results: list[TopicResult] = []
    new: dict[str, tuple[str, NewTopic]] = {}
    for role, spec in topics.all().items():
        parts = spec.partitions or topics.partitions
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            detail = "" if have == parts else f"has {have} partitions, config says {parts}: left as is"
            results.append(TopicResult(role, spec.name, "exists", have, detail))
            continue
        new[spec.name] = (role, NewTopic(spec.name, num_partitions=parts,
                                         replication_factor=topics.replication_factor,
                                         config=topic_configs(topics, spec)))
    if new:
        futures = client.create_topics([nt for _, nt in new.values()], request_timeout=timeout)
        for name, fut in futures.items():
            role, nt = new[name]
            try:
                fut.result()
                results.append(TopicResult(role, name, "created", nt.num_partitions))
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # raced with another creator
                    results.append(TopicResult(role, name, "exists", nt.num_partitions))
                else:
                    raise StackError(f"creating topic {name} failed: {err}; check the broker log "
                                     f"(`headwater stack logs kafka`)") from exc
    order = list(topics.all())
    return sorted(results, key=lambda r: order.index(r.role))


def describe_topics(conn: Connection, names: list[str], timeout: float = 15.0) -> dict[str, dict[str, str]]:
    """Effective (non-default) configs per topic, for status output and tests."""
    client = admin(conn)
    res = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for resource, fut in client.describe_configs(res, request_timeout=timeout).items():
        entries = fut.result()
        out[resource.name] = {k: v.value for k, v in entries.items()}
    return out
