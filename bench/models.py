"""Model kernel throughput: rows/s of the array executors vs ONNX Runtime, at several batch sizes.

    flock /tmp/headwater-bench.lock python bench/models.py [--trees 500] [--depth 6] [--features 20]
        [--batches 1,64,1024,16384] [--gpu-batches 1,64,1024,16384,262144,1048576] [--repeat 5]
        [--chunks 128,256,512,1024,4096]

Trains on synthetic data (NaN in 10% of cells): an XGBoost GBDT (``--trees`` x depth ``--depth``),
a logistic regression and an MLP (64, 32) through scikit-learn pipelines (median imputer,
standardizer), imports them into Headwater's executors and exports them to ONNX. For each batch
size it times ``predict`` (best of ``--repeat`` runs, each long enough to last >= 0.2 s) and
prints a Markdown table: the GBDT through both traversal strategies (``perfect``, ``nodes``)
and ONNX Runtime's TreeEnsemble operator with 1 thread and with its default threads, then
logreg and MLP against their ONNX exports. NumPy runs single threaded (``OMP_NUM_THREADS=1``
is set before import, so GEMMs do not use a second core either). ``--chunks`` sweeps the CPU
row-chunk size of the tree traversal. On a CUDA GPU with cupy the same executors run on CuPy and
the table gains GPU rows (at ``--gpu-batches``, default ``--batches``; the CPU rows run only at
``--batches``, "-" elsewhere), ONNX Runtime's CUDA provider for logreg and MLP when onnxruntime
has one, and the smallest common batch where the GPU is faster; without a GPU it prints "no GPU".
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _data(n: int, f: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[rng.random((n, f)) < 0.1] = np.nan
    Z = np.nan_to_num(X)
    y = (Z[:, 0] + Z[:, 1] * Z[:, 2] - 0.5 * Z[:, 3] ** 2 + 0.3 * Z[:, 4:].sum(axis=1) + rng.normal(size=n) > 0)
    return X, y.astype(int)


def rows_per_s(fn, X, repeat: int, min_s: float = 0.2, sync=lambda: None) -> float:
    """Best of ``repeat`` timings; each timing loops ``fn(X)`` until >= min_s elapsed."""
    fn(X)
    sync()
    best = 0.0
    for _ in range(repeat):
        loops, t0 = 0, time.perf_counter()
        while True:
            fn(X)
            loops += 1
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        best = max(best, loops * X.shape[0] / dt)
    return best


def build_models(args):
    import xgboost as xgb
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from scoring.models.dense import DenseModel
    from scoring.models.forest import from_xgboost
    from scoring.models.onnx import export_onnx

    X, y = _data(20_000, args.features)
    print(f"training: XGBoost {args.trees} trees depth {args.depth}, logreg, MLP(64,32) on "
          f"{X.shape[0]} x {X.shape[1]} ...", file=sys.stderr, flush=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": args.depth, "eta": 0.05, "nthread": 2,
                         "tree_method": "hist"}, xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=args.trees)
    forest = from_xgboost(booster.save_raw("json"))
    dense = {}
    for name, est in (("logreg", LogisticRegression(max_iter=500)),
                      ("mlp", MLPClassifier((64, 32), max_iter=50, random_state=0))):
        pipe = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), est).fit(X, y)
        imp, sc = pipe.steps[0][1], pipe.steps[1][1]
        dense[name] = (DenseModel.from_sklearn(est, impute=imp.statistics_, mean=sc.mean_, scale=sc.scale_),
                       export_onnx(pipe, X.shape[1]))
    return forest, export_onnx(booster, X.shape[1]), dense


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", type=int, default=500)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--batches", default="1,64,1024,16384")
    p.add_argument("--gpu-batches", default="", help="batch sizes for the GPU rows (default: --batches)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--chunks", default="", help="also sweep CHUNK_ROWS of the CPU traversal, e.g. 128,256,1024")
    args = p.parse_args()
    import scoring.models.gbdt as gbdt
    from scoring import xp as xpmod
    from scoring.models.onnx import OnnxExecutor

    forest, gbdt_onnx, dense = build_models(args)
    batches = [int(b) for b in args.batches.split(",")]
    gpu_batches = [int(b) for b in (args.gpu_batches or args.batches).split(",")]
    columns = sorted(set(batches) | set(gpu_batches))
    Xall, _ = _data(max(columns), args.features, seed=1)
    gpu = xpmod.gpu_available()
    cp = None
    if gpu:
        import cupy as cp

    execs = {
        "gbdt perfect": forest.executor(np, "perfect"),
        "gbdt nodes": forest.executor(np, "nodes"),
        "gbdt onnxruntime 1 thread": OnnxExecutor(gbdt_onnx, np, threads=1),
        "gbdt onnxruntime default threads": OnnxExecutor(gbdt_onnx, np),
    }
    for name, (model, blob) in dense.items():
        execs[f"{name} numpy"] = model.executor(np)
        execs[f"{name} onnxruntime 1 thread"] = OnnxExecutor(blob, np, threads=1)
    gpu_execs = {}
    if gpu:
        gpu_execs = {"gbdt": forest.executor(cp), "logreg": dense["logreg"][0].executor(cp),
                     "mlp": dense["mlp"][0].executor(cp)}
        for name, (_, blob) in dense.items():
            try:
                gpu_execs[f"{name} onnxruntime CUDA"] = OnnxExecutor(blob, cp)
            except Exception as exc:  # no CUDA provider in this onnxruntime: say so, keep going
                print(f"{name} onnxruntime CUDA: not run ({exc})", file=sys.stderr, flush=True)

    print(f"\n## Model kernels, rows/s ({date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores shared with other work; NumPy single-threaded; best of {args.repeat})\n")
    print(f"GBDT: {len(forest.trees)} trees, max depth {forest.max_depth}, {args.features} features, "
          f"strategy auto = {forest.executor(np).strategy}\n")
    print("| executor | " + " | ".join(f"batch {b:,}" for b in columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    results: dict[str, dict[int, float]] = {}

    def row(label: str, key: str, fn, sizes, to=lambda a: a, sync=lambda: None) -> None:
        results[key] = {b: rows_per_s(fn, to(Xall[:b]), args.repeat, sync=sync) for b in sizes}
        cells = (f"{results[key][b]:,.0f}" if b in results[key] else "-" for b in columns)
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    for name, ex in execs.items():
        row(name, name, ex.predict, batches)
    for name, ex in gpu_execs.items():
        row(f"{name} (GPU)" if "CUDA" in name else f"{name} cupy (GPU)", f"{name} cupy", ex.predict, gpu_batches,
            cp.asarray, cp.cuda.Device().synchronize)
    ratio = [results["gbdt perfect"][b] / results["gbdt onnxruntime 1 thread"][b] for b in batches]
    print("\ngbdt perfect / onnxruntime (1 thread): " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in zip(batches, ratio)))
    if not gpu:
        print("no GPU")
    else:
        common = [b for b in batches if b in gpu_batches]
        for name in ("gbdt", "logreg", "mlp"):
            cpu, gpu_r = results["gbdt perfect" if name == "gbdt" else f"{name} numpy"], results[f"{name} cupy"]
            win = next((b for b in common if gpu_r[b] > cpu[b]), None)
            print(f"{name}: GPU (cupy) faster than CPU (numpy, 1 thread) from batch {win:,}" if win
                  else f"{name}: GPU never faster up to batch {common[-1]:,}")
        print(f"gbdt cupy peak: {max(results['gbdt cupy'].values()):,.0f} rows/s")
    if args.chunks:
        b = max(batches)
        print(f"\nCPU traversal chunk sweep (batch {b:,}, rows/s):")
        for chunk in (int(c) for c in args.chunks.split(",")):
            gbdt.CHUNK_ROWS = chunk
            row = [rows_per_s(forest.executor(np, s).predict, Xall[:b], args.repeat) for s in ("perfect", "nodes")]
            print(f"  chunk {chunk:5}: perfect {row[0]:,.0f}  nodes {row[1]:,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
