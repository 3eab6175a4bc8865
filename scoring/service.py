"""``headwater score``: wire a repository, the registry and Kafka/Redis into a ``ScoreLoop``.

Start-up refuses to run (one-line error) when a model's feature definitions differ from the
running plan (skew guard, ``scoring.registry.check_definitions``), when shadows and production
disagree on the feature list, or when a feature is not numeric. While running, aliases are
re-resolved every ``reload_s``: a moved ``champion``/``challenger``/canary percentage takes
effect at the next batch without a restart (a moved alias that fails the skew guard is refused
and logged; the old model keeps scoring).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.errors import ScoreConfigError

__all__ = ["ScoreOptions", "build", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreOptions:
    """Everything ``headwater score`` takes (CLI flags map one to one)."""

    model: str
    shadows: tuple[str, ...] = ()
    device: str = "auto"
    exactly_once: bool = False
    metrics_port: int | None = None
    max_batch: int = 4096
    max_wait_ms: int = 20
    canary_percent: float | None = None  # None: the registry's aliases.json decides
    canary: str | None = None  # default: <model name>@challenger when a percentage is set
    group_id: str | None = None  # default: headwater-score.<project>
    instance_id: str = "0"
    feature_log_rate: float = 0.01  # records() is per-row Python: log a sample, as parity needs
    reload_s: float = 10.0
    models_dir: Path | None = None


def _check(meta: Any, plan: Any) -> None:
    from scoring.registry import check_definitions
    check_definitions(meta, plan)


class _Models:
    """Resolves the specs to loaded models and re-resolves them when aliases move."""

    def __init__(self, registry: Any, opts: ScoreOptions, plan: Any) -> None:
        self.registry, self.opts, self.plan = registry, opts, plan
        self._loaded: dict[tuple[str, int], Any] = {}
        self.current = self._resolve()
        self._next = time.monotonic() + opts.reload_s

    def _load(self, spec: str) -> Any:
        name, version = self.registry.resolve(spec)
        hit = self._loaded.get((name, version))
        if hit is None:
            hit = self.registry.load(f"{name}@{version}")
            _check(hit.meta, self.plan)  # SkewError: refuse to start / refuse the move
            self._loaded[(name, version)] = hit
        return hit

    def _resolve(self):
        from scoring.scorer import Models
        o = self.opts
        prod = self._load(o.model)
        name = prod.meta.name
        pct = o.canary_percent
        if pct is None:
            pct = self.registry.aliases(name).canary_percent if "@" not in o.model or o.model.endswith(
                "@champion") else 0.0
        if not 0.0 <= pct <= 100.0:
            raise ScoreConfigError(f"--canary-percent {pct}: use 0 to 100")
        canary = self._load(o.canary or f"{name}@challenger") if pct > 0 else None
        shadows = tuple(self._load(s) for s in o.shadows)
        for m in (canary, *shadows):
            if m is not None and tuple(m.meta.features) != tuple(prod.meta.features):
                raise ScoreConfigError(f"model {m.meta.spec} uses features {list(m.meta.features)} but "
                                       f"{prod.meta.spec} uses {list(prod.meta.features)}: shadow and canary "
                                       "models must score the production feature matrix (same refs, same order)")
        return Models(prod, shadows, canary, pct)

    def maybe_reload(self) -> Any | None:
        """New ``Models`` when an alias moved since the last check, else None."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.opts.reload_s
        try:
            new = self._resolve()
        except Exception as exc:  # SkewError, RegistryError, a half-edited aliases.json ...
            log.error("alias move refused, keeping the current models: %s", exc)
            return None
        old = self.current
        key = lambda ms: (ms.production.meta.spec, ms.canary and ms.canary.meta.spec, ms.canary_percent,
                          tuple(s.meta.spec for s in ms.shadows))
        if key(new) == key(old):
            return None
        log.warning("models changed: %s -> %s", key(old), key(new))
        self.current = new
        return new


