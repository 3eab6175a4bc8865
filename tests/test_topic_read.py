"""Bounded topic reads on a real broker: they stop at the end seen on entry, including where the
last offset is a transaction's commit marker (never delivered as a message)."""

from __future__ import annotations

import time

import pytest

from headwater.errors import HeadwaterError
from headwater.topic_read import read_to_end

pytestmark = pytest.mark.integration


def _topic(stack, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result()


def test_stops_at_a_transaction_marker_and_at_the_end_on_entry(stack, unique):
    from confluent_kafka import Producer

    topic = f"topic-read-{unique}"
    _topic(stack, topic, 2)
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "transactional.id": f"topic-read-{unique}"})
    p.init_transactions()
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, str(i).encode(), partition=i % 2)
    p.commit_transaction()  # each partition now ends with a commit marker

    got = read_to_end(stack.bootstrap_servers, topic, timeout_s=20)
    first = next(got)
    p.begin_transaction()
    p.produce(topic, b"after", partition=0)  # written after the read started: not part of it
    p.commit_transaction()
    values = sorted(m.value() for batch in [first, *got] for m in batch)
    assert values == sorted(str(i).encode() for i in range(10))

    tail = [m.value() for batch in read_to_end(stack.bootstrap_servers, topic, tail=2, timeout_s=20) for m in batch]
    assert sorted(tail) == [b"9", b"after"]  # the newest two offsets per partition, markers included
    assert list(read_to_end(stack.bootstrap_servers, topic, tail=0, timeout_s=5)) == []


def test_start_time_and_end_offsets_bound_the_read_and_markers_still_end_it(stack, unique):
    """``start_ms`` starts each partition at its first record stamped at or after it; ``ends`` stops
    it earlier; a partition whose last offset is a commit marker still ends (the parity checker's
    read of the events appended after an as_of)."""
    from confluent_kafka import Producer

    topic = f"topic-read-t-{unique}"
    _topic(stack, topic, 2)
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "transactional.id": f"topic-read-t-{unique}"})
    p.init_transactions()
    p.begin_transaction()
    for i in range(10):  # CreateTime stamps 1000..1009; offsets 0..4 on each partition
        p.produce(topic, str(i).encode(), partition=i % 2, timestamp=1000 + i)
    p.commit_transaction()

    def read(**kw):
        return sorted(int(m.value()) for b in read_to_end(stack.bootstrap_servers, topic, timeout_s=20, **kw) for m in b)

    deadline = time.monotonic() + 20  # commit_transaction returns before the brokers write the markers
    while read() != list(range(10)):
        assert time.monotonic() < deadline, "the committed transaction never became readable"
        time.sleep(0.2)
    assert read(start_ms=1004) == [4, 5, 6, 7, 8, 9]
    assert read(start_ms=1004, ends={0: 4}) == [4, 5, 6, 7, 9]  # partition 0 stops before offset 4 (value 8)
    assert read(start_ms=2000) == []


def test_missing_topic_names_the_fix(stack, unique):
    with pytest.raises(HeadwaterError, match="does not exist: produce first"):
        list(read_to_end(stack.bootstrap_servers, f"no-such-{unique}", if_missing="produce first"))
