"""Prometheus metrics of the scoring consumer, on a registry each instance owns.

Per-event histograms (consume->produce latency, shadow score difference) are filled a batch at a
time by :func:`observe_many` (one ``searchsorted`` per batch instead of one Python call per
event); it falls back to per-value ``observe`` if prometheus-client's internals ever change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ScoringMetrics", "observe_many", "serve"]

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_FRESHNESS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_DIFF = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
_BATCH = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384, 65536)


def observe_many(hist: Any, values: Any, weight: int = 1) -> None:
    """``hist.observe(v)`` for every v (``weight`` times each), vectorised."""
    vals = np.asarray(values, np.float64).ravel()
    if not vals.size:
        return
    try:
        bounds = np.asarray(hist._upper_bounds, np.float64)
        buckets, total = hist._buckets, hist._sum
    except AttributeError:  # prometheus-client internals moved: stay correct, just slower
        for v in vals.tolist():
            for _ in range(weight):
                hist.observe(v)
        return
    counts = np.bincount(np.searchsorted(bounds, vals, side="left"), minlength=len(bounds))
    for i, c in enumerate(counts[: len(bounds)].tolist()):
        if c:
            buckets[i].inc(c * weight)
    total.inc(float(vals.sum()) * weight)


class ScoringMetrics:
    """Batch size, stage latencies, consume->produce latency, lag, freshness, DLQ, shadow drift,
    canary fallbacks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.batch_size = Histogram("headwater_score_batch_events", "Events per micro-batch", buckets=_BATCH,
                                    registry=r)
        self.batch_target = Gauge("headwater_score_batch_target", "Adaptive micro-batch size target", registry=r)
        self.stage = Histogram("headwater_score_stage_seconds", "Wall time per micro-batch and stage",
                               ["stage"], buckets=_LATENCY, registry=r)
        self.e2e = Histogram("headwater_score_consume_to_produce_seconds",
                             "Event record timestamp -> prediction acknowledged by Kafka, per event",
                             buckets=_LATENCY, registry=r)
        self.lag = Gauge("headwater_score_consumer_lag_records", "High watermark - position, summed over "
                         "assigned partitions", registry=r)
        self.freshness = Histogram("headwater_score_feature_freshness_seconds", "t - as_of of the fetched "
                                   "features, per event", ["view"], buckets=_FRESHNESS, registry=r)
        self.events = Counter("headwater_score_events", "Events consumed", registry=r)
        self.predictions = Counter("headwater_score_predictions", "Predictions produced",
                                   ["model", "version"], registry=r)
        self.no_features = Counter("headwater_score_no_features", "Predictions scored on no-data values",
                                   registry=r)
        self.dlq = Counter("headwater_score_dead_letters", "Records sent to the DLQ", ["reason"], registry=r)
        self.shadow_diff = Histogram("headwater_score_shadow_abs_diff", "|shadow - production| score per event",
                                     ["shadow"], buckets=_DIFF, registry=r)
        self.shadow_errors = Counter("headwater_score_shadow_errors", "Shadow batches that failed to score",
                                     ["shadow"], registry=r)
        self.canary_fallbacks = Counter("headwater_score_canary_fallbacks", "Canary-routed events the champion "
                                        "scored instead (the canary raised or scored them non-finite)",
                                        ["model", "version"], registry=r)
        self.retries = Counter("headwater_score_batch_retries", "Batches rewound and retried (delivery, "
                               "transaction or store failures)", ["cause"], registry=r)


def serve(metrics: ScoringMetrics, port: int) -> None:
    """Expose the metrics on ``port`` (``/metrics``), in a daemon thread."""
    from prometheus_client import start_http_server
    start_http_server(port, registry=metrics.registry)
