"""Partition watermarks that ride out a partition's leadership settling.

Right after a topic is created (or a broker restarts) a consumer's metadata can name no leader,
or a stale one, for a moment: its ListOffsets answers NOT_LEADER_FOR_PARTITION or
LEADER_NOT_AVAILABLE although a producer has just written there. Those answers say "ask again",
so every bounded read (feature-log read-back, parity sampling, replay bounds) asks through here
and retries them until its deadline instead of failing on the first.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

__all__ = ["watermarks"]


def _retriable(exc: Exception) -> bool:
    from confluent_kafka import KafkaError
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError):
        return False
    return err.retriable() or err.code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                             KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT,
                                             KafkaError._TRANSPORT)


def watermarks(consumer: Any, topic: str, partitions: Iterable[int],
               timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` from the broker, retrying leader-election errors until ``timeout_s``."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    out: dict[int, tuple[int, int]] = {}
    for p in partitions:
        pause = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=max(left, 0.5))
                break
            except KafkaException as exc:
                if not _retriable(exc) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
    return out
