"""``headwater score``: wire a repository, the registry and Kafka/Redis into a ``ScoreLoop``.

Start-up refuses to run (one-line error) when a model's feature definitions differ from the
running plan (skew guard, ``scoring.registry.check_definitions``), when shadows and production
disagree on the feature list, when a feature is not numeric, or when a model cannot score one
row on the chosen device. While running, aliases are re-resolved every ``reload_s`` from one
read of ``aliases.json``: a moved ``champion``/``challenger``/canary percentage takes effect at
the next batch without a restart; a champion naming other features brings its own matrix (and
the entity keys decoded), built before the swap. A move that fails the skew guard, whose canary
or shadows score other features than the new champion, or to a model that cannot run here is
refused and logged; the old models keep scoring. A canary percentage without a ``challenger``
alias scores no canary (a warning), rather than failing every reload.
"""

from __future__ import annotations

import logging
import time
import types
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


def _warm(model: Any, xp: types.ModuleType) -> None:
    """Build ``model``'s executor and score one row of zeros on ``xp``, so that an artifact that
    cannot run on this device is refused up front instead of dead-lettering every batch."""
    from scoring.scorer import scores
    from scoring.xp import is_gpu
    try:
        scores(model, xp.zeros((1, len(model.meta.features)), xp.float32), xp)
    except Exception as exc:
        raise ScoreConfigError(f"model {model.meta.spec} cannot score on {'gpu' if is_gpu(xp) else 'cpu'}: "
                               f"{type(exc).__name__}: {exc}: re-export or retrain it, or run another "
                               "version or --device") from exc


class _Models:
    """Resolves the specs to loaded models and re-resolves them when aliases move."""

    def __init__(self, registry: Any, opts: ScoreOptions, plan: Any, xp: types.ModuleType) -> None:
        self.registry, self.opts, self.plan, self.xp = registry, opts, plan, xp
        self._loaded: dict[tuple[str, int], Any] = {}
        self._warned: str | None = None
        self.current = self._resolve()
        self._next = time.monotonic() + opts.reload_s

    @property
    def refs(self) -> tuple[str, ...]:
        """The production model's features: the matrix every model of ``current`` scores."""
        return tuple(self.current.production.meta.features)

    def _load(self, spec: str, aliases: dict[str, Any]) -> Any:
        name = spec.partition("@")[0]
        if name not in aliases:  # one read of aliases.json per model and reload (no mixed states)
            aliases[name] = self.registry.aliases(name)
        name, version = self.registry.resolve(spec, aliases[name])
        hit = self._loaded.get((name, version))
        if hit is None:
            hit = self.registry.load(f"{name}@{version}")
            _check(hit.meta, self.plan)  # SkewError: refuse to start / refuse the move
            _warm(hit, self.xp)
            self._loaded[(name, version)] = hit
        return hit

    def _resolve(self):
        """Models for the current aliases; canary and shadows must score production's matrix."""
        from scoring.scorer import Models
        o = self.opts
        aliases: dict[str, Any] = {}
        prod = self._load(o.model, aliases)
        name = prod.meta.name
        pct = o.canary_percent
        if pct is None:
            pct = aliases[name].canary_percent if "@" not in o.model or o.model.endswith("@champion") else 0.0
        if not 0.0 <= pct <= 100.0:
            raise ScoreConfigError(f"--canary-percent {pct}: use 0 to 100")
        if pct > 0 and o.canary is None and aliases[name].get("challenger") is None:
            self._warn(f"model {name!r} has a canary of {pct:g}% but no challenger alias: scoring without a "
                       f"canary; set one (headwater models alias {name} challenger VERSION) or the canary to 0 "
                       f"(headwater models canary {name} 0)")
            pct = 0.0
        canary = self._load(o.canary or f"{name}@challenger", aliases) if pct > 0 else None
        models = Models(prod, tuple(self._load(s, aliases) for s in o.shadows), canary, pct)
        models.check_features(prod.meta.features)
        return models

    def _warn(self, message: str) -> None:
        """Log ``message`` once, not at every reload while the state lasts."""
        if message != self._warned:
            log.warning(message)
            self._warned = message

    def maybe_reload(self, accept: Any = None) -> Any | None:
        """New ``Models`` when an alias moved since the last check, else None. ``accept(new)`` puts
        them to work (the scorer, with a new matrix when the features changed); if it raises, the
        move is refused and the current models go on."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.opts.reload_s
        old = self.current
        key = lambda ms: (ms.production.meta.spec, ms.canary and ms.canary.meta.spec, ms.canary_percent,
                          tuple(s.meta.spec for s in ms.shadows))
        try:
            new = self._resolve()
            if key(new) == key(old):
                return None
            if accept is not None:
                accept(new)
        except Exception as exc:  # SkewError, features differ, cannot run, RegistryError, bad aliases.json ...
            log.error("alias move refused, keeping the current models: %s", exc)
            return None
        log.warning("models changed: %s -> %s", key(old), key(new))
        self.current = new
        return new


def _matrix(redis: Any, repo: Any, plan: Any, refs: tuple[str, ...]) -> tuple[Any, Any]:
    """(MatrixSpec, BatchDecoder) for a model's features: at start-up and when a move changes them."""
    from headwater.repo_schemas import codec_for
    from scoring.decode import BatchDecoder
    from scoring.features import MatrixSpec

    spec = MatrixSpec.probe(redis, repo.project, plan, refs)
    return spec, BatchDecoder(codec_for(repo, "events"), [k for _, k in spec.entities], events_time_field(repo, plan))


def events_time_field(repo: Any, plan: Any) -> str | None:
    """The scored events' own event-time field: that of the views reading the events topic (the
    plan allows one per topic), whatever topics the model's views read (a profile view's
    ``updated_at`` is not a field of the events). None when no view reads it: no time check."""
    topic = repo.topics.events.name
    return next((v.event_time_field for v in plan.views if v.topic == topic), None)


def build(repo_path: str | Path, opts: ScoreOptions, *, redis: Any = None, clock: Any = time.time,
          on_batch: Any = None):
    """(ScoreLoop, Scorer) for a repository; nothing is consumed until ``loop.run()``."""
    from headwater.config import default_group, load_connection, load_repo
    from headwater.repo_schemas import codec_for
    from online_store.feature_log import FeatureLogWriter
    from online_store.repo_fetch import redis_client
    from scoring.consumer import ConsumerSettings, ScoreLoop
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
    xp = array_module(opts.device)
    models = _Models(registry, opts, plan, xp)
    redis = redis if redis is not None else redis_client(conn.redis_url)
    spec, decoder = _matrix(redis, repo, plan, models.refs)
    from online_store.reader import warm
    warm(repo.project, plan)  # the compiled merge loaded before the first batch, not during it
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

    def accept(new: Any) -> None:
        refs = tuple(new.production.meta.features)
        if refs == scorer.spec.refs:
            scorer.set_models(new)
        else:  # the model names other features: the matrix (and the entities decoded) follow it
            scorer.set_models(new, *_matrix(redis, repo, plan, refs))

    def reload() -> None:
        models.maybe_reload(accept)

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
