"""Review fixes of the scorer (service start-up checks and the loop's metrics and stop handling),
each pinned by a test that failed before the fix. Pure: no Kafka, no Redis."""

from __future__ import annotations

import shutil
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest

from online_store.reader import FetchResult
from tests.conftest import EXAMPLE_REPO

PROFILE_VIEW = '''

profiles = Source("profiles", topic="fraud.profiles", schema=HERE / "schemas" / "profile.avsc",
                  event_time_field="updated_at")
card_profile = FeatureView(name="card_profile", entity=card, source=profiles,
                           aggregations=(LatestValue("credit_limit", name="credit_limit"),), allowed_lateness="5m")
VIEWS = [card_velocity, merchant_activity, card_profile]
'''

PROFILE_SCHEMA = ('{"type": "record", "name": "Profile", "namespace": "x", "fields": ['
                  '{"name": "card_id", "type": "string"}, {"name": "credit_limit", "type": "double"}, '
                  '{"name": "updated_at", "type": "long"}]}')


@pytest.fixture
def two_sources(tmp_path):
    """The fraud repo plus a card_profile view read from a profiles topic timed by ``updated_at``."""
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, repo)
    (repo / "schemas" / "profile.avsc").write_text(PROFILE_SCHEMA)
    with (repo / "features.py").open("a") as fh:
        fh.write(PROFILE_VIEW)
    cfg = load_repo(repo)
    return cfg, load_definitions(cfg).plan


def _fetch(redis, project, plan, ents, refs, at_ms=None):
    return FetchResult(tuple(refs), ("x",), {r: (np.zeros(1), np.ones(1, bool)) for r in refs},
                       {r: pa.float64() for r in refs}, {}, 0, None)


@pytest.mark.parametrize("refs", [("card_velocity:txn_count_1h", "card_profile:credit_limit"),
                                  ("card_profile:credit_limit",)])
def test_a_model_reading_another_source_validates_the_events_own_time_field(two_sources, refs):
    from scoring import service
    repo, plan = two_sources
    with patch("scoring.features.fetch", _fetch):
        spec, decoder = service._matrix(None, repo, plan, refs)
    assert decoder.event_time_field == "event_time" and decoder.key_fields == ("card_id",)
    assert service.events_time_field(repo, plan) == "event_time"


# ---------------------------------------------------------------- the loop (fakes, no broker)

SETTINGS = dict(bootstrap_servers="localhost:1", group_id="g", events_topic="e", predictions_topic="p",
                shadow_topic="s", dlq_topic="d", feature_log_topic="f")


def test_max_batch_above_what_one_consume_returns_is_refused_at_start():
    from scoring.consumer import ConsumerSettings
    from scoring.errors import ScoreConfigError
    assert ConsumerSettings(**SETTINGS, max_batch=1_000_000).max_batch == 1_000_000  # confluent-kafka's cap
    with pytest.raises(ScoreConfigError, match="--max-batch 1000001: use 1 to 1,000,000") as err:
        ConsumerSettings(**SETTINGS, max_batch=1_000_001)
    assert "\n" not in str(err.value)


class _Producer:
    """Records produce calls; ``flush`` returns the next of ``left`` (outputs undelivered)."""

    def __init__(self, left=(0,), full=False):
        self.left, self.full, self.produced, self.polls = list(left), full, [], 0

    def produce(self, topic, value, key=None, headers=None):
        if self.full:
            raise BufferError("queue full")
        self.produced.append(topic)

    def poll(self, _t=0):
        self.polls += 1
        if self.polls > 100:
            raise RuntimeError("still retrying a full queue")
        return 0

    def flush(self, _t=0):
        return self.left.pop(0) if self.left else 0


class _Consumer:
    """Two assigned partitions of ``e`` at positions 10 and 5 below high watermarks 100 and 50."""

    def __init__(self):
        from confluent_kafka import TopicPartition
        self.parts = [TopicPartition("e", 0), TopicPartition("e", 1)]
        self.pos, self.high = {0: 10, 1: 5}, {0: 100, 1: 50}

    def subscribe(self, topics, **_cb): pass
    def consume(self, n, timeout): return []
    def assignment(self): return list(self.parts)
    def store_offsets(self, offsets): pass
    def commit(self, asynchronous=True): pass
    def close(self): pass

    def position(self, parts):
        from confluent_kafka import TopicPartition
        return [TopicPartition(tp.topic, tp.partition, self.pos[tp.partition]) for tp in parts]

    def get_watermark_offsets(self, tp, cached=False):
        return 0, self.high[tp.partition]


