"""What a replay reads: a bounded range of a Kafka topic, resolved to exact offsets per partition.

Users bound a replay by Kafka record timestamps (``--from/--to``; on events topics these are
broker *append* times, LogAppendTime, not event times), by offsets per partition
(``--offsets "0:100-5000,1:0-4200"``), or both (intersected). Either way the range is resolved
here, once, to ``[start, end)`` offsets per partition with the broker's own index
(``offsets_for_times``, watermarks), and Flink reads exactly those offsets
(``scan.startup/bounded.mode = specific-offsets``). So the job is bounded even on a live topic,
the progress estimate is exact, and the manifest records precisely what was read.

Offsets syntax: comma-separated ``PARTITION:START-END`` items, ``END`` exclusive (as Python
ranges); ``START`` or ``END`` may be left empty for the partition's first / current end offset
(``"2:1000-"``). Partitions not listed are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from replay.errors import RangeError
from streamjobs.compiler import KafkaBounds

__all__ = ["PartitionRange", "TopicRange", "parse_time", "parse_offsets", "resolve_range"]

_OFFSETS_ITEM = re.compile(r"^\s*(\d+)\s*:\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset read
    end: int    # first offset not read

    @property
    def count(self) -> int:
        """Upper bound of records (exact unless the topic is compacted or transactional)."""
        return max(self.end - self.start, 0)


@dataclass(frozen=True)
class TopicRange:
    """A resolved, bounded range of one topic; ``start_ms``/``end_ms`` as the user gave them."""

    topic: str
    partitions: tuple[PartitionRange, ...]
    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def total(self) -> int:
        return sum(p.count for p in self.partitions)

    def kafka_bounds(self) -> KafkaBounds:
        """Flink reads exactly these offsets; every partition is listed (empty ones as start == end)."""
        start = ";".join(f"partition:{p.partition},offset:{p.start}" for p in self.partitions)
        end = ";".join(f"partition:{p.partition},offset:{max(p.end, p.start)}" for p in self.partitions)
        return KafkaBounds(startup="specific-offsets", start_offsets=start,
                           bounded="specific-offsets", end_offsets=end)

    def to_json(self) -> dict:
        return {"topic": self.topic, "from_ms": self.start_ms, "to_ms": self.end_ms,
                "timestamps": "kafka record timestamp (append time on LogAppendTime topics), [from, to)",
                "offsets": {str(p.partition): [p.start, p.end] for p in self.partitions},
                "offsets_note": "[start, end) per partition"}


def parse_time(text: str | int | None, *, what: str = "--from") -> int | None:
    """ISO-8601 (naive = UTC; ``Z`` accepted) or epoch milliseconds -> epoch ms."""
    if text is None or text == "":
        return None
    if isinstance(text, int) or str(text).strip().lstrip("-").isdigit():
        return int(text)
    s = str(text).strip()
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise RangeError(f"{what} {text!r} is not a time: use ISO-8601 like 2026-01-01T00:00Z "
                         f"or epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def parse_offsets(text: str | None) -> dict[int, tuple[int | None, int | None]]:
    """``"0:100-5000,1:0-4200,2:1000-"`` -> {partition: (start, end)}; None = open end."""
    if text is None or not text.strip():
        return {}
    out: dict[int, tuple[int | None, int | None]] = {}
    for item in text.split(","):
        m = _OFFSETS_ITEM.match(item)
        if not m:
            raise RangeError(f"--offsets item {item.strip()!r} is not PARTITION:START-END "
                             f"(e.g. \"0:100-5000,1:0-4200\"; END exclusive, either side may be empty)")
        p = int(m.group(1))
        start = int(m.group(2)) if m.group(2) else None
        end = int(m.group(3)) if m.group(3) else None
        if p in out:
            raise RangeError(f"--offsets names partition {p} twice: give one START-END per partition")
        if start is not None and end is not None and end < start:
            raise RangeError(f"--offsets {p}:{start}-{end} ends before it starts: END is exclusive and must be >= START")
        out[p] = (start, end)
    return out


def resolve_range(consumer, topic: str, *, start_ms: int | None = None, end_ms: int | None = None,
                  offsets: dict[int, tuple[int | None, int | None]] | None = None,
                  timeout_s: float = 10.0) -> TopicRange:
    """Exact ``[start, end)`` offsets per partition from the broker (``consumer``: confluent-kafka)."""
    from confluent_kafka import TopicPartition
    from headwater.kafka_offsets import watermarks

    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise RangeError(f"--to ({end_ms}) is before --from ({start_ms}): swap them")
    md = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise RangeError(f"topic {topic!r} does not exist: create it (`headwater topics create`) or fix the repo")
    parts = sorted(md.partitions)
    offsets = offsets or {}
    unknown = sorted(set(offsets) - set(parts))
    if unknown:
        raise RangeError(f"--offsets names partition {unknown[0]} but {topic!r} has partitions "
                         f"0..{parts[-1]}: drop it or fix the number")
    chosen = [p for p in parts if not offsets or p in offsets]
    marks = watermarks(consumer, topic, chosen, timeout_s)

    def by_time(ts: int | None) -> dict[int, int]:
        if ts is None:
            return {}
        found = consumer.offsets_for_times([TopicPartition(topic, p, ts) for p in chosen], timeout=timeout_s)
        # -1: no record at or after ts -> the partition's current end
        return {tp.partition: (tp.offset if tp.offset >= 0 else marks[tp.partition][1]) for tp in found}

    t_start, t_end = by_time(start_ms), by_time(end_ms)
    out = []
    for p in chosen:
        low, high = marks[p]
        o_start, o_end = offsets.get(p, (None, None))
        if o_start is not None and o_start < low:
            raise RangeError(f"--offsets {p}:{o_start}-: partition {p} of {topic!r} starts at offset {low} "
                             f"(older records were deleted by retention): start at {low} or later")
        if o_end is not None and o_end > high:
            raise RangeError(f"--offsets {p}:-{o_end}: partition {p} of {topic!r} ends at offset {high}: "
                             f"end at {high} or earlier (a bounded replay cannot wait for future records)")
        start = max(low, o_start if o_start is not None else low, t_start.get(p, low))
        end = min(high, o_end if o_end is not None else high, t_end.get(p, high))
        out.append(PartitionRange(p, start, max(end, start)))
    return TopicRange(topic, tuple(out), start_ms, end_ms)
