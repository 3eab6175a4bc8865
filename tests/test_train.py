"""``headwater train`` end to end on a small training set shaped like backfill.training_set's output
(spine columns, then one column per feature named ``view:feature``), and the models commands."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.cli import main
from scoring.registry import Registry, check_definitions
from scoring.train import precision_at_k
from tests.conftest import EXAMPLE_REPO

FEATURES = ("card_velocity:txn_count_10m", "card_velocity:amount_max_1h", "card_velocity:amount_mean_1d",
            "card_velocity:merchant_id_distinct_count_10m", "merchant_activity:merchant_txn_count_1h")


def _training_set(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(1_767_225_600_000, 1_767_225_600_000 + 86_400_000, n))
    cnt = rng.poisson(2, n)
    amax = rng.gamma(2.0, 40.0, n)
    mean = np.where(rng.random(n) < 0.2, np.nan, rng.gamma(2.0, 30.0, n))  # 20% no data -> null
    dist = np.minimum(cnt, rng.poisson(1.5, n))
    mcnt = rng.poisson(20, n)
    logit = 0.8 * cnt + 0.6 * dist + 0.01 * amax - 4.0
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    cols = {
        "card_id": pa.array([f"c{i % 300}" for i in range(n)]),
        "merchant_id": pa.array([f"m{i % 50}" for i in range(n)]),
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "is_fraud": pa.array(y),
        FEATURES[0]: pa.array(cnt, pa.int64()),
        FEATURES[1]: pa.array(np.where(cnt == 0, None, amax).tolist(), pa.float64()),
        FEATURES[2]: pa.array([None if np.isnan(v) else v for v in mean], pa.float64()),
        FEATURES[3]: pa.array(dist, pa.int64()),
        FEATURES[4]: pa.array(mcnt, pa.int64()),
        "card_velocity:last_country": pa.array(["US"] * n),
    }
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="module")
def tset(tmp_path_factory):
    return _training_set(tmp_path_factory.mktemp("ts") / "train.parquet")


@pytest.mark.parametrize("kind", ["gbdt", "logreg", "mlp"])
def test_train_end_to_end(tmp_path, tset, kind, capsys):
    models = tmp_path / "models"
    rc = main(["train", "--repo", str(EXAMPLE_REPO), "--training-set", str(tset), "--model", "fraud",
               "--kind", kind, "--features", ",".join(FEATURES), "--trees", "30", "--onnx",
               "--models-dir", str(models)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "registered fraud@1" in out and "registered fraud@2 (onnx)" in out
    reg = Registry(models)
    m1, m2 = reg.load("fraud@1"), reg.load("fraud@2")
    assert reg.aliases("fraud").aliases == {"champion": 1}
    meta = m1.meta
    assert meta.kind == kind and meta.features == FEATURES and m2.meta.kind == "onnx"
    assert m2.meta.params["source_kind"] == kind and m2.meta.definition_hash == meta.definition_hash
    assert meta.metrics["auc"] > 0.7 and meta.metrics["k"] == 100 and meta.metrics["holdout_rows"] == 600
    assert len(meta.training_set_id) == 16 and meta.code_revision != ""
    assert meta.data_range["rows"] == 3000 and meta.data_range["min"].startswith("2026-01-01")
    assert set(meta.histograms) == set(FEATURES) | {"score"}
    h = meta.histograms[FEATURES[2]]
    assert h["nulls"] > 400 and sum(h["counts"]) + h["nulls"] == h["total"] == 3000
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    check_definitions(meta, load_definitions(load_repo(EXAMPLE_REPO)).plan)
    # the stored metrics are the artifact's own: recompute from the registered files
    t = pq.read_table(tset)
    from scoring.train import read_matrix
    X, y = read_matrix(t, FEATURES), np.asarray(t.column("is_fraud").to_pylist(), int)
    s1, s2 = m1.predict(X, np), m2.predict(X, np)
    np.testing.assert_allclose(s1, s2, atol=1e-5)  # ONNX export scores like the native executor
    assert meta.metrics["precision_at_k"] == pytest.approx(precision_at_k(y[-600:], s1[-600:], 100))
    assert meta.threshold == pytest.approx(np.sort(s1[-600:])[::-1][99])


def test_train_default_features_and_errors(tmp_path, tset, capsys):
    base = ["train", "--repo", str(EXAMPLE_REPO), "--training-set", str(tset), "--model", "m",
            "--models-dir", str(tmp_path / "models"), "--trees", "5"]
    assert main(base + ["--label", "nope"]) == 2
    assert "no label column 'nope'" in capsys.readouterr().err
    assert main(base) == 2  # default: every ref column, which includes the string last_country
    err = capsys.readouterr().err
    assert "card_velocity:last_country" in err and "numeric" in err and err.count("\n") == 1
    assert main(base + ["--features", "card_velocity:nope"]) == 2
    assert "no feature column 'card_velocity:nope'" in capsys.readouterr().err
    assert main(base + ["--features", FEATURES[0], "--training-set", str(tmp_path / "missing.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_precision_at_k():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    assert precision_at_k(y, s, 1) == 1.0 and precision_at_k(y, s, 2) == 0.5 and precision_at_k(y, s, 99) == 0.4


def test_models_commands(tmp_path, tset, capsys):
    models = str(tmp_path / "models")
    common = ["--repo", str(EXAMPLE_REPO), "--models-dir", models]
    for kind in ("logreg", "gbdt"):
        assert main(["train", "--training-set", str(tset), "--model", "fraud", "--kind", kind,
                     "--features", ",".join(FEATURES), "--trees", "10", *common]) == 0
    capsys.readouterr()
    assert main(["models", "list", *common]) == 0
    assert "fraud" in capsys.readouterr().out
    assert main(["models", "alias", "fraud", "challenger", "2", *common]) == 0
    assert main(["models", "canary", "fraud", "25", *common]) == 0
    assert main(["models", "show", "fraud", *common]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and "champion" in out and "challenger" in out and "canary=25%" in out
    assert main(["models", "show", "fraud", "--json", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["aliases"] == {"champion": 1, "challenger": 2} and shown["versions"][1]["kind"] == "gbdt"
    assert main(["models", "check", "fraud@challenger", *common]) == 0
    assert main(["models", "alias", "fraud", "challenger", "9", *common]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["models", "alias", "fraud", "challenger", "none", *common]) == 2
    assert "set the canary to 0 first" in capsys.readouterr().err
    assert main(["models", "canary", "fraud", "0", *common]) == 0
    assert main(["models", "alias", "fraud", "challenger", "none", *common]) == 0
    assert main(["models", "show", "nope", *common]) == 2


def test_iso_string_timestamps_and_bad_ones(tmp_path, tset, capsys):
    """A CSV-born spine keeps ts as ISO strings (any zone): the split and data range read them in UTC."""
    t = pq.read_table(tset)
    ms = t.column("ts").cast(pa.int64()).to_numpy()
    from datetime import datetime, timedelta, timezone
    plus1 = timezone(timedelta(hours=1))
    iso = [datetime.fromtimestamp(v / 1000, tz=plus1).isoformat() for v in ms]
    pq.write_table(t.set_column(t.column_names.index("ts"), "ts", pa.array(iso)), tmp_path / "iso.parquet")
    args = ["train", "--repo", str(EXAMPLE_REPO), "--model", "iso", "--kind", "logreg", "--features",
            ",".join(FEATURES), "--models-dir", str(tmp_path / "models")]
    assert main(args + ["--training-set", str(tmp_path / "iso.parquet")]) == 0
    meta = Registry(tmp_path / "models").load("iso").meta
    assert (meta.data_range["min_ms"], meta.data_range["max_ms"]) == (int(ms.min()), int(ms.max()))
    pq.write_table(t.set_column(t.column_names.index("ts"), "ts", pa.array(["soon"] * len(t))), tmp_path / "bad.parquet")
    assert main(args + ["--training-set", str(tmp_path / "bad.parquet")]) == 2
    assert "cannot be read as times" in capsys.readouterr().err


def test_train_alias_points_at_the_new_version_and_a_bad_one_fails_before_the_fit(tmp_path, tset, capsys):
    models = tmp_path / "models"
    base = ["train", "--repo", str(EXAMPLE_REPO), "--training-set", str(tset), "--model", "fraud",
            "--features", ",".join(FEATURES), "--trees", "5", "--models-dir", str(models)]
    assert main(base + ["--kind", "gbdt"]) == 0
    for _ in range(2):  # a repeated tour: the alias follows the newest run, not a fixed number
        assert main(base + ["--kind", "logreg", "--alias", "challenger"]) == 0
    assert Registry(models).aliases("fraud").aliases == {"champion": 1, "challenger": 3}
    assert "fraud: challenger=3 champion=1" in capsys.readouterr().out
    assert main(base + ["--kind", "logreg", "--alias", "Bad Alias"]) == 2
    assert "alias 'Bad Alias' is invalid" in capsys.readouterr().err
    assert len(Registry(models).versions("fraud")) == 3  # nothing fitted or registered


def _with_hashes(src, dst, hashes):
    """``src`` rewritten with ``hashes`` as its definition-hash metadata (the key `headwater training-set`
    writes: the contract with backfill.training_set)."""
    t = pq.read_table(src)
    key = b"headwater.feature_hashes"
    meta = {**(t.schema.metadata or {}), **({} if hashes is None else {key: json.dumps(hashes).encode()})}
    pq.write_table(t.replace_schema_metadata(meta), dst)
    return dst


def _train(path, models, log):
    from scoring.train import TrainConfig, train
    return train(EXAMPLE_REPO, path, TrainConfig(model="m", kind="logreg", features=FEATURES),
                 registry=Registry(models), log=log)


def _current_hashes():
    from headwater.config import load_repo
    from scoring.registry import feature_hashes
    from streamjobs.repo import load_definitions
    return feature_hashes(load_definitions(load_repo(EXAMPLE_REPO)).plan, FEATURES)


def test_a_training_set_built_from_other_definitions_is_refused(tmp_path, tset):
    from scoring.models.errors import TrainError
    stale = {**_current_hashes(), FEATURES[1]: "0" * 16}  # amount_max_1h computed by an older definition
    path = _with_hashes(tset, tmp_path / "stale.parquet", stale)
    with pytest.raises(TrainError) as err:
        _train(path, tmp_path / "models", log=lambda *_: None)
    msg = str(err.value)
    assert FEATURES[1] in msg and FEATURES[0] not in msg and "headwater training-set" in msg and "\n" not in msg
    assert not (tmp_path / "models").exists() or not Registry(tmp_path / "models").list()


def test_a_training_set_of_the_current_definitions_trains_without_a_warning(tmp_path, tset):
    lines = []
    path = _with_hashes(tset, tmp_path / "ok.parquet", _current_hashes())
    meta = _train(path, tmp_path / "models", log=lines.append)[0]
    assert not [ln for ln in lines if "warning" in ln]
    assert meta.feature_hashes == _current_hashes()


def test_a_training_set_without_hashes_trains_with_one_warning(tmp_path, tset):
    lines = []
    path = _with_hashes(tset, tmp_path / "plain.parquet", None)
    _train(path, tmp_path / "models", log=lines.append)
    warnings = [ln for ln in lines if ln.startswith("warning")]
    assert len(warnings) == 1 and "skew guard cannot check" in warnings[0] and "\n" not in warnings[0]


def test_the_score_reference_histogram_is_the_holdout_only(tmp_path, tset):
    """Training rows score more extreme than unseen ones: a reference over them reads as drift on
    unchanged traffic."""
    meta = _train(tset, tmp_path / "models", log=lambda *_: None)[0]
    h = meta.histograms["score"]
    assert h["total"] == meta.metrics["holdout_rows"] == 600
    assert meta.histograms[FEATURES[0]]["total"] == 3000  # feature references keep every row
