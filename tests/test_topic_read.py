"""Bounded topic reads on a real broker: they stop at the end seen on entry, including where the
last offset is a transaction's commit marker (never delivered as a message)."""

from __future__ import annotations

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


def test_missing_topic_names_the_fix(stack, unique):
    with pytest.raises(HeadwaterError, match="does not exist: produce first"):
        list(read_to_end(stack.bootstrap_servers, f"no-such-{unique}", if_missing="produce first"))
