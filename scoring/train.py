"""``headwater train``: fit a model on a point-in-time training set and register an immutable version.

The training set is the Parquet that ``backfill.training_set`` writes: spine columns (entity keys,
timestamp, label, ...) then one column per feature named by its ref ``view:feature``. Features
are exactly those refs, in the order given (or every ref column of the file, in file order).

Holdout: the latest ``holdout`` fraction of rows by timestamp (a time split, as the model will
score the future), else a seeded random split without a timestamp column. Metrics are computed
with the *registered artifact* through its own executor, so they describe what will serve.
The threshold stored with the model is the holdout score at rank k (the cut of precision@k); the
score's reference histogram is the holdout's too (training rows score more extreme than live ones).
The model is stamped with the current definitions' feature hashes, so a training set recording
other hashes (``HASHES_KEY``: built before a definition edit) is refused; one recording none trains
with a warning.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backfill.training_set import FEATURE_HASHES_KEY
from scoring.models.errors import TrainError
from scoring.models.histogram import reference_histogram
from scoring.registry import KINDS, ModelMeta, Registry, feature_hashes

__all__ = ["TrainConfig", "train", "precision_at_k", "read_matrix", "HASHES_KEY", "check_training_set"]

#: Parquet schema metadata key of a training set: JSON ``{"view:feature": feature_hash}`` of the
#: definitions that computed its columns (``backfill.training_set`` writes it).
HASHES_KEY = FEATURE_HASHES_KEY  # written by backfill.training_set.write_training_set


@dataclass(frozen=True)
class TrainConfig:
    model: str
    kind: str = "gbdt"
    label: str = "is_fraud"
    features: tuple[str, ...] = ()
    """Refs ``view:feature`` in matrix order; empty = every ref column of the training set."""
    timestamp_column: str = "ts"
    holdout: float = 0.2
    k: int = 100
    """precision@k on the holdout (capped at the holdout size)."""
    seed: int = 0
    library: str = "xgboost"
    """gbdt only: ``xgboost`` or ``lightgbm``."""
    trees: int = 200
    depth: int = 6
    learning_rate: float = 0.1
    hidden: tuple[int, ...] = (32, 16)
    onnx: bool = False
    """Also register the ONNX export of the same fit as the next version (kind ``onnx``)."""
    params: dict = field(default_factory=dict)


def precision_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of positives among the k highest scores (stable order on ties)."""
    k = max(1, min(int(k), len(y)))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(np.mean(y[top]))


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def code_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def read_matrix(table: pa.Table, features: tuple[str, ...]) -> np.ndarray:
    """float32 (n, len(features)), null -> NaN; booleans as 0/1; strings refused."""
    cols = []
    for ref in features:
        col = table.column(ref)
        t = col.type
        if pa.types.is_boolean(t):
            col = col.cast(pa.int8())
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise TrainError(f"feature {ref!r} has type {t}; models take numeric features: "
                             f"leave it out with --features or encode it upstream")
        cols.append(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
    return np.column_stack(cols).astype(np.float32) if cols else np.zeros((table.num_rows, 0), np.float32)


def _labels(table: pa.Table, label: str) -> np.ndarray:
    if label not in table.column_names:
        raise TrainError(f"training set has no label column {label!r}: pass --label with one of "
                         f"{', '.join(c for c in table.column_names if ':' not in c)}")
    col = table.column(label)
    if col.null_count:
        raise TrainError(f"label column {label!r} has {col.null_count} nulls: drop unlabeled rows from the spine")
    y = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if not np.isin(y, (0.0, 1.0)).all():
        raise TrainError(f"label column {label!r} is not binary (0/1 or bool): the scorer predicts one class")
    return y.astype(np.int64)


def _timestamps_ms(table: pa.Table, column: str) -> np.ndarray | None:
    if column not in table.column_names:
        return None
    col = table.column(column)
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp("ms", tz=col.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(col.type):  # epoch milliseconds, as the spine convention
        return col.cast(pa.int64()).to_numpy(zero_copy_only=False)
    import pandas as pd
    try:  # ISO strings (any zone) or dates: normalised to UTC
        parsed = pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise TrainError(f"timestamp column {column!r} ({col.type}) cannot be read as times: store a timestamp, "
                         f"epoch ms or ISO-8601 strings, or pass --timestamp-column") from exc
    if parsed.isna().any():
        raise TrainError(f"timestamp column {column!r} has nulls: every training row needs its time")
    return (parsed.astype("int64") // 1_000_000).to_numpy()


def _split(n: int, ts: np.ndarray | None, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if ts is not None:
        order = np.argsort(ts, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * holdout)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _fit(cfg: TrainConfig, X: np.ndarray, y: np.ndarray):
    """-> (fitted native object, write_files(dir) for the registry, stored params)."""
    if cfg.kind == "gbdt" and cfg.library == "xgboost":
        import xgboost as xgb
        params = {"objective": "binary:logistic", "max_depth": cfg.depth, "eta": cfg.learning_rate,
                  "seed": cfg.seed, "nthread": 2, "tree_method": "hist", **cfg.params}
        booster = xgb.train(params, xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=cfg.trees)
        from scoring.models.forest import XGBOOST_FILE
        return booster, lambda d: booster.save_model(str(Path(d) / XGBOOST_FILE)), {
            "library": "xgboost", "trees": cfg.trees, **params}
    if cfg.kind == "gbdt" and cfg.library == "lightgbm":
        import lightgbm as lgb
        params = {"objective": "binary", "num_leaves": 2 ** cfg.depth, "max_depth": cfg.depth,
                  "learning_rate": cfg.learning_rate, "seed": cfg.seed, "num_threads": 2, "verbose": -1, **cfg.params}
        booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=cfg.trees)
        from scoring.models.forest import LIGHTGBM_FILE
        return booster, lambda d: (Path(d) / LIGHTGBM_FILE).write_text(json.dumps(booster.dump_model())), {
            "library": "lightgbm", "trees": cfg.trees, **params}
    if cfg.kind in ("logreg", "mlp"):
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from scoring.models.dense import DenseModel
        est = (LogisticRegression(max_iter=1000, **cfg.params) if cfg.kind == "logreg" else
               MLPClassifier(hidden_layer_sizes=cfg.hidden, activation="relu", max_iter=300,
                             random_state=cfg.seed, **cfg.params))
        # keep_empty_features: an all-null column keeps its matrix slot (imputed 0), like serving
        pipe = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), est)
        pipe.fit(X, y)
        imp, sc = pipe.steps[0][1], pipe.steps[1][1]
        dense = DenseModel.from_sklearn(est, impute=imp.statistics_, mean=sc.mean_, scale=sc.scale_)
        return pipe, dense.save, {"estimator": type(est).__name__, "imputer": "median", "scaler": "standard",
                                  **({"hidden": list(cfg.hidden)} if cfg.kind == "mlp" else {}), **cfg.params}
    raise TrainError(f"cannot train kind {cfg.kind!r} (library {cfg.library!r}): use gbdt (xgboost|lightgbm), "
                     f"logreg or mlp; onnx versions come from --onnx")


def train(repo, training_set: Path | str, cfg: TrainConfig, *, registry: Registry | None = None,
          log=print) -> list[ModelMeta]:
    """Fit, evaluate on the holdout, register (and optionally its ONNX export). Returns the metas."""
    from headwater.config import RepoConfig, load_repo
    from streamjobs.repo import load_definitions
    repo = repo if isinstance(repo, RepoConfig) else load_repo(repo)
    if cfg.kind not in KINDS or cfg.kind == "onnx":
        raise TrainError(f"cannot train kind {cfg.kind!r}: use gbdt, logreg or mlp (add --onnx for an ONNX version)")
    path = Path(training_set)
    if not path.exists():
        raise TrainError(f"training set {path} does not exist: build one with `headwater training-set` first")
    plan = load_definitions(repo).plan
    table = pq.read_table(path)
    features = cfg.features or tuple(c for c in table.column_names if ":" in c)
    missing = [f for f in features if f not in table.column_names]
    if not features or missing:
        raise TrainError(f"training set {path.name} has no feature column {missing[0] if missing else 'view:feature'!r}: "
                         f"pass --features with refs among {[c for c in table.column_names if ':' in c]}")
    hashes = feature_hashes(plan, features)  # also validates every ref against the definitions
    check_training_set(table.schema.metadata, hashes, path.name, log)
    y = _labels(table, cfg.label)
    X = read_matrix(table, features)
    ts = _timestamps_ms(table, cfg.timestamp_column)
    tr, ho = _split(len(y), ts, cfg.holdout, cfg.seed)
    if len(tr) < 10 or len(set(y[tr].tolist())) < 2 or len(set(y[ho].tolist())) < 2:
        raise TrainError(f"training set {path.name} has {len(y)} rows and {int(y.sum())} positives: train and "
                         f"holdout each need both classes; use a longer spine or a smaller --holdout")
    log(f"train: {len(tr)} rows, holdout {len(ho)} rows ({'time split' if ts is not None else 'random split'}), "
        f"{len(features)} features, positives {y.mean():.2%}; fitting {cfg.kind}...")
    native, write_files, params = _fit(cfg, X[tr], y[tr])
    registry = registry or Registry.for_repo(repo)
    lineage = {
        "training_set_id": _file_id(path),
        "data_range": _data_range(ts, len(y), cfg.timestamp_column, path),
        "code_revision": code_revision(),
    }
    metas = []
    kinds = [(cfg.kind, write_files, params)]
    if cfg.onnx:
        from scoring.models.onnx import FILE, export_onnx
        blob = export_onnx(native, len(features))
        kinds.append(("onnx", lambda d: (Path(d) / FILE).write_bytes(blob), {**params, "source_kind": cfg.kind}))
    for kind, write, kparams in kinds:
        meta = _register_evaluated(registry, cfg, kind, features, hashes, write, kparams, lineage, X, y, ho)
        log(f"registered {meta.spec} ({kind}): auc={meta.metrics['auc']:.4f} "
            f"precision@{meta.metrics['k']}={meta.metrics['precision_at_k']:.4f} threshold={meta.threshold:.4f}")
        metas.append(meta)
    return metas


def _stored_hashes(metadata: dict | None, name: str) -> dict | None:
    """The training set's ``HASHES_KEY`` object, or None when it has none."""
    raw = (metadata or {}).get(HASHES_KEY)
    if raw is None:
        return None
    try:
        stored = json.loads(raw)
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise TrainError(f"training set {name} has unreadable {HASHES_KEY.decode()} metadata: rebuild it with "
                         f"`headwater training-set`")
    return stored


def check_training_set(metadata: dict | None, hashes: dict[str, str], name: str, log=print) -> None:
    """Skew guard at training time: the model is stamped with the *current* definitions' hashes,
    so the values in the file must come from those definitions, not from older ones."""
    stored = _stored_hashes(metadata, name)
    if stored is None:
        log(f"warning: training set {name} records no feature-definition hashes (not built by `headwater "
            f"training-set`, or by an older version): the skew guard cannot check that its values match the "
            f"current definitions")
        return
    changed = [ref for ref in hashes if ref in stored and stored[ref] != hashes[ref]]
    if changed:
        raise TrainError(f"training set {name} was built from feature definitions that differ from the current "
                         f"ones: {', '.join(changed)}: rebuild it with `headwater training-set`")
    unknown = [ref for ref in hashes if ref not in stored]
    if unknown:
        log(f"warning: training set {name} records no definition hash for {', '.join(unknown)}: the skew "
            f"guard cannot check those columns")


def _data_range(ts, n, column, path) -> dict:
    if ts is None or not len(ts):
        return {"rows": n, "file": path.name}
    from datetime import datetime, timezone
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return {"column": column, "min_ms": int(ts.min()), "max_ms": int(ts.max()), "min": iso(int(ts.min())),
            "max": iso(int(ts.max())), "rows": n, "file": path.name}


def _register_evaluated(registry, cfg, kind, features, hashes, write, params, lineage, X, y, ho) -> ModelMeta:
    """Write the files once, score them through their own executor (the artifact that will serve),
    then register exactly those files with the metrics, threshold and reference histograms."""
    import shutil
    import tempfile
    from sklearn.metrics import roc_auc_score
    from scoring.registry import LoadedModel
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        write(staged)
        scores = np.asarray(LoadedModel(ModelMeta(cfg.model, 0, kind, features, "", hashes), staged).predict(X, np),
                            np.float64)
        k = max(1, min(cfg.k, len(ho)))
        hs = scores[ho]
        metrics = {"auc": float(roc_auc_score(y[ho], hs)), "precision_at_k": precision_at_k(y[ho], hs, k), "k": k,
                   "holdout_rows": int(len(ho)), "holdout_positive_rate": float(y[ho].mean())}
        histograms = {ref: reference_histogram(X[:, i]) for i, ref in enumerate(features)}
        histograms["score"] = reference_histogram(hs)  # unseen rows only: as live traffic scores
        copy = lambda d: [shutil.copy2(p, Path(d) / p.name) for p in staged.iterdir() if p.is_file()]
        return registry.register(cfg.model, kind, features, copy, feature_hashes=hashes,
                                 threshold=float(np.sort(hs)[::-1][k - 1]), metrics=metrics,
                                 histograms=histograms, params=params, **lineage)
