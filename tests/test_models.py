"""Executors against the libraries themselves: XGBoost / LightGBM predictions (NaN, zeros, depths,
values one ulp around every threshold), scikit-learn predict_proba, and ONNX Runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import lightgbm as lgb
import xgboost as xgb
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scoring import xp as xpmod
from scoring.models.dense import DenseModel
from scoring.models.errors import ModelError
from scoring.models.forest import from_lightgbm, from_xgboost, from_xgboost_dump
from scoring.models.onnx import OnnxExecutor, export_onnx

F = 6
TOL = 1e-5


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    X[rng.random((n, F)) < 0.15] = np.nan
    X[rng.random((n, F)) < 0.05] = 0.0
    Z = np.nan_to_num(X)
    y = (Z[:, 0] + Z[:, 1] * Z[:, 2] - np.isnan(X[:, 3]) + rng.normal(size=n) * 0.5 > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def data():
    return _data()


def _xgb(X, y, depth, rounds=40, **kw):
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "nthread": 1, **kw}
    return xgb.train(params, xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=rounds)


def _lgb(X, y, depth, rounds=40, **kw):
    params = {"objective": "binary", "num_leaves": min(2 ** depth, 64), "max_depth": depth, "verbose": -1,
              "num_threads": 1, "min_data_in_leaf": 5, **kw}
    return lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=rounds)


@pytest.mark.parametrize("depth", [1, 3, 6, 10])
@pytest.mark.parametrize("strategy", ["perfect", "nodes"])
def test_xgboost_import_matches_xgboost(data, depth, strategy):
    X, y = data
    booster = _xgb(X, y, depth)
    forest = from_xgboost(booster.save_raw("json"))
    want = booster.predict(xgb.DMatrix(X, missing=np.nan))
    ex = forest.executor(np, strategy)
    np.testing.assert_allclose(ex.predict(X), want, atol=TOL, rtol=0)
    for n in (1, 3):  # small batches take the node layout even under "perfect"
        np.testing.assert_allclose(ex.predict(X[:n]), want[:n], atol=TOL, rtol=0)
    assert forest.max_depth <= depth and forest.source == "xgboost"


@pytest.mark.parametrize("depth", [3, 7])
def test_xgboost_get_dump_json_matches_xgboost(data, depth):
    import json
    X, y = data
    booster = _xgb(X, y, depth)
    base = float(json.loads(booster.save_config())["learner"]["learner_model_param"]["base_score"].strip("[]"))
    forest = from_xgboost_dump(booster.get_dump(dump_format="json"), base_score=base, n_features=F)
    want = booster.predict(xgb.DMatrix(X, missing=np.nan))
    for strategy in ("perfect", "nodes"):
        np.testing.assert_allclose(forest.executor(np, strategy).predict(X), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("depth", [2, 6, 9])
@pytest.mark.parametrize("missing", [{}, {"zero_as_missing": True}, {"use_missing": False}])
@pytest.mark.parametrize("strategy", ["perfect", "nodes"])
def test_lightgbm_import_matches_lightgbm(data, depth, missing, strategy):
    X, y = data
    booster = _lgb(X, y, depth, **missing)
    forest = from_lightgbm(booster.dump_model())
    got = forest.executor(np, strategy).predict(X)
    np.testing.assert_allclose(got, booster.predict(X), atol=TOL, rtol=0)
    expected_variants = {"{}": {0, 1}, "{'zero_as_missing': True}": {2, 3}, "{'use_missing': False}": {4}}[str(missing)]
    assert set(forest.variants) <= expected_variants


def test_auto_strategy_by_depth(data):
    X, y = data
    assert from_xgboost(_xgb(X, y, 4, rounds=3).save_raw("json")).executor(np).strategy == "perfect"
    deep = from_xgboost(_xgb(X, y, 12, rounds=3, min_child_weight=0).save_raw("json"))
    assert deep.max_depth > 8 and deep.executor(np).strategy == "nodes"


def _edge_values(thresholds):
    t = np.asarray(sorted(set(np.float32(thresholds).tolist())), np.float32)
    return np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))])


@pytest.fixture(scope="module")
def edge_models(data):
    X, y = data
    xb = _xgb(X, y, 5, rounds=20)
    lb = _lgb(X, y, 5, rounds=20)
    lbz = _lgb(X, y, 5, rounds=20, zero_as_missing=True)
    out = []
    for lib, booster, forest in (("xgb", xb, from_xgboost(xb.save_raw("json"))),
                                 ("lgb", lb, from_lightgbm(lb.dump_model())),
                                 ("lgb", lbz, from_lightgbm(lbz.dump_model()))):
        thr = np.concatenate([t.threshold[t.left >= 0] for t in forest.trees])
        specials = [0.0, -0.0, np.nan, 1e-38, -1e-38, 1e-45] + ([] if lib == "xgb" else [np.inf, -np.inf])  # xgb refuses inf
        pool = np.concatenate([_edge_values(thr), np.float32(specials)])
        out.append((lib, booster, forest, pool))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_threshold_edges_and_specials_match_libraries(edge_models, hyp):
    """Rows drawn from each model's thresholds, one ulp either side, NaN, +-0, denormals, +-inf."""
    for lib, booster, forest, pool in edge_models:
        seed = hyp.draw(st.integers(0, 2**32 - 1), label=f"{lib} rows seed")
        X = pool[np.random.default_rng(seed).integers(0, len(pool), (256, F))].astype(np.float32)
        want = booster.predict(xgb.DMatrix(X, missing=np.nan)) if lib == "xgb" else booster.predict(X)
        for strategy in ("perfect", "nodes"):
            np.testing.assert_allclose(forest.executor(np, strategy).predict(X), want, atol=TOL, rtol=0)


