"""Watermark reads retry the broker's "ask again" answers and nothing else (pure logic: a stand-in
consumer raises the errors a real one raised in CI right after a topic was created)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from headwater.kafka_offsets import watermarks


class _Flaky:
    def __init__(self, errors: list[int]):
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, tp, timeout):
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (0, 10 + tp.partition)


def test_leader_election_errors_are_retried() -> None:
    c = _Flaky([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])
    assert watermarks(c, "t", [0, 1], timeout_s=5) == {0: (0, 10), 1: (0, 11)}
    assert c.calls == 4


def test_other_errors_raise_at_once() -> None:
    c = _Flaky([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        watermarks(c, "t", [0], timeout_s=5)
    assert c.calls == 1


def test_retries_stop_at_the_deadline() -> None:
    c = _Flaky([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        watermarks(c, "t", [0], timeout_s=0.3)
    assert 1 < c.calls < 20
