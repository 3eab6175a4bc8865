"""One micro-batch, Kafka-free: decode -> validate -> one fetch -> matrix -> models -> encoded outputs.

``Scorer.score_batch`` takes consumed messages and returns everything to produce; the Kafka loop
(``scoring.consumer``) owns polling, producing, offsets and transactions. The production model,
the canary (when a percentage is set) and every shadow score the same matrix; a row is routed to
the canary when ``crc32(entity) mod 10000 < percent * 100`` (stable across processes and
restarts, so an entity always sees the same model while the percentage holds).

A row whose production score is not finite is dead-lettered alone (``model_error``); a canary
that fails, or scores a row non-finite, leaves those rows to the champion (logged and counted in
``headwater_score_canary_fallbacks``). Only a production model that raises fails the batch.
"""

from __future__ import annotations

import logging
import time
import types
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from online_store.reader import FetchResult, fetch
from scoring.decode import BatchDecoder
from scoring.errors import ScoreConfigError
from scoring.features import MatrixSpec, assemble
from scoring.metrics import ScoringMetrics, observe_many
from scoring.outputs import SplitEncoder
from streamjobs.plan import FeaturePlan

__all__ = ["Scorer", "BatchOutput", "Reject", "canary_mask", "Models", "scores"]

log = logging.getLogger(__name__)


def canary_mask(entities: Sequence[Any], percent: float) -> np.ndarray:
    """True where the entity's stable hash falls under ``percent`` (0-100). Keys are hashed in
    their string form, as ``fetch`` stringifies them: an integer key 7 routes like "7"."""
    if percent <= 0:
        return np.zeros(len(entities), bool)
    if percent >= 100:
        return np.ones(len(entities), bool)
    h = np.fromiter((zlib.crc32(str(e).encode()) for e in entities), np.uint32, len(entities))
    return (h % 10000) < int(round(percent * 100))


def scores(model: Any, X: Any, xp: types.ModuleType) -> np.ndarray:
    """``model``'s scores of X as host float64, one per row (non-finite ones included: the caller
    decides what a non-finite score costs)."""
    from scoring.xp import to_host
    s = np.asarray(to_host(model.predict(X, xp)), np.float64).reshape(-1)
    if s.shape[0] != X.shape[0]:
        raise ScoreConfigError(f"model {model.meta.spec} returned {s.shape[0]} scores for {X.shape[0]} rows")
    return s


def _strings(col: pa.ChunkedArray) -> list[str]:
    """A string column as a list: via NumPy objects, ~30x faster than ``to_pylist`` (pyarrow 16)."""
    return col.to_numpy(zero_copy_only=False).tolist()


@dataclass
class Models:
    """The loaded models (``scoring.registry.LoadedModel``-like: ``.meta`` and ``.predict(X, xp)``)."""

    production: Any
    shadows: tuple[Any, ...] = ()
    canary: Any = None
    canary_percent: float = 0.0

    def check_features(self, refs: Sequence[str]) -> None:
        """Every model must score the running matrix (``MatrixSpec.refs``: same refs, same order):
        a model fed another model's columns scores garbage without any error."""
        for m in (self.production, self.canary, *self.shadows):
            if m is not None and tuple(m.meta.features) != tuple(refs):
                raise ScoreConfigError(f"model {m.meta.spec} features differ: it uses {list(m.meta.features)} but "
                                       f"the feature matrix is {list(refs)}: canary and shadow models must score "
                                       "the champion's refs in the same order")


@dataclass(frozen=True)
class Reject:
    """A consumed message for the DLQ."""

    index: int
    reason: str
    error: str
    stage: str