def build(repo_path: str | Path, opts: ScoreOptions, *, redis: Any = None, clock: Any = time.time,
          on_batch: Any = None):
    """(ScoreLoop, Scorer) for a repository; nothing is consumed until ``loop.run()``."""
    from headwater.config import default_group, load_connection, load_repo
    from headwater.repo_schemas import codec_for
    from online_store.feature_log import FeatureLogWriter
    from online_store.repo_fetch import redis_client
    from scoring.consumer import ConsumerSettings, ScoreLoop
    from scoring.decode import BatchDecoder
    from scoring.features import MatrixSpec
    from scoring.metrics import ScoringMetrics, serve
    from scoring.outputs import SplitEncoder
    from scoring.registry import Registry
    from scoring.scorer import Scorer
    from scoring.xp import array_module
    from streamjobs.repo import load_definitions

    repo = load_repo(repo_path)
    conn = load_connection()
    plan = load_definitions(repo).plan
    registry = Registry(opts.models_dir) if opts.models_dir else Registry.for_repo(repo)
    models = _Models(registry, opts, plan)
    xp = array_module(opts.device)
    redis = redis if redis is not None else redis_client(conn.redis_url)
    spec = MatrixSpec.probe(redis, repo.project, plan, models.current.production.meta.features)
    from online_store.reader import warm
    warm(repo.project, plan)  # the compiled merge loaded before the first batch, not during it
    views = {plan.view(r.partition(":")[0]) for r in spec.refs}
    event_time = {v.event_time_field for v in views}
    if len(event_time) != 1:
        raise ScoreConfigError(f"the model's views read different event-time fields {sorted(event_time)}: "
                               "score one source per consumer")
    decoder = BatchDecoder(codec_for(repo, "events"), [k for _, k in spec.entities], event_time.pop())
    metrics = ScoringMetrics()
    if opts.metrics_port:
        serve(metrics, opts.metrics_port)
    if not 0.0 <= opts.feature_log_rate <= 1.0:
        raise ScoreConfigError(f"--feature-log-rate {opts.feature_log_rate}: use 0 to 1")
    scorer = Scorer(plan=plan, project=repo.project, redis=redis, decoder=decoder, spec=spec,
                    models=models.current, xp=xp,
                    prediction_encoder=SplitEncoder(codec_for(repo, "predictions"), ("latency", "produced_ms")),
                    shadow_encoder=SplitEncoder(codec_for(repo, "shadow")), metrics=metrics,
                    feature_log_rate=opts.feature_log_rate, clock=clock)
    t = repo.topics
    settings = ConsumerSettings(
        bootstrap_servers=conn.bootstrap_servers, group_id=opts.group_id or default_group(repo.project, "score"),
        events_topic=t.events.name, predictions_topic=t.predictions.name, shadow_topic=t.shadow.name,
        dlq_topic=t.dlq.name, feature_log_topic=t.feature_log.name, max_batch=opts.max_batch,
        max_wait_ms=opts.max_wait_ms, exactly_once=opts.exactly_once, instance_id=opts.instance_id)
    fl = FeatureLogWriter(None, t.feature_log.name, codec_for(repo, "feature_log")) if opts.feature_log_rate > 0 else None

    def reload() -> None:
        new = models.maybe_reload()
        if new is not None:
            scorer.set_models(new)

    loop = ScoreLoop(settings, scorer, codec_for(repo, "dlq"), fl, metrics, on_batch=on_batch, reload=reload)
    return loop, scorer


def run(repo_path: str | Path, opts: ScoreOptions, *, max_events: int | None = None,
        idle_timeout_s: float | None = None, quiet: bool = False) -> int:
    """The CLI entry: score until SIGINT/SIGTERM, printing progress every few seconds."""
    state = {"t": time.monotonic()}

    def progress(out: Any) -> None:
        now = time.monotonic()
        if not quiet and now - state["t"] >= 5:
            print(f"  scored {loop.stats.events:,} events, {loop.stats.dead_letters:,} to the DLQ; "
                  f"last batch {out.latency_ms.get('batch', 0):.1f} ms", flush=True)
            state["t"] = now

    loop, scorer = build(repo_path, opts, on_batch=progress)
    loop.install_signal_handlers()
    ms = scorer.models
    if not quiet:
        sh = ", ".join(s.meta.spec for s in ms.shadows) or "none"
        canary = f", canary {ms.canary.meta.spec} at {ms.canary_percent:g}%" if ms.canary else ""
        print(f"scoring {loop.s.events_topic} with {ms.production.meta.spec}{canary}; shadows: {sh}; "
              f"{'exactly-once' if loop.s.exactly_once else 'at-least-once'}; Ctrl-C to stop", flush=True)
    stats = loop.run(max_events=max_events, idle_timeout_s=idle_timeout_s)
    if not quiet:
        print(f"stopped: {stats.events:,} events, {stats.predictions:,} predictions, {stats.shadows:,} shadow "
              f"records, {stats.dead_letters:,} dead letters, {stats.retries} retried batches")
    return 0
