"""Bounded reads: a topic from its start (or its newest ``tail`` records per partition) up to the
end offsets seen on entry, so a read-back finishes even while producers keep writing.

A partition is done once the consumer's position reaches that end offset, not only once a
message with offset ``end - 1`` arrives: the last offset of a partition written by a
transactional producer (``headwater score --exactly-once``) is a commit marker, which is never
delivered as a message. The read uses a throwaway group and never commits, so it moves nobody's
offsets. A compacted partition whose newest offsets the cleaner has removed never reaches that
end: the read then fails with its timeout rather than stop short silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from headwater.errors import HeadwaterError

__all__ = ["read_to_end", "FETCH_QUEUE_BACKOFF_MS"]

#: librdkafka waits this long before fetching a partition again once its prefetch queue holds
#: ``queued.min.messages`` (default 100k). Its default, 1000 ms, makes a consumer that drains the
#: queue faster than that sit idle: bench/score.py's bare consume -> produce loop stalled 0.5-1 s
#: per 300k-event backlog (100k per partition), which made it read 135k or 215k events/s between
#: identical runs instead of 340k-425k. Shared by the scorer, that ceiling loop and bounded reads.
FETCH_QUEUE_BACKOFF_MS = 100


def read_to_end(bootstrap: str, topic: str, *, tail: int | None = None, start_ms: int | None = None,
                ends: Mapping[int, int] | None = None, timeout_s: float = 60.0,
                error: type[Exception] = HeadwaterError,
                if_missing: str = "create it with `headwater topics create`") -> Iterator[list[Any]]:
    """Batches of messages (errors left out, tombstones kept) from ``topic`` up to its end on entry.

    ``start_ms``: start each partition at its first record with a timestamp >= it (the broker's
    time index, as ``replay.bounds.resolve_range``); ``ends``: stop a partition at that offset
    instead, if lower. Raises ``error`` when the topic does not exist (its message ends with
    ``if_missing``) or when the end is not reached within ``timeout_s``.
    """
    from confluent_kafka import Consumer, TopicPartition
    from headwater.kafka_offsets import watermarks

    if tail is not None and tail <= 0:
        return

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"headwater-read-{time.time_ns()}",
                  "enable.auto.commit": False, "log_level": 3, "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                  # retention deleting the segment being read: go on from the new start, not the end
                  "auto.offset.reset": "earliest",
                  "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise error(f"topic {topic!r} does not exist: {if_missing}")
        marks = watermarks(c, topic, md.partitions)
        if start_ms is not None:
            from replay.bounds import resolve_range
            first = resolve_range(c, topic, start_ms=start_ms).partitions
            marks = {r.partition: (r.start, marks[r.partition][1]) for r in first}
        if ends is not None:
            marks = {p: (lo, min(hi, ends.get(p, hi))) for p, (lo, hi) in marks.items()}
        end = {p: hi for p, (_, hi) in marks.items()}
        todo = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
        start = {p: lo if tail is None else max(lo, todo[p] - tail) for p, (lo, _) in marks.items() if p in todo}
        c.assign([TopicPartition(topic, p, start[p]) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                left = sum(hi - lo for p, (lo, hi) in marks.items() if p in todo)
                raise error(f"reading {topic!r} timed out after {timeout_s:.0f}s with up to {left:,} offsets "
                            "left: is Kafka up (`headwater stack status`)?")
            msgs = c.consume(10_000, timeout=0.5)
            got = []
            for m in msgs:  # one pass: this loop is most of a read's Python time
                if m.error():
                    continue
                p, o = m.partition(), m.offset()
                if o < end[p]:
                    got.append(m)
                    if o + 1 == end[p]:
                        todo.pop(p, None)
            if todo and len(msgs) < 10_000:  # caught up with what was fetched: markers may end a partition
                for tp in c.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= 0 and tp.offset >= todo[tp.partition]:
                        todo.pop(tp.partition, None)
            if got:
                yield got
    finally:
        c.close()