def _bare_loop(producer, consumer=None):
    """A ScoreLoop without a client: what the loop methods touch, set by hand."""
    import threading
    from scoring.consumer import ConsumerSettings, LoopStats, ScoreLoop
    from scoring.metrics import ScoringMetrics
    loop = ScoreLoop.__new__(ScoreLoop)
    loop.s, loop.metrics, loop.stats = ConsumerSettings(**SETTINGS), ScoringMetrics(), LoopStats()
    loop.producer, loop.consumer = producer, consumer or _Consumer()
    loop._stop, loop.assigned = threading.Event(), threading.Event()
    loop._failures, loop._pending, loop._in_txn, loop._lag_next = [], None, False, 0.0
    loop.feature_log, loop.on_batch, loop.reload = None, None, None
    return loop


def _gauge(loop, name, **labels):
    return loop.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_rewound_batch_counts_its_dead_letters_once():
    from confluent_kafka import Message
    from schemas import AvroCodec, load_schema
    from scoring.errors import DeliveryError
    from scoring.scorer import BatchOutput, Reject
    loop = _bare_loop(_Producer(left=(1, 0)))  # the first flush leaves an output undelivered
    loop.dlq_codec = AvroCodec(load_schema("dlq"), 41)
    loop.scorer = SimpleNamespace(score_batch=lambda values: BatchOutput(
        rejects=[Reject(0, "bad_magic", "first byte is 7", "decode")]))
    msgs = [Message(value=b"\x07", topic="e", partition=0, offset=3)]
    with pytest.raises(DeliveryError):
        loop._process(msgs, defer=False)
    assert _gauge(loop, "headwater_score_dead_letters_total", reason="bad_magic") == 0  # not acknowledged
    loop._process(msgs, defer=False)  # scored again after the rewind, acknowledged
    assert _gauge(loop, "headwater_score_dead_letters_total", reason="bad_magic") == 1 == loop.stats.dead_letters
    assert loop.producer.produced == ["d", "d"]  # produced twice (at least once), counted once


def test_a_rewound_batch_records_its_metrics_once():
    """Predictions, stage latencies and the rest are recorded when the outputs are acknowledged
    (``BatchOutput.observe``, called by the settle), not when the batch is scored."""
    from confluent_kafka import Message
    from scoring.errors import DeliveryError
    from scoring.scorer import BatchOutput
    loop = _bare_loop(_Producer(left=(1, 0)))  # the first flush leaves an output undelivered
    calls = []

    def score_batch(values):
        out = BatchOutput(predictions=[(b"e1", b"p", None)])
        out.observe = lambda: (calls.append(1), loop.metrics.predictions.labels("m", "1").inc(1))
        return out

    loop.scorer = SimpleNamespace(score_batch=score_batch)
    msgs = [Message(value=b"x", topic="e", partition=0, offset=3)]
    with pytest.raises(DeliveryError):
        loop._process(msgs, defer=False)
    assert calls == [] and _gauge(loop, "headwater_score_predictions_total", model="m", version="1") == 0
    loop._process(msgs, defer=False)  # scored again after the rewind, acknowledged
    assert calls == [1] and _gauge(loop, "headwater_score_predictions_total", model="m", version="1") == 1


def test_the_lag_gauge_covers_every_assigned_partition_while_no_batch_settles():
    """An outage or an idle loop settles nothing: the gauge must still say how far behind it is."""
    loop = _bare_loop(_Producer())
    loop.assigned.set()
    loop.run(idle_timeout_s=0.05)  # no message comes: no batch ever settles
    assert _gauge(loop, "headwater_score_consumer_lag_records") == (100 - 10) + (50 - 5)
    loop.consumer.pos[0] = 40
    loop._lag(0.0)  # measured at most once a second
    assert _gauge(loop, "headwater_score_consumer_lag_records") == 135
    loop._lag(loop._lag_next)
    assert _gauge(loop, "headwater_score_consumer_lag_records") == (100 - 40) + 45


def test_a_full_queue_does_not_hold_the_feature_log_past_a_stop():
    from online_store.feature_log import FeatureLogWriter
    from schemas import AvroCodec, load_schema
    from scoring.consumer import ConsumerSettings, ScoreLoop
    from scoring.errors import DeliveryError
    from scoring.metrics import ScoringMetrics
    writer = FeatureLogWriter(None, "f", AvroCodec(load_schema("feature_log"), 7))
    loop = ScoreLoop(ConsumerSettings(**SETTINGS), SimpleNamespace(), None, writer, ScoringMetrics())
    try:
        loop.producer = _Producer(full=True)  # Kafka away: the output queue stays full
        loop.stop()
        rec = {"event_id": "e1", "entity_key": "card_id", "entity": "c1", "t_ms": 1, "as_of_ms": 0,
               "values": {"card_velocity:txn_count_1h": 1}, "features": ["card_velocity:txn_count_1h"],
               "plan_hash": "h"}
        with pytest.raises(DeliveryError, match="stopping with the output queue full"):
            writer.write([rec])
        assert loop.producer.polls == 0  # raised at once, no retry after the stop
    finally:
        loop.consumer.close()
