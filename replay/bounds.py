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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
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
    low: int = -1    # the partition's first and end offsets when the range was resolved (-1: unknown)
    high: int = -1
    start_by_time: bool = False  # start is the first record at or after --from
    end_by_time: bool = False    # end is the first record at or after --to

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
    resolved_ms: int | None = None  # wall clock just before the end offsets were read
    topic_partitions: tuple[int, ...] = ()  # every partition of the topic, read or not

    @property
    def total(self) -> int:
        return sum(p.count for p in self.partitions)

    def kafka_bounds(self) -> KafkaBounds:
        """Flink reads exactly these offsets; every partition is listed (empty ones as start == end)."""
        start = ";".join(f"partition:{p.partition},offset:{p.start}" for p in self.partitions)
        end = ";".join(f"partition:{p.partition},offset:{max(p.end, p.start)}" for p in self.partitions)
        return KafkaBounds(startup="specific-offsets", start_offsets=start,
                           bounded="specific-offsets", end_offsets=end)

    def covered_ms(self, read: Mapping[str, Mapping[str, Any]]) -> tuple[int | None, int | None] | None:
        """The event-time range ``[lo, hi)`` whose every event this range holds (None: open side),
        or None when it holds no such range. ``read``: per partition (str) the replay's stats, with
        the first and last append time read. Events are appended at or after their event time
        (LogAppendTime), so a partition read from offset ``s`` holds every event whose time is at or
        after the first append read (or ``--from``); read to its end offset, every event appended
        before the range was resolved; read to ``--to``, every event appended before it; read to
        an offset, every event appended before the last append read. Late arrivals appended after
        the replay are not in it, as in any backfill. Unread partitions hold entities whose windows
        would all come out empty, so a range that skips one covers nothing."""
        if set(self.topic_partitions) - {p.partition for p in self.partitions}:
            return None
        los: list[int] = []
        his: list[int] = []
        for p in self.partitions:
            st = read.get(str(p.partition)) or {}
            first, last = st.get("min_append_ms"), st.get("max_append_ms")
            if p.start > 0:  # records before it existed (or were deleted by retention)
                # --from names the start only where records before it still exist: a lookup that
                # landed on the first kept record may have skipped deleted ones appended after --from
                if p.start_by_time and self.start_ms is not None and p.start > p.low >= 0:
                    los.append(self.start_ms)
                elif first is not None:
                    los.append(int(first))
                else:
                    return None
            if p.end >= p.high >= 0 and self.resolved_ms is not None:
                his.append(self.resolved_ms)
            elif p.end_by_time and self.end_ms is not None:
                his.append(self.end_ms)
            elif last is not None:
                his.append(int(last))
            else:
                return None
        lo, hi = (max(los) if los else None), (min(his) if his else None)
        return None if lo is not None and hi is not None and lo >= hi else (lo, hi)

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
    resolved_ms = int(time.time() * 1000)  # before the end offsets: all appended before it lies below them
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
        if o_start is not None and o_start > high:
            raise RangeError(f"--offsets {p}:{o_start}-: partition {p} of {topic!r} ends at offset {high}: "
                             f"start at {high} or earlier")
        if o_end is not None and o_end < low:
            raise RangeError(f"--offsets {p}:-{o_end}: partition {p} of {topic!r} starts at offset {low} "
                             f"(older records were deleted by retention): end after {low}")
        start = max(low, o_start if o_start is not None else low, t_start.get(p, low))
        end = min(high, o_end if o_end is not None else high, t_end.get(p, high))
        out.append(PartitionRange(p, start, max(end, start), low, high,
                                  start_by_time=p in t_start and start == t_start[p],
                                  end_by_time=p in t_end and end == t_end[p]))
    return TopicRange(topic, tuple(out), start_ms, end_ms, resolved_ms, tuple(parts))
