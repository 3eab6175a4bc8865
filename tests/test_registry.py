"""Registry: immutable versions, aliases, load specs, one-line errors, the skew guard, xp choice."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from scoring import xp as xpmod
from scoring.models.dense import DenseModel
from scoring.models.errors import DeviceError, RegistryError, SkewError
from scoring.errors import ScoreConfigError
from scoring.registry import Registry, check_definitions, feature_hashes
from tests.conftest import EXAMPLE_REPO

FEATURES = ("card_velocity:txn_count_10m", "card_velocity:amount_sum_1h", "merchant_activity:merchant_txn_count_1h")


@pytest.fixture(scope="module")
def plan():
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    return load_definitions(load_repo(EXAMPLE_REPO)).plan


def _fit(seed=0, n=400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=n) > 0).astype(int)
    return X, LogisticRegression().fit(X, y)


def _register(reg, plan, est, name="fraud", impute=None, features=FEATURES, broken=False):
    model = DenseModel.from_sklearn(est, impute=impute)

    def write(d):
        model.save(d)
        if broken:  # weights that do not fit the features: the executor raises on any predict
            k = len(features)
            np.savez(d / "dense.npz", impute=np.zeros(k), mean=np.zeros(k), scale=np.ones(k),
                     W0=np.ones((k + 1, 1)), b0=np.zeros(1))
    return reg.register(name, "logreg", features, write, feature_hashes=feature_hashes(plan, features),
                        training_set_id="abc", metrics={"auc": 0.9})


def test_register_load_predict_matches_sklearn(tmp_path, plan):
    X, est = _fit()
    reg = Registry(tmp_path / "models")
    meta = _register(reg, plan, est)
    assert (meta.version, meta.kind, meta.features) == (1, "logreg", FEATURES)
    for spec in ("fraud", "fraud@champion", "fraud@1"):
        m = reg.load(spec)
        assert m.meta == meta
        got = m.predict(X, np)
        np.testing.assert_allclose(got, est.predict_proba(X.astype(np.float64))[:, 1], atol=1e-5, rtol=0)


def test_nan_uses_stored_imputation(tmp_path, plan):
    X, est = _fit()
    impute = np.array([0.25, -1.0, 3.0])
    reg = Registry(tmp_path / "models")
    _register(reg, plan, est, impute=impute)
    Xn = X.copy()
    Xn[::3, 1] = np.nan
    Xn[::5, 0] = np.nan
    filled = np.where(np.isnan(Xn), impute[None, :].astype(np.float32), Xn).astype(np.float64)
    np.testing.assert_allclose(reg.load("fraud").predict(Xn, np), est.predict_proba(filled)[:, 1], atol=1e-5)


def test_versions_immutable_and_aliases(tmp_path, plan):
    reg = Registry(tmp_path / "models")
    m1 = _register(reg, plan, _fit(0)[1])
    m2 = _register(reg, plan, _fit(1)[1])
    assert (m1.version, m2.version) == (1, 2)
    assert reg.aliases("fraud").aliases == {"champion": 1}  # only the first version becomes champion
    vdir = tmp_path / "models" / "fraud" / "1"
    assert all(not os.access(p, os.W_OK) for p in vdir.iterdir()) or os.geteuid() == 0
    assert not (os.stat(vdir / "meta.json").st_mode & 0o222)
    reg.set_alias("fraud", "challenger", 2)
    assert reg.load("fraud@challenger").meta.version == 2
    assert reg.load("fraud").meta.version == 1
    reg.set_canary("fraud", 10)
    reg.set_alias("fraud", "champion", 2)
    al = reg.aliases("fraud")
    assert al.aliases == {"champion": 2, "challenger": 2} and al.canary_percent == 10.0
    assert [h.get("alias") for h in al.history] == ["champion", "challenger", None, "champion"]
    on_disk = json.loads((tmp_path / "models" / "fraud" / "aliases.json").read_text())
    assert set(on_disk) == {"aliases", "canary_percent", "history"}
    assert reg.list() == ["fraud"] and [m.version for m in reg.show("fraud")["versions"]] == [1, 2]


@pytest.mark.parametrize("spec, words", [
    ("nope", ["no model 'nope'", "headwater train"]),
    ("fraud@7", ["no version 7", "versions: 1"]),
    ("fraud@shadow", ["no alias 'shadow'", "headwater models alias fraud shadow"]),
])
def test_one_line_errors(tmp_path, plan, spec, words):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit()[1])
    with pytest.raises(RegistryError) as ei:
        reg.load(spec)
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_alias_errors(tmp_path, plan):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit()[1])
    with pytest.raises(RegistryError, match="no version 3"):
        reg.set_alias("fraud", "challenger", 3)
    with pytest.raises(RegistryError, match="no challenger"):
        reg.set_canary("fraud", 5)
    with pytest.raises(RegistryError, match="out of range"):
        reg.set_canary("fraud", 150)


def test_predict_rejects_wrong_width(tmp_path, plan):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit()[1])
    with pytest.raises(RegistryError, match="expects a matrix of 3"):
        reg.load("fraud").predict(np.zeros((2, 4), np.float32), np)


def _edited_plan(plan_views, view_name, **agg_changes):
    from streamjobs.plan import build_plan
    out = []
    for v in plan_views:
        if v.name == view_name:
            aggs = tuple(dataclasses.replace(a, **agg_changes) if getattr(a, "name", None) == "txn_count" else a
                         for a in v.aggregations)
            v = dataclasses.replace(v, aggregations=aggs)
        out.append(v)
    return build_plan(out)


def test_skew_guard(tmp_path, plan):
    from headwater.config import load_repo
    from streamjobs.repo import load_definitions
    views = load_definitions(load_repo(EXAMPLE_REPO)).views
    reg = Registry(tmp_path / "models")
    meta = _register(reg, plan, _fit()[1])
    check_definitions(meta, plan)  # same definitions: no error
    # owner/description edits change no value, so they are not skew
    cosmetic = [dataclasses.replace(v, owner="someone-else", description="x") for v in views]
    from streamjobs.plan import build_plan
    check_definitions(meta, build_plan(cosmetic))
    # txn_count windows 1m,10m,1h -> 1m,20m,1h: txn_count_10m disappears; lateness change alters every card feature
    changed = _edited_plan(views, "card_velocity", windows=("1m", "20m", "1h"))
    with pytest.raises(SkewError) as ei:
        check_definitions(meta, changed)
    msg = str(ei.value)
    assert "card_velocity:txn_count_10m (missing)" in msg and "amount_sum_1h" not in msg and "retrain" in msg
    late = build_plan([dataclasses.replace(v, allowed_lateness="10m") if v.name == "card_velocity" else v
                       for v in views])
    with pytest.raises(SkewError) as ei:
        check_definitions(meta, late)
    assert "card_velocity:amount_sum_1h (changed)" in str(ei.value)
    assert "merchant_activity" not in str(ei.value) and "\n" not in str(ei.value)


def test_feature_hashes_stable_and_distinct(plan):
    refs = [f"{v.name}:{f.name}" for v in plan.views for f in v.features]
    h = feature_hashes(plan, refs)
    assert len(set(h.values())) == len(refs)
    assert h == feature_hashes(plan, refs)
    with pytest.raises(RegistryError, match="exactly one"):
        feature_hashes(plan, ["card_velocity:*"])


def test_array_module_cpu_and_gpu_error():
    assert xpmod.array_module("cpu") is np
    if not xpmod.gpu_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            xpmod.array_module("gpu")
    with pytest.raises(DeviceError, match="unknown device"):
        xpmod.array_module("tpu")


def test_removing_the_challenger_under_a_canary_is_refused(tmp_path, plan):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit(0)[1])
    _register(reg, plan, _fit(1)[1])
    reg.set_alias("fraud", "challenger", 2)
    reg.set_canary("fraud", 10)
    with pytest.raises(RegistryError) as ei:
        reg.set_alias("fraud", "challenger", None)
    assert "headwater models canary fraud 0" in str(ei.value) and "\n" not in str(ei.value)
    assert reg.aliases("fraud").aliases == {"champion": 1, "challenger": 2}  # nothing written
    reg.set_canary("fraud", 0)
    assert reg.set_alias("fraud", "challenger", None).aliases == {"champion": 1}


def _models(reg, plan, **opts):
    from scoring.service import ScoreOptions, _Models
    return _Models(reg, ScoreOptions(**{"model": "fraud", "reload_s": 0.0, **opts}), plan, np)


def test_a_move_is_refused_when_its_acceptance_fails_and_shadows_must_match(tmp_path, plan, caplog):
    """A champion naming other features is handed to ``accept`` (the scorer builds its matrix);
    if that raises, nothing changes. A shadow of other features than production: refused."""
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit(0)[1])
    _register(reg, plan, _fit(1)[1], features=FEATURES[::-1])  # same refs, another column order
    ms = _models(reg, plan)
    reg.set_alias("fraud", "champion", 2)

    def refuse(new):
        raise ScoreConfigError("no matrix for it")

    assert ms.maybe_reload(refuse) is None and ms.current.production.meta.version == 1
    assert "alias move refused" in caplog.text and "no matrix for it" in caplog.text
    seen = []
    assert ms.maybe_reload(seen.append).production.meta.version == 2 and ms.refs == tuple(FEATURES[::-1])
    assert [m.production.meta.version for m in seen] == [2]
    reg.set_alias("fraud", "champion", 1)
    reg.set_alias("fraud", "shadow", 2)
    with pytest.raises(ScoreConfigError, match="features differ"):  # at start-up: one line, as before
        _models(reg, plan, shadows=("fraud@shadow",))


def test_a_model_that_cannot_run_here_is_refused_at_start_and_on_a_move(tmp_path, plan, caplog):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit(0)[1])
    _register(reg, plan, _fit(1)[1], broken=True)
    ms = _models(reg, plan)
    reg.set_alias("fraud", "champion", 2)
    assert ms.maybe_reload() is None and ms.current.production.meta.version == 1
    assert "alias move refused" in caplog.text and "fraud@2 cannot score on cpu" in caplog.text
    with pytest.raises(ScoreConfigError, match="fraud@2 cannot score on cpu"):
        _models(reg, plan)


def test_a_canary_without_challenger_scores_no_canary(tmp_path, plan, caplog):
    """An aliases.json from before the set_alias guard (or edited by hand): a warning, not a failure."""
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit(0)[1])
    path = tmp_path / "models" / "fraud" / "aliases.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "canary_percent": 10.0}))
    ms = _models(reg, plan)
    assert ms.current.canary is None and ms.current.canary_percent == 0.0
    assert "no challenger alias" in caplog.text and "headwater models canary fraud 0" in caplog.text


def test_one_reload_reads_aliases_once(tmp_path, plan, monkeypatch):
    reg = Registry(tmp_path / "models")
    _register(reg, plan, _fit(0)[1])
    _register(reg, plan, _fit(1)[1])
    reg.set_alias("fraud", "challenger", 2)
    reg.set_alias("fraud", "shadow", 2)
    reg.set_canary("fraud", 10)
    reads = []
    real = reg.aliases
    monkeypatch.setattr(reg, "aliases", lambda name: reads.append(name) or real(name))
    ms = _models(reg, plan, shadows=("fraud@shadow",))
    assert ms.current.canary.meta.version == 2 and reads == ["fraud"]
    reg.set_alias("fraud", "champion", 2)
    reads.clear()
    assert ms.maybe_reload().production.meta.version == 2 and reads == ["fraud"]
