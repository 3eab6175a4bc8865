"""A training spine from the repository's own topics: every labelled event, with its entity keys,
its event time as ``ts`` (epoch ms) and the label's fields.

Labels arrive late and apart from their events (a chargeback days after the payment), so the
spine is the join of the two topics on the event id, read up to the end offsets seen on entry.
Rules, so that the result does not depend on delivery accidents:

* an event delivered twice (a producer retry) is one row: the first occurrence in the topic;
* an event labelled twice keeps the label with the greatest label time, the labels schema's first
  timestamp field (on a tie, or without such a field, the later offset of the same partition;
  across partitions, the one read last);
* labels whose event is not in the topic (retention expired, another producer) are left out and
  counted; so are events and labels that cannot be decoded, with the reason.

Rows come ordered by (``ts``, event id), the order a time-ordered holdout expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.errors import SpineError

__all__ = ["LabelledSpine", "labelled_spine", "latest_labels", "first_events"]


@dataclass
class LabelledSpine:
    """The spine and what was left out of it, and why."""

    table: pa.Table
    events_read: int = 0
    labels_read: int = 0
    duplicate_events: int = 0  # extra copies of labelled events
    duplicate_labels: int = 0
    unmatched_labels: int = 0
    undecodable: Counter = field(default_factory=Counter)  # "<topic role>: <reason>" -> count

    def summary(self) -> str:
        parts = [f"{self.table.num_rows:,} labelled events (read {self.events_read:,} events, "
                 f"{self.labels_read:,} labels)"]
        if self.unmatched_labels:
            parts.append(f"{self.unmatched_labels:,} labels name no event in the topic")
        if self.duplicate_events:
            parts.append(f"{self.duplicate_events:,} repeated copies of labelled events left out")
        if self.duplicate_labels:
            parts.append(f"{self.duplicate_labels:,} superseded labels")
        parts += [f"{n:,} undecodable ({why})" for why, n in sorted(self.undecodable.items())]
        return "; ".join(parts)


def labelled_spine(repo: Any, conn: Any, *, join: str = "event_id", timeout_s: float = 600.0,
                   progress: Callable[[str], None] | None = None) -> LabelledSpine:
    """Events ⋈ labels on ``join``; see the module docstring for the rules."""
    from headwater.repo_schemas import codec_for
    from scoring.decode import BatchDecoder
    from streamjobs.repo import load_definitions

    say = progress or (lambda _msg: None)
    plan = load_definitions(repo).plan
    events_topic = repo.topics.events.name
    views = [v for v in plan.views if v.topic == events_topic] or list(plan.views)
    keys = list(dict.fromkeys(v.entity_key for v in views))
    times = sorted({v.event_time_field for v in views})
    if len(times) != 1:
        raise SpineError(f"the views read different event-time fields {times}: build the spine per source")
    time_field = times[0]
    label_codec, ev_codec = codec_for(repo, "labels"), codec_for(repo, "events")
    lab_types = {f["name"]: f["type"] for f in label_codec.schema["fields"]}
    ev_types = {f["name"]: f["type"] for f in ev_codec.schema["fields"]}
    if join not in lab_types:
        raise SpineError(f"the labels schema has no field {join!r} (fields: {', '.join(lab_types)}): "
                         "pass the field that names the labelled event with --join")
    if join not in ev_types:
        raise SpineError(f"the events schema has no field {join!r}: pass the field that names an event with --join")
    if ev_types[join] != lab_types[join]:
        raise SpineError(f"field {join!r} is {ev_types[join]} in the events schema but {lab_types[join]} in the "
                         "labels schema: give both the same type")
    out = LabelledSpine(pa.table({}))

    labels, out.labels_read = _read(conn, repo.topics.labels.name, BatchDecoder(label_codec, [join], None, join),
                                    "labels", timeout_s, out, say)
    labels, out.duplicate_labels = latest_labels(labels, join, _time_field(label_codec.schema))
    wanted = labels.column(join)
    cols = list(dict.fromkeys([join, *keys, time_field]))

    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pc.is_in(table.column(join), value_set=wanted)).select(cols)

    events, out.events_read = _read(conn, events_topic, BatchDecoder(ev_codec, keys, time_field, join), "events",
                                    timeout_s, out, say, keep)
    events, out.duplicate_events = first_events(events, join)
    out.unmatched_labels = labels.num_rows - events.num_rows
    at = pc.index_in(events.column(join), value_set=labels.column(join))
    extra = [n for n in labels.column_names if n not in (join, "ts", *keys)]
    table = pa.table({join: events.column(join), **{k: events.column(k) for k in keys if k != join},
                      "ts": events.column(time_field).cast(pa.int64()),
                      **{n: labels.column(n).take(at) for n in extra}})
    out.table = table.take(pc.sort_indices(table, [("ts", "ascending"), (join, "ascending")]))
    return out


def latest_labels(labels: pa.Table, join: str, label_time: str | None) -> tuple[pa.Table, int]:
    """One label per event id: the greatest ``label_time`` (a null one loses to any time), the
    later row on a tie; and how many were superseded. ``labels`` is in read order."""
    if label_time is not None:  # stable sort: equal times keep read order, so the later row wins below
        labels = labels.take(pc.sort_indices(labels, [(label_time, "ascending")], null_placement="at_start"))
    last = dict(zip(labels.column(join).to_pylist(), range(labels.num_rows)))  # later rows overwrite
    return labels.take(pa.array(list(last.values()), pa.int64())), labels.num_rows - len(last)


def first_events(events: pa.Table, join: str) -> tuple[pa.Table, int]:
    """The first row of each event id, in read order; and how many repeated copies were left out."""
    first = dict(zip(reversed(events.column(join).to_pylist()), range(events.num_rows - 1, -1, -1)))
    return events.take(pa.array(sorted(first.values()), pa.int64())), events.num_rows - len(first)


def _time_field(schema: dict) -> str | None:
    """The labels schema's first ``timestamp-millis``/``-micros`` field: when the label became known."""
    for f in schema["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") in ("timestamp-millis", "timestamp-micros") for t in types):
            return f["name"]
    return None


def _read(conn: Any, topic: str, decoder: Any, role: str, timeout_s: float, out: LabelledSpine,
          say: Callable[[str], None], keep: Callable[[pa.Table], pa.Table] | None = None) -> tuple[pa.Table, int]:
    """The topic decoded up to its end on entry (only ``keep``'s rows) and the number of records
    read; progress every ~5 s."""
    import time

    from headwater.topic_read import read_to_end

    parts: list[pa.Table] = []
    n, shown = 0, time.monotonic()
    for batch in read_to_end(conn.bootstrap_servers, topic, timeout_s=timeout_s, error=SpineError,
                             if_missing="create the topics and produce events and labels first "
                                        "(`headwater topics create`, `headwater produce --labels`)"):
        dec = decoder.decode([m.value() for m in batch])
        for r in dec.rejected:
            out.undecodable[f"{role}: {r.reason}"] += 1
        n += len(batch)
        table = dec.table
        if table.num_rows and np.any(np.diff(dec.index) < 0):  # rows of older schema ids come last
            table = table.take(pa.array(np.argsort(dec.index, kind="stable")))
        if table.num_rows:
            parts.append(keep(table) if keep else table)
        if time.monotonic() - shown > 5:
            say(f"{role}: {n:,} records read from {topic}")
            shown = time.monotonic()
    say(f"{role}: {n:,} records read from {topic}")
    if not parts:
        raise SpineError(f"no {role} in topic {topic!r}: produce them first (`headwater produce --labels`)")
    return pa.concat_tables(parts), n