def test_refuses_unsupported_models(data):
    X, y = data
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
                      xgb.DMatrix(X, label=y + (X[:, 4] > 1)), num_boost_round=2)
    with pytest.raises(ModelError, match="multi-class"):
        from_xgboost(multi.save_raw("json"))
    reg = xgb.train({"objective": "reg:squarederror", "max_depth": 2}, xgb.DMatrix(X, label=y), num_boost_round=2)
    with pytest.raises(ModelError, match="objective 'reg:squarederror'"):
        from_xgboost(reg.save_raw("json"))
    with pytest.raises(ModelError, match="not an XGBoost"):
        from_xgboost({"trees": []})
    lreg = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(X, label=y), num_boost_round=2)
    with pytest.raises(ModelError, match="use objective='binary'"):
        from_lightgbm(lreg.dump_model())


def _sk_pipeline(est, X, y):
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), est).fit(X, y)


def _dense_from_pipeline(pipe):
    imp, sc, est = pipe.steps[0][1], pipe.steps[1][1], pipe.steps[2][1]
    return DenseModel.from_sklearn(est, impute=imp.statistics_, mean=sc.mean_, scale=sc.scale_)


@pytest.mark.parametrize("est", [LogisticRegression(C=0.5),
                                 MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0)],
                         ids=["logreg", "mlp"])
def test_dense_matches_sklearn_predict_proba(data, est, tmp_path):
    X, y = data
    pipe = _sk_pipeline(est, X, y)
    model = _dense_from_pipeline(pipe)
    model.save(tmp_path)
    got = DenseModel.load(tmp_path).executor(np).predict(X)
    np.testing.assert_allclose(got, pipe.predict_proba(X)[:, 1], atol=TOL, rtol=0)


@pytest.mark.parametrize("which", ["xgb", "lgb", "logreg", "mlp"])
def test_onnx_equals_native(data, which):
    X, y = data
    if which == "xgb":
        obj = _xgb(X, y, 6)
        native = from_xgboost(obj.save_raw("json")).executor(np).predict(X)
    elif which == "lgb":
        obj = _lgb(X, y, 6)
        native = from_lightgbm(obj.dump_model()).executor(np).predict(X)
    else:
        est = LogisticRegression() if which == "logreg" else MLPClassifier((16,), max_iter=300, random_state=0)
        obj = _sk_pipeline(est, X, y)
        native = _dense_from_pipeline(obj).executor(np).predict(X)
    onnx_scores = OnnxExecutor(export_onnx(obj, F), np).predict(X)
    np.testing.assert_allclose(onnx_scores, native, atol=TOL, rtol=0)


def test_onnx_export_refuses_unknown_objects():
    with pytest.raises(ModelError, match="cannot export"):
        export_onnx(object(), 3)


