"""Prometheus metrics of the writer and reader, on a registry each instance owns.

Nothing registers on prometheus-client's global default registry at import, so tests and several
writers in one process never collide; expose ``registry`` with ``prometheus_client.start_http_server(
port, registry=m.registry)`` or ``generate_latest(m.registry)``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WriterMetrics", "ReaderMetrics"]

_FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class WriterMetrics:
    """Tile writer: lag, tiles written and skipped, freshness at write time, as_of age."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge("headwater_writer_lag_records", "Tiles-topic records not yet written to Redis", registry=r)
        self.written = Counter("headwater_writer_tiles_written", "Tiles stored in Redis", ["view"], registry=r)
        self.stale = Counter("headwater_writer_stale_skipped",
                             "Tiles not stored because Redis held the same or a newer version", ["view"], registry=r)
        self.too_old = Counter("headwater_writer_trimmed_on_arrival",
                               "Tiles older than the view's retention when they arrived", ["view"], registry=r)
        self.rejected = Counter("headwater_writer_rejected",
                                "Records dropped: plan hash mismatch, unknown view or undecodable", ["reason"], registry=r)
        self.freshness = Histogram("headwater_writer_freshness_seconds",
                                   "now - max_append_ms of each tile when written", buckets=_FRESHNESS_BUCKETS, registry=r)
        self.late = Gauge("headwater_writer_events_late",
                          "Events the features job dropped as late since its state began (newest late-count "
                          "records read, summed over source partitions)", ["view"], registry=r)
        self.as_of_age = Gauge("headwater_writer_as_of_age_seconds", "now - published as_of", ["view"], registry=r)
        self.progress = Counter("headwater_writer_progress_published",
                                "Per-partition progress values published, by the rule that vouched for them "
                                "(markers: exact; settle: the 1 s fallback)", ["rule"], registry=r)


class ReaderMetrics:
    """Fetch latency and size; pass one to ``fetch(..., metrics=)`` to record."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.latency = Histogram("headwater_fetch_seconds", "fetch wall time", buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.entities = Counter("headwater_fetch_entities", "entities fetched", registry=self.registry)
