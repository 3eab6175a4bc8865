"""Replay ranges: parsing (pure) and resolution to exact offsets against a real broker (no Flink)."""

from __future__ import annotations

import pytest

from replay.bounds import parse_offsets, parse_time, resolve_range
from replay.errors import RangeError
from replay.sql import _batch_select


def test_parse_offsets():
    assert parse_offsets("0:100-5000, 1:0-4200,2:7-") == {0: (100, 5000), 1: (0, 4200), 2: (7, None)}
    assert parse_offsets("3:-10") == {3: (None, 10)}
    assert parse_offsets(None) == {} and parse_offsets(" ") == {}


@pytest.mark.parametrize("bad, words", [
    ("0:100", "PARTITION:START-END"), ("x:1-2", "PARTITION:START-END"), ("0:1-2,0:3-4", "twice"),
    ("0:9-2", "ends before it starts"), ("0:1-2;1:3-4", "PARTITION:START-END"), ("-1:0-5", "PARTITION:START-END"),
])
def test_parse_offsets_errors_are_one_line(bad, words):
    with pytest.raises(RangeError, match=words) as e:
        parse_offsets(bad)
    assert "\n" not in str(e.value)


def test_parse_time():
    assert parse_time("2026-01-01T00:00Z") == 1767225600000
    assert parse_time("2026-01-01T01:00+01:00") == 1767225600000
    assert parse_time("2026-01-01") == 1767225600000  # naive = UTC
    assert parse_time("1767225600123") == 1767225600123 and parse_time(5) == 5 and parse_time(None) is None
    with pytest.raises(RangeError, match="ISO-8601"):
        parse_time("yesterday")


def test_state_ttl_hints_are_dropped_for_batch():
    sel = "SELECT /*+ STATE_TTL('e' = '660000 ms') */ 'v' AS `view` FROM t AS e"
    assert _batch_select(sel) == "SELECT 'v' AS `view` FROM t AS e"


@pytest.fixture
def topic(stack, unique):
    """Two partitions, CreateTime; partition p holds 10 records with timestamps 1000*(i+1) + p
    (not 0: librdkafka stamps timestamp 0 as "now")."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    name = f"replay-bounds-{unique}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    p = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for part in (0, 1):
        for i in range(10):
            p.produce(name, b"x", partition=part, timestamp=1_000 * (i + 1) + part)
    assert p.flush(30) == 0
    return name


@pytest.fixture
def consumer(stack, unique):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"rb-{unique}"})
    yield c
    c.close()


def _offsets(r):
    return {p.partition: (p.start, p.end) for p in r.partitions}


def test_resolve_range(topic, consumer):
    assert _offsets(resolve_range(consumer, topic)) == {0: (0, 10), 1: (0, 10)}
    r = resolve_range(consumer, topic, start_ms=3_000, end_ms=7_000)
    assert _offsets(r) == {0: (2, 6), 1: (2, 6)} and r.total == 8
    assert _offsets(resolve_range(consumer, topic, start_ms=3_001, end_ms=99_000)) == {0: (3, 10), 1: (2, 10)}
    assert _offsets(resolve_range(consumer, topic, offsets=parse_offsets("1:2-5"))) == {1: (2, 5)}
    both = resolve_range(consumer, topic, start_ms=4_000, offsets=parse_offsets("0:2-6,1:-"))
    assert _offsets(both) == {0: (3, 6), 1: (3, 10)}  # intersected
    empty = resolve_range(consumer, topic, start_ms=50_000)
    assert empty.total == 0 and "offset:10" in empty.kafka_bounds().options()["scan.bounded.specific-offsets"]
    opts = r.kafka_bounds().options()
    assert opts["scan.startup.specific-offsets"] == "partition:0,offset:2;partition:1,offset:2"
    assert opts["scan.bounded.specific-offsets"] == "partition:0,offset:6;partition:1,offset:6"


def test_covered_event_times(topic, consumer):
    """The event times whose every event a range holds: what training sets may ask of its tiles."""
    import time
    before = int(time.time() * 1000)
    whole = resolve_range(consumer, topic)
    lo, hi = whole.covered_ms({})
    assert lo is None and before <= hi <= int(time.time() * 1000)  # from the first offset, to the resolve time
    assert resolve_range(consumer, topic, start_ms=3_000, end_ms=7_000).covered_ms({}) == (3_000, 7_000)
    assert resolve_range(consumer, topic, offsets=parse_offsets("1:2-5")).covered_ms({}) is None  # p0 unread
    explicit = resolve_range(consumer, topic, offsets=parse_offsets("0:2-6,1:2-6"))
    read = {"0": {"min_append_ms": 3_000, "max_append_ms": 6_000}, "1": {"min_append_ms": 3_001, "max_append_ms": 6_001}}
    assert explicit.covered_ms(read) == (3_001, 6_000)
    assert explicit.covered_ms({}) is None  # nothing known of what it read
    late = resolve_range(consumer, topic, start_ms=50_000)  # nothing after --from: every time from it on
    assert late.covered_ms({})[0] == 50_000


@pytest.mark.parametrize("kw, words", [
    ({"offsets": {5: (0, 1)}}, "names partition 5"),
    ({"offsets": {0: (0, 11)}}, "ends at offset 10"),
    ({"offsets": {0: (11, None)}}, "start at 10 or earlier"),
    ({"start_ms": 5, "end_ms": 1}, "before --from"),
])
def test_resolve_range_errors(topic, consumer, kw, words):
    with pytest.raises(RangeError, match=words):
        resolve_range(consumer, topic, **kw)


def test_resolve_range_unknown_topic(consumer, unique):
    with pytest.raises(RangeError, match="does not exist"):
        resolve_range(consumer, f"no-such-topic-{unique}", timeout_s=5)


def test_cli_bad_range_is_one_line_exit_2(capsys):
    from headwater.cli import main
    from tests.conftest import EXAMPLE_REPO
    assert main(["replay", "--repo", str(EXAMPLE_REPO), "--out", "/nonexistent", "--offsets", "0:9-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("headwater: error: --offsets 0:9-2 ends before it starts") and "\n" not in err


def test_covered_from_time_after_retention_starts_at_the_first_kept_record(topic, consumer, stack):
    """``--from`` before the first record retention kept: the deleted records may have been
    appended after ``--from``, so coverage starts at the first append read, not at ``--from``
    (it used to claim ``--from`` and let training rows miss the deleted events silently)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    for f in admin.delete_records([TopicPartition(topic, p, 4) for p in (0, 1)]).values():
        f.result(30)  # offsets 0-3 gone: appended at 1000-4001
    r = resolve_range(consumer, topic, start_ms=2_000)
    assert _offsets(r) == {0: (4, 10), 1: (4, 10)}
    read = {"0": {"min_append_ms": 5_000, "max_append_ms": 10_000}, "1": {"min_append_ms": 5_001, "max_append_ms": 10_001}}
    assert r.covered_ms(read)[0] == 5_001
    kept = resolve_range(consumer, topic, start_ms=7_000)  # records before --from still exist: --from holds
    assert kept.covered_ms(read)[0] == 7_000