gpu = pytest.mark.skipif(not xpmod.gpu_available(), reason="needs a CUDA GPU with cupy")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", [True, False])
def test_gpu_forest_equals_the_libraries_at_every_batch_size(data, monkeypatch, tile):
    """Batch sizes around the block size cover one tree per thread (many groups) up to all trees
    per thread; ``tile=False`` takes the kernel's global-memory path for wide inputs."""
    import cupy
    import scoring.models.gbdt as gbdt
    if not tile:
        monkeypatch.setattr(gbdt, "GPU_TILE_BYTES", 0)
    X, y = data
    big = np.concatenate([X] * 40)  # 120,000 rows: one tree group per thread
    xgbm, lgbm = _xgb(X, y, 6), _lgb(X, y, 12, num_leaves=200)
    for forest, want in ((from_xgboost(xgbm.save_raw("json")), xgbm.predict(xgb.DMatrix(big, missing=np.nan))),
                         (from_lightgbm(lgbm.dump_model()), lgbm.predict(big))):
        ex = forest.executor(cupy)
        for n in (1, 2, 127, 128, 129, 3000, len(big)):
            got = ex.predict(cupy.asarray(big[:n]))
            assert isinstance(got, cupy.ndarray)
            np.testing.assert_allclose(cupy.asnumpy(got), want[:n], atol=TOL, rtol=0)
    # single-leaf trees (a root that is a leaf) among deep ones, a tree count not divisible by 4
    stumps = from_xgboost(_xgb(X, y, 3, rounds=3, gamma=1e6).save_raw("json"))
    deep = from_xgboost(_xgb(X, y, 6, rounds=6).save_raw("json"))
    mixed = dataclasses.replace(deep, trees=stumps.trees[:1] + deep.trees + stumps.trees[1:])
    assert min(t.depth for t in mixed.trees) == 0 and len(mixed.trees) % 4 == 1
    for n in (1, 129, len(big)):
        np.testing.assert_allclose(cupy.asnumpy(mixed.executor(cupy).predict(cupy.asarray(big[:n]))),
                                   mixed.executor(np).predict(big[:n]), atol=TOL, rtol=0)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", [True, False])
def test_gpu_threshold_edges_and_specials_match_libraries(edge_models, data, monkeypatch, tile):
    """The kernel's own input rewrite (per missing variant, in the shared-memory tile or, for wide
    rows, the keys launch) against the libraries: thresholds and one ulp either side, NaN, +-0, denormals, |x| <= 1e-35, +-inf, for
    every variant (XGBoost 0/1, LightGBM NaN 0/1, zero_as_missing 2/3, use_missing=False 4)."""
    import cupy
    import scoring.models.gbdt as gbdt
    if not tile:
        monkeypatch.setattr(gbdt, "GPU_TILE_BYTES", 0)
    X, y = data
    lbn = _lgb(X, y, 5, rounds=20, use_missing=False)
    forest = from_lightgbm(lbn.dump_model())
    thr = np.concatenate([t.threshold[t.left >= 0] for t in forest.trees])
    pool = np.concatenate([_edge_values(thr), np.float32([0.0, -0.0, np.nan, 1e-38, -1e-38, 1e-45, np.inf, -np.inf])])
    cases = list(edge_models) + [("lgb", lbn, forest, pool)]
    assert {v for *_, f, _ in cases for v in f.variants} == {0, 1, 2, 3, 4}
    for lib, booster, forest, pool in cases:
        ex = forest.executor(cupy)
        for seed in range(4):
            Xs = pool[np.random.default_rng(seed).integers(0, len(pool), (300, F))].astype(np.float32)
            want = booster.predict(xgb.DMatrix(Xs, missing=np.nan)) if lib == "xgb" else booster.predict(Xs)
            np.testing.assert_allclose(cupy.asnumpy(ex.predict(cupy.asarray(Xs))), want, atol=TOL, rtol=0)
            np.testing.assert_allclose(cupy.asnumpy(ex.margin(cupy.asarray(Xs))), forest.executor(np).margin(Xs),
                                       atol=TOL, rtol=0)


@pytest.mark.gpu
@gpu
def test_gpu_dense_equals_cpu(data):
    import cupy
    X, y = data
    for est in (LogisticRegression(), MLPClassifier((16,), max_iter=300, random_state=0)):
        model = _dense_from_pipeline(_sk_pipeline(est, X, y))
        np.testing.assert_allclose(cupy.asnumpy(model.executor(cupy).predict(cupy.asarray(X))),
                                   model.executor(np).predict(X), atol=TOL, rtol=0)


def _onnx_cuda() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@gpu
def test_gpu_onnx_io_binding_and_tree_refusal(data):
    if not _onnx_cuda():
        pytest.skip("onnxruntime has no CUDA provider: install onnxruntime-gpu (the gpu extra)")
    import cupy
    from scoring.models.errors import DeviceError
    X, y = data
    pipe = _sk_pipeline(LogisticRegression(), X, y)
    data_bytes = export_onnx(pipe, F)
    got = OnnxExecutor(data_bytes, cupy).predict(cupy.asarray(X))
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), OnnxExecutor(data_bytes, np).predict(X), atol=TOL)
    with pytest.raises(DeviceError, match="fall back to CPU"):
        OnnxExecutor(export_onnx(_xgb(X, y, 3), F), cupy)
