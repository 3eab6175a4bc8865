"""Tree ensembles imported from XGBoost and LightGBM JSON dumps into one canonical form.

Canonical node rule, for both libraries: a split on column ``f`` goes **right iff x >= thr**
(float32), after the input was rewritten by the node's *missing variant*:

====  =========================================  ==========================================
code  input rewrite                               used for
====  =========================================  ==========================================
0     NaN -> -inf                                 default direction left (XGBoost, LightGBM NaN)
1     NaN -> +inf                                 default direction right
2     NaN and |x| <= 1e-35 -> -inf                LightGBM missing_type Zero, default left
3     NaN and |x| <= 1e-35 -> +inf                LightGBM missing_type Zero, default right
4     NaN -> 0                                    LightGBM missing_type None (NaN read as 0)
====  =========================================  ==========================================

So every node is one comparison with no NaN test: the executor expands X once into the
variants the model uses and each node reads its variant's column. XGBoost goes left iff
``x < split_condition`` in float32, which is the rule as is. LightGBM goes left iff
``double(x) <= threshold``; for float32 x that equals ``x < next_up(round_down_f32(threshold))``,
so thresholds convert exactly. Categorical splits, multi-class and DART/linear trees are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.models.errors import ModelError

__all__ = ["Tree", "Forest", "from_xgboost", "from_xgboost_dump", "from_lightgbm", "load_forest", "XGBOOST_FILE", "LIGHTGBM_FILE"]

XGBOOST_FILE = "xgboost.json"
LIGHTGBM_FILE = "lightgbm.json"
ZERO_BAND = np.float32(1e-35)  # LightGBM kZeroThreshold


@dataclass(frozen=True)
class Tree:
    """Node arrays (node 0 = root); ``left``/``right`` are -1 at leaves."""

    feature: np.ndarray    # int64
    threshold: np.ndarray  # float32, go right iff x >= threshold
    variant: np.ndarray    # int8, see the module table
    left: np.ndarray       # int64
    right: np.ndarray      # int64
    value: np.ndarray      # float64, leaf values (0 at internal nodes)

    @property
    def depth(self) -> int:
        best, stack = 0, [(0, 0)]
        while stack:
            node, d = stack.pop()
            if self.left[node] < 0:
                best = max(best, d)
            else:
                stack += [(int(self.left[node]), d + 1), (int(self.right[node]), d + 1)]
        return best


@dataclass(frozen=True)
class Forest:
    """``score = link(base_margin + sum of leaves)``; link ``sigmoid`` (scaled) or ``identity``."""

    n_features: int
    trees: tuple[Tree, ...]
    base_margin: float
    link: str
    sigmoid_scale: float = 1.0
    source: str = ""
    tiny_is_zero: bool = False
    """LightGBM reads inputs with |x| <= 1e-35 as 0 before any split (its dense-row conversion)."""

    @property
    def max_depth(self) -> int:
        return max((t.depth for t in self.trees), default=0)

    @property
    def variants(self) -> tuple[int, ...]:
        return tuple(sorted({int(v) for t in self.trees for v in np.unique(t.variant[t.left >= 0])}))

    def executor(self, xp, strategy: str = "auto"):
        from scoring.models.gbdt import ForestExecutor
        return ForestExecutor(self, xp, strategy)


def _tree(nodes: list[tuple[int, float, int, int, int, float]]) -> Tree:
    a = list(zip(*nodes)) if nodes else [[]] * 6
    return Tree(np.asarray(a[0], np.int64), np.asarray(a[1], np.float32), np.asarray(a[2], np.int8),
                np.asarray(a[3], np.int64), np.asarray(a[4], np.int64), np.asarray(a[5], np.float64))


def _float_list(s) -> float:
    s = str(s).strip().strip("[]")
    return float(s.split(",")[0])


def from_xgboost(model: dict | str | bytes) -> Forest:
    """From ``Booster.save_model("x.json")`` / ``save_raw("json")`` (binary:logistic, reg:logistic,
    binary:logitraw). base_score is stored in probability space and enters as its logit."""
    d = json.loads(model) if isinstance(model, (str, bytes, bytearray)) else model
    try:
        learner = d["learner"]
        obj = learner["objective"]["name"]
        param = learner["learner_model_param"]
        booster = learner["gradient_booster"]
        raw_trees = booster["model"]["trees"]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"not an XGBoost save_model JSON (missing {exc}): save with Booster.save_model('m.json')") from exc
    if booster.get("name") != "gbtree":
        raise ModelError(f"XGBoost booster {booster.get('name')!r} is not supported: train with booster='gbtree'")
    if int(param.get("num_class", 0)) > 1 or int(param.get("num_target", 1)) > 1:
        raise ModelError("multi-class / multi-target XGBoost models are not supported: train a binary model")
    if obj not in ("binary:logistic", "reg:logistic", "binary:logitraw"):
        raise ModelError(f"XGBoost objective {obj!r} is not supported: use binary:logistic")
    base = _float_list(param["base_score"])
    if obj == "binary:logitraw":
        margin, link = base, "identity"
    else:
        if not 0.0 < base < 1.0:
            raise ModelError(f"XGBoost base_score {base} is not a probability in (0, 1)")
        margin, link = math.log(base / (1.0 - base)), "sigmoid"
    trees = []
    for t in raw_trees:
        if any(int(s) != 0 for s in t.get("split_type", [])):
            raise ModelError("XGBoost categorical splits are not supported: one-hot encode categorical features")
        left, right = t["left_children"], t["right_children"]
        cond, feat, dleft = t["split_conditions"], t["split_indices"], t["default_left"]
        nodes = []
        for i in range(len(left)):
            if left[i] == -1:
                nodes.append((0, -np.inf, 0, -1, -1, float(np.float32(cond[i]))))
            else:
                nodes.append((int(feat[i]), float(np.float32(cond[i])), 0 if dleft[i] else 1, left[i], right[i], 0.0))
        trees.append(_tree(nodes))
    return Forest(int(param["num_feature"]), tuple(trees), margin, link, 1.0, "xgboost")


def from_xgboost_dump(dump, *, base_score: float, n_features: int, feature_names=None,
                      objective: str = "binary:logistic") -> Forest:
    """From ``Booster.get_dump(dump_format="json")`` (a list of per-tree JSON strings). The dump
    holds no base_score, objective or feature count: pass them (``save_model`` JSON has them all)."""
    if objective not in ("binary:logistic", "reg:logistic"):
        raise ModelError(f"XGBoost objective {objective!r} is not supported: use binary:logistic")
    if not 0.0 < base_score < 1.0:
        raise ModelError(f"XGBoost base_score {base_score} is not a probability in (0, 1)")
    index = {name: i for i, name in enumerate(feature_names or [])}

    def col(split: str) -> int:
        if split in index:
            return index[split]
        if split.startswith("f") and split[1:].isdigit():
            return int(split[1:])
        raise ModelError(f"XGBoost dump splits on {split!r}: pass feature_names to map it to a column")

    trees = []
    for text in dump:
        root = json.loads(text) if isinstance(text, str) else text
        by_id: dict[int, dict] = {}
        stack = [root]
        while stack:
            n = stack.pop()
            by_id[int(n["nodeid"])] = n
            stack += n.get("children", [])
        ids = sorted(by_id)
        pos = {nid: i for i, nid in enumerate(ids)}
        nodes = []
        for nid in ids:
            n = by_id[nid]
            if "leaf" in n:
                nodes.append((0, -np.inf, 0, -1, -1, float(np.float32(n["leaf"]))))
                continue
            if "split_condition" not in n:
                raise ModelError("XGBoost categorical splits are not supported: one-hot encode categorical features")
            yes, no = int(n["yes"]), int(n["no"])
            variant = 0 if int(n["missing"]) == yes else 1
            nodes.append((col(str(n["split"])), float(np.float32(n["split_condition"])), variant, pos[yes], pos[no], 0.0))
        trees.append(_tree(nodes))
    return Forest(int(n_features), tuple(trees), math.log(base_score / (1.0 - base_score)), "sigmoid", 1.0, "xgboost")


def _lgb_threshold(t: float) -> np.float32:
    """The float32 ``thr`` with ``float32 x < thr  <=>  double(x) <= t``."""
    with np.errstate(over="ignore"):
        down = np.float32(t)
        if float(down) > t:
            down = np.nextafter(down, np.float32(-np.inf))
        return np.nextafter(down, np.float32(np.inf))


def from_lightgbm(model: dict | str) -> Forest:
    """From ``Booster.dump_model()`` (objective binary, numerical splits). The init score
    (boost_from_average) is already part of the first tree's leaves."""
    d = json.loads(model) if isinstance(model, (str, bytes, bytearray)) else model
    if not isinstance(d, dict) or "tree_info" not in d:
        raise ModelError("not a LightGBM dump_model() JSON (no tree_info): dump with booster.dump_model()")
    if int(d.get("num_class", 1)) != 1 or d.get("average_output"):
        raise ModelError("multi-class or random-forest LightGBM models are not supported: train a binary GBDT")
    objective = str(d.get("objective", ""))
    parts = objective.split()
    if parts and parts[0] == "binary":
        scale = float(next((p.split(":")[1] for p in parts if p.startswith("sigmoid:")), 1.0))
        link = "sigmoid"
    elif parts and parts[0] in ("regression", "cross_entropy", "xentropy"):
        raise ModelError(f"LightGBM objective {objective!r} is not supported: use objective='binary'")
    else:
        raise ModelError(f"LightGBM objective {objective!r} is not supported: use objective='binary'")
    trees = []
    for info in d["tree_info"]:
        if info.get("num_cat", 0):
            raise ModelError("LightGBM categorical splits are not supported: one-hot encode categorical features")
        nodes: list = []

        def walk(n: dict) -> int:
            i = len(nodes)
            nodes.append(None)
            if "leaf_value" in n:
                if "leaf_coeff" in n:
                    raise ModelError("LightGBM linear trees are not supported: train with linear_tree=false")
                nodes[i] = (0, -np.inf, 0, -1, -1, float(n["leaf_value"]))
                return i
            if n.get("decision_type", "<=") != "<=":
                raise ModelError(f"LightGBM decision type {n.get('decision_type')!r} is not supported")
            mt, dl = n.get("missing_type", "None"), bool(n.get("default_left", True))
            variant = {"NaN": 0 if dl else 1, "Zero": 2 if dl else 3, "None": 4}[mt]
            lo = walk(n["left_child"])
            hi = walk(n["right_child"])
            nodes[i] = (int(n["split_feature"]), float(_lgb_threshold(float(n["threshold"]))), variant, lo, hi, 0.0)
            return i

        walk(info["tree_structure"])
        trees.append(_tree(nodes))
    n_features = int(d.get("max_feature_idx", -1)) + 1
    return Forest(n_features, tuple(trees), 0.0, link, scale, "lightgbm", tiny_is_zero=True)


def load_forest(directory: Path) -> Forest:
    directory = Path(directory)
    if (directory / XGBOOST_FILE).exists():
        return from_xgboost((directory / XGBOOST_FILE).read_text())
    if (directory / LIGHTGBM_FILE).exists():
        return from_lightgbm((directory / LIGHTGBM_FILE).read_text())
    raise ModelError(f"no {XGBOOST_FILE} or {LIGHTGBM_FILE} in {directory}: the gbdt version is incomplete; re-register it")
