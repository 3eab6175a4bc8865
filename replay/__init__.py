"""Bounded replays of historical Kafka ranges through the same Flink SQL, in batch mode, into Parquet."""

from replay.bounds import PartitionRange, TopicRange, parse_offsets, parse_time
from replay.errors import RangeError, ReplayError
from replay.runner import ReplayStats, ViewStats, run_replay

__all__ = ["run_replay", "ReplayStats", "ViewStats", "ReplayError", "RangeError", "PartitionRange",
           "TopicRange", "parse_offsets", "parse_time"]