@dataclass
class BatchOutput:
    """What one batch produces. ``predictions``/``shadows``: (key, value, headers) triples."""

    predictions: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    shadows: list[tuple[bytes, bytes, None]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    feature_log: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None  # served scores of the good rows (tests, bench)
    fetched: FetchResult | None = None
    e2e_ms: np.ndarray | None = None  # per consumed event: record timestamp -> outputs acknowledged
    #: records the batch's metrics (size, stage latencies, freshness, no-feature rows, predictions,
    #: shadow differences, shadow errors, canary fallbacks); the consumer calls it once the outputs
    #: are acknowledged, so a batch scored again after a rewind counts once
    observe: Callable[[], None] | None = None


def _count(failures: Sequence[tuple[Any, tuple[str, ...], int]]) -> None:
    """Count a batch's shadow errors and canary fallbacks (``BatchOutput.observe``)."""
    for counter, labels, k in failures:
        counter.labels(*labels).inc(k)


class Scorer:
    """Scores micro-batches of one events topic with one set of models."""

    def __init__(self, *, plan: FeaturePlan, project: str, redis: Any, decoder: BatchDecoder, spec: MatrixSpec,
                 models: Models, xp: types.ModuleType, prediction_encoder: SplitEncoder,
                 shadow_encoder: SplitEncoder, metrics: ScoringMetrics | None = None,
                 feature_log_rate: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.plan, self.project, self.redis = plan, project, redis
        self.decoder, self.spec, self.models, self.xp = decoder, spec, models, xp
        self.pred_enc, self.shadow_enc = prediction_encoder, shadow_encoder
        self.metrics = metrics or ScoringMetrics()
        self.feature_log_rate = float(feature_log_rate)
        self.clock = clock
        self.key_fields = [k for _, k in spec.entities]
        self.primary_key = self.key_fields[0]
        ev = decoder.columnar.arrow_schema.field(decoder.event_id_field)
        if not pa.types.is_string(ev.type):  # outputs are keyed by it; an int or bytes id would crash the loop
            raise ScoreConfigError(f"the events schema's {ev.name!r} is {ev.type}, not a string: predictions are "
                                   "keyed by it; declare it \"string\" (or [\"null\", \"string\"]) in the events "
                                   "schema")
        models.check_features(spec.refs)

    def set_models(self, models: Models, spec: MatrixSpec | None = None, decoder: BatchDecoder | None = None) -> None:
        """Swap models between batches (alias moves), with a new matrix and decoder when the move
        changed the features; the caller has checked their definitions and warmed their executors
        (``scoring.service``). Models that do not score the matrix raise: nothing is swapped."""
        models.check_features((spec or self.spec).refs)
        if spec is not None:
            assert decoder is not None, "a new matrix comes with the decoder of its entities"
            self.spec, self.decoder = spec, decoder
            self.key_fields = [k for _, k in spec.entities]
            self.primary_key = self.key_fields[0]
        self.models = models

    def score_batch(self, values: Sequence[bytes | None]) -> BatchOutput:
        out = BatchOutput()
        m = self.metrics
        t0 = time.perf_counter()
        dec = self.decoder.decode(values)
        out.rejects = [Reject(r.index, r.reason, r.error, r.stage) for r in dec.rejected]
        t1 = time.perf_counter()
        n = dec.table.num_rows
        if not n:
            out.latency_ms = {"decode": (t1 - t0) * 1e3}
            return out
        ids = {k: _strings(dec.table.column(k)) for k in self.key_fields}
        t_ms = int(self.clock() * 1000)
        res = fetch(self.redis, self.project, self.plan,
                    {ent: ids[key] for ent, key in self.spec.entities}, self.spec.refs, at_ms=t_ms)
        X, empty = assemble(res, self.spec, self.xp)
        t2 = time.perf_counter()
        failures: list[tuple[Any, tuple[str, ...], int]] = []  # (counter, labels, amount): counted by observe
        try:
            served, names, versions, thresholds = self._production(X, ids[self.primary_key], failures)
        except Exception as exc:  # a model bug must not kill the consumer: the batch is dead-lettered
            log.error("production model failed on a batch of %d events: %s", n, exc)
            out.rejects += [Reject(int(i), "model_error", f"{type(exc).__name__}: {exc}", "score")
                            for i in dec.index]
            out.latency_ms = {"decode": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3}
            return out
        table = dec.table
        bad = ~np.isfinite(served)
        if bad.any():  # those rows alone to the DLQ; the others are scored as usual
            out.rejects += [Reject(int(dec.index[i]), "model_error", f"model {names[i]}@{versions[i]} returned a "
                                   f"non-finite score ({served[i]})", "score") for i in np.flatnonzero(bad)]
            keep = np.flatnonzero(~bad)
            n, table, X, empty = len(keep), table.take(keep), X[self.xp.asarray(keep)], empty[keep]
            res, served = res.take(keep), served[keep]  # the feature log and out.fetched: scored rows only
            thresholds = None if thresholds is None else thresholds[keep]
            names, versions = [names[i] for i in keep], [versions[i] for i in keep]
            if not n:
                out.latency_ms = {"decode": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3}
                out.observe = partial(_count, failures)  # canary fallbacks before every row failed
                return out
        event_ids = _strings(table.column(self.decoder.event_id_field))
        t3 = time.perf_counter()
        shadow_scores = []
        for sh in self.models.shadows:
            s0 = time.perf_counter()
            try:
                s = scores(sh, X, self.xp)
                if not np.isfinite(s).all():
                    raise ValueError(f"model {sh.meta.spec} returned a non-finite score")
            except Exception as exc:  # a shadow never affects production: count, log, skip
                failures.append((m.shadow_errors, (sh.meta.name,), 1))
                log.error("shadow model %s failed: %s", sh.meta.spec, exc)
                continue
            shadow_scores.append((sh, s, (time.perf_counter() - s0) * 1e3))
        t4 = time.perf_counter()
        as_of = res.min_as_of_ms
        out.latency_ms = {"decode": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3,
                          "shadow": (t4 - t3) * 1e3}
        keys = list(map(str.encode, event_ids))
        # string columns converted to Arrow once and shared by both encoders (not per encoder from lists)
        ev_col = table.column(self.decoder.event_id_field)
        ent_col = table.column(self.primary_key).cast(pa.string())
        name_col, ver_col = pa.array(names, pa.string()), pa.array(versions, pa.string())
        decision = pa.nulls(n, pa.bool_()) if thresholds is None else pa.array(
            served >= thresholds, mask=np.isnan(thresholds))
        values_ = self.pred_enc.encode({
            "event_id": ev_col, "entity": ent_col, "score": served, "decision": decision,
            "model_name": name_col, "model_version": ver_col,
            "features_as_of_ms": np.full(n, 0 if as_of is None else as_of, np.int64),
            "no_features": empty}, {"latency": out.latency_ms, "produced_ms": int(time.time() * 1000)})
        hdrs = self._headers(names, versions)
        out.predictions = list(zip(keys, values_, hdrs))
        for sh, s, ms in shadow_scores:
            enc = self.shadow_enc.encode({
                "event_id": ev_col, "entity": ent_col, "model_name": pa.repeat(sh.meta.name, n),
                "model_version": pa.repeat(str(sh.meta.version), n), "score": s, "production_model": name_col,
                "production_version": ver_col, "production_score": served, "latency_ms": np.full(n, ms)})
            out.shadows += zip(keys, enc, [None] * n)
        if self.feature_log_rate > 0:
            from online_store import feature_log
            out.feature_log = feature_log.records(res, self.plan, event_ids=event_ids,
                                                  sample_rate=self.feature_log_rate)
        out.scores, out.fetched = served, res
        out.latency_ms["encode"] = (time.perf_counter() - t4) * 1e3
        out.observe = partial(self._observe, n, empty, res, t_ms, dict(out.latency_ms), names, versions,
                              [(sh.meta.name, np.abs(s - served)) for sh, s, _ in shadow_scores], failures)
        return out

    # ---------------------------------------------------------------- helpers

    def _production(self, X: Any, entities: list[Any], failures: list[tuple[Any, tuple[str, ...], int]]):
        """(served scores, model names, versions, thresholds or None) per row; raises only when the
        production model does. Canary fallbacks go to ``failures``."""
        ms = self.models
        prod = scores(ms.production, X, self.xp)
        n = len(prod)
        pm = ms.production.meta
        th = pm.threshold
        if ms.canary is None or ms.canary_percent <= 0:
            thr = None if th is None else np.full(n, th, np.float64)
            return prod, [pm.name] * n, [str(pm.version)] * n, thr
        cm = ms.canary.meta
        mask = canary_mask(entities, ms.canary_percent)
        served = prod
        if mask.any():
            try:
                can = scores(ms.canary, X, self.xp)
            except Exception as exc:  # a canary never fails the batch: its rows go to the champion
                self._fallback(cm, mask, f"{type(exc).__name__}: {exc}", failures)
                mask = np.zeros(n, bool)
            else:
                bad = mask & ~np.isfinite(can)
                if bad.any():
                    self._fallback(cm, bad, "non-finite score", failures)
                    mask &= ~bad
                served = np.where(mask, can, prod)
        names = np.where(mask, cm.name, pm.name).tolist()
        versions = np.where(mask, str(cm.version), str(pm.version)).tolist()
        if th is None and cm.threshold is None:
            return served, names, versions, None
        thr = np.where(mask, np.nan if cm.threshold is None else cm.threshold, np.nan if th is None else th)
        return served, names, versions, thr

    def _fallback(self, canary: Any, rows: np.ndarray, why: str, failures: list[tuple[Any, tuple[str, ...], int]]) -> None:
        """Canary-routed ``rows`` scored by the champion instead: logged now, counted with the batch
        (``failures``), not dead-lettered."""
        k = int(rows.sum())
        failures.append((self.metrics.canary_fallbacks, (canary.name, str(canary.version)), k))
        log.error("canary model %s failed on %d events (%s): the champion scored them", canary.spec, k, why)

    @staticmethod
    def _headers(names: list[str], versions: list[str]) -> list[list[tuple[str, bytes]]]:
        if len(set(versions)) == 1 and len(set(names)) == 1:  # no canary: one shared header list
            return [[("model_name", names[0].encode()), ("model_version", versions[0].encode())]] * len(names)
        cache: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        return [cache.get((a, b)) or cache.setdefault((a, b), [("model_name", a.encode()),
                                                               ("model_version", b.encode())])
                for a, b in zip(names, versions)]

    def _observe(self, n: int, empty: np.ndarray, res: FetchResult, t_ms: int, lat: dict[str, float],
                 names: list[str], versions: list[str], diffs: list[tuple[str, np.ndarray]],
                 failures: list[tuple[Any, tuple[str, ...], int]]) -> None:
        m = self.metrics
        _count(failures)
        for name, d in diffs:
            observe_many(m.shadow_diff.labels(name), d)
        m.batch_size.observe(n)
        for stage, ms in lat.items():
            m.stage.labels(stage).observe(ms / 1e3)
        for view, as_of in res.as_of_ms.items():
            if as_of is not None:
                observe_many(m.freshness.labels(view), [max(0.0, (t_ms - as_of) / 1e3)], weight=n)
        m.no_features.inc(int(empty.sum()))
        if len(set(zip(names, versions))) == 1:  # a canary of another name may share the version number
            m.predictions.labels(names[0], versions[0]).inc(n)
        else:
            for (a, b), c in zip(*np.unique(np.array([names, versions]).T, axis=0, return_counts=True)):
                m.predictions.labels(a, b).inc(int(c))
