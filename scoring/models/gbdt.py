"""Vectorised tree-ensemble traversal, written once against ``xp`` (NumPy; CuPy on a GPU).

Both strategies evaluate all (row, tree) pairs in lock step, one tree level per step, on the
canonical nodes of ``scoring.models.forest`` (go right iff x >= thr on the variant-expanded
input, so a step is gather, compare, add — no NaN branch):

* ``perfect`` (max depth <= PERFECT_MAX_DEPTH): every tree is padded to a perfect binary tree of
  the ensemble's depth and stored level by level, so the child index is ``2 * i + bit``: per
  level two small table gathers and one input gather. Padding costs 2^depth nodes per tree,
  acceptable up to depth 8 (256 leaves).
* ``nodes`` (deeper trees): nodes renumbered so siblings are adjacent; ``i = first_child[i] +
  bit``, leaves point at themselves (first_child = i - 1, thr = -inf), iterated max-depth
  times. No padding, one more gather per level.

Why not GEMM (Hummingbird) or QuickScorer bit vectors: both evaluate *every* internal node of
every tree (63 per depth-6 tree) instead of one per level (6), ~10x the element operations;
in NumPy that loses to gathers. Measured with bench/models.py (500 trees, depth 6, 20 features,
single-threaded NumPy, 2 shared cores, noisy): ``perfect`` 72k rows/s vs ``nodes`` 49k at batch
1,024, 77k vs 74k at 16,384; ONNX Runtime's TreeEnsemble (1 thread) 36-38k. CPU rows run in
chunks of CHUNK_ROWS so the (rows x trees) temporaries stay in cache (1,024-row chunks measured
about half the speed of 128). Small batches pay NumPy's per-call overhead (~50 calls): at batch
1, 5.7k rows/s vs ONNX Runtime's 41k.
On a GPU the ``nodes`` layout runs in one CuPy RawKernel (``_GPU_SOURCE``): a block of
GPU_BLOCK rows copies its raw rows into shared memory (column-major, so a warp's reads hit
distinct banks), rewriting each value per missing variant on the way (``VARIANTS``, the table
``expand_variants`` uses) into an order-preserving integer key (``_order_keys``: CuPy compiles
with -ftz=true, and float compares read denormals as zero); each thread walks its row through a
contiguous group of trees, four trees at a time so four independent load chains are in flight,
one 8-byte node load per level, sums the leaves in a register and applies the base margin and
the sigmoid. Groups are sized so a batch fills the GPU once (small batches split the trees over
many threads, large ones give each thread all of them); with more than one group a second launch
adds their float64 partial sums in order. So a predict is one launch once a batch fills the GPU
by itself (on an H100 from ~135k rows) and two below. Measured on an H100 (500 trees, depth 6,
20 features, margin only): one tree at a time with 16-byte nodes 187M rows/s at 1M rows; four at
a time with 8-byte nodes 505M; reading rows from global memory instead of the tile 44-66M; the
first, one thread per (row, tree) ElementwiseKernel writing an (n x trees) matrix, 20M. Whole
predict, batch 1 / 1,024 / 1M: 3.1k / 4.7M / 246M rows/s with the rewrite and the sigmoid as
separate CuPy calls, 18.9k / 12.0M / 331M fused.
"""

from __future__ import annotations

import numpy as np

from scoring.models.errors import ModelError
from scoring.models.forest import ZERO_BAND, Forest

__all__ = ["ForestExecutor", "PERFECT_MAX_DEPTH", "expand_variants"]

PERFECT_MAX_DEPTH = 8
SMALL_BATCH = 4  # up to this many rows, the node layout (fewer calls per level) even when perfect is chosen
CHUNK_ROWS = 128  # rows per step on CPU: (rows x trees) temporaries stay in L2 (bench/models.py --chunks)
GPU_BLOCK = 128  # rows (threads) per GPU block
GPU_FILL = 1  # aim for this many times the GPU's resident threads per batch
GPU_TILE_BYTES = 48 * 1024  # shared memory per block for the row tile; wider inputs read global memory


#: Missing variant (``scoring.models.forest``'s table) -> (the value a missing input becomes,
#: whether |x| <= ZERO_BAND also counts as missing). ``expand_variants`` and the GPU kernel's tile
#: load both rewrite inputs from this one table.
VARIANTS = {0: (-np.inf, False), 1: (np.inf, False), 2: (-np.inf, True), 3: (np.inf, True), 4: (0.0, False)}


def expand_variants(X, variants: tuple[int, ...], xp, tiny_is_zero: bool = False):
    """(n, F) float32 -> (n, len(variants) * F): the input rewritten per missing variant.

    +-inf inputs are first clipped to +-FLT_MAX: LightGBM's "NaN vs the rest" split has an
    infinite threshold (dumped as 1e300) that sends +inf with the rest, and a finite stand-in keeps
    +-inf apart from the NaN sentinels. (XGBoost refuses inf inputs outright.)"""
    big = np.finfo(np.float32).max
    X = xp.clip(X.astype(xp.float32, copy=False), -big, big)
    if tiny_is_zero:
        X = xp.where(xp.abs(X) <= ZERO_BAND, xp.float32(0), X)
    nan = xp.isnan(X)
    blocks = []
    for v in variants:
        fill, zero_missing = VARIANTS[v]
        miss = nan | ((X >= -ZERO_BAND) & (X <= ZERO_BAND)) if zero_missing else nan
        blocks.append(xp.where(miss, xp.float32(fill), X))
    return blocks[0] if len(blocks) == 1 else xp.concatenate(blocks, axis=1)


def _order_keys(values) -> np.ndarray:
    """float32 -> int32 with the same order (-0.0 equal to 0.0): the GPU kernel compares these,
    because CuPy compiles every kernel with -ftz=true, which reads denormal floats as zero and
    sent a value one denormal below a denormal split threshold the wrong way."""
    u = np.asarray(values, np.float32).view(np.uint32).copy()
    u[u == 0x80000000] = 0
    neg = u >= 0x80000000
    u[neg] ^= 0x7FFFFFFF
    return u.view(np.int32)


class ForestExecutor:
    """Tables built once on the host, moved to ``xp``; ``predict(X)`` -> scores (float64)."""

    def __init__(self, forest: Forest, xp, strategy: str = "auto") -> None:
        if strategy not in ("auto", "perfect", "nodes"):
            raise ModelError(f"unknown traversal strategy {strategy!r}: use auto, perfect or nodes")
        self.forest, self.xp = forest, xp
        self.variants = forest.variants or (0,)
        self.block = {v: i for i, v in enumerate(self.variants)}
        self.depth = forest.max_depth
        self.n_trees = len(forest.trees)
        self.ncol = len(self.variants) * forest.n_features
        self._gpu = xp.__name__ == "cupy"
        if strategy == "auto" or self._gpu:  # the GPU always runs the node-layout kernel
            strategy = "perfect" if self.depth <= PERFECT_MAX_DEPTH and not self._gpu else "nodes"
        self.strategy = strategy
        if strategy == "perfect":
            self._build_perfect()
        else:
            self._build_nodes()

    def _col(self, tree, i) -> int:
        return self.block[int(tree.variant[i])] * self.forest.n_features + int(tree.feature[i])

    # ---- perfect layout ------------------------------------------------------------------------
    def _build_perfect(self) -> None:
        D, T = self.depth, self.n_trees
        feat = [np.zeros((T, 1 << lv), np.int64) for lv in range(D)]
        thr = [np.full((T, 1 << lv), np.inf, np.float32) for lv in range(D)]
        leaves = np.zeros((T, 1 << D), np.float64)
        for t, tree in enumerate(self.forest.trees):
            stack = [(0, 0, 0)]
            while stack:
                node, lv, pos = stack.pop()
                if tree.left[node] < 0:
                    span = 1 << (D - lv)
                    leaves[t, pos * span:(pos + 1) * span] = tree.value[node]
                    continue
                feat[lv][t, pos], thr[lv][t, pos] = self._col(tree, node), tree.threshold[node]
                stack += [(int(tree.left[node]), lv + 1, 2 * pos), (int(tree.right[node]), lv + 1, 2 * pos + 1)]
        xp = self.xp
        self.p_feat = [xp.asarray(f.ravel()) for f in feat]
        self.p_thr = [xp.asarray(f.ravel()) for f in thr]
        self.p_leaves = xp.asarray(leaves.ravel())
        self.p_toff = [xp.asarray(np.arange(T, dtype=np.int64) << lv) for lv in range(D + 1)]

    def _margin_perfect(self, Xe):
        """CPU: one chunk of rows; every temporary preallocated (``out=``, ``mode="clip"`` keeps
        take unbuffered; indices are always in range), which measured ~1.3x faster than fresh arrays."""
        n, T = Xe.shape[0], self.n_trees
        flat = Xe.ravel()
        rowoff = (np.arange(n, dtype=np.int64) * self.ncol)[:, None]
        idx = np.zeros((n, T), np.int64)
        node, col = np.empty((n, T), np.int64), np.empty((n, T), np.int64)
        x, t, bit = np.empty((n, T), np.float32), np.empty((n, T), np.float32), np.empty((n, T), np.bool_)
        for lv in range(self.depth):
            if lv == 0:  # one node per tree: a column gather
                np.greater_equal(Xe[:, self.p_feat[0]], self.p_thr[0][None, :], out=bit)
            else:
                np.add(idx, self.p_toff[lv][None, :], out=node)
                self.p_feat[lv].take(node, out=col, mode="clip")
                np.add(col, rowoff, out=col)
                flat.take(col, out=x, mode="clip")
                self.p_thr[lv].take(node, out=t, mode="clip")
                np.greater_equal(x, t, out=bit)
            np.left_shift(idx, 1, out=idx)
            np.add(idx, bit, out=idx)
        np.add(idx, self.p_toff[self.depth][None, :], out=idx)
        return self.p_leaves.take(idx, mode="clip").sum(axis=1)

    # ---- node layout ---------------------------------------------------------------------------
    def _build_nodes(self) -> None:
        feat, thr, first, value, roots = [], [], [], [], []
        for tree in self.forest.trees:
            base = len(feat)
            roots.append(base)
            order = [0]  # BFS with siblings adjacent: new ids in visit order
            new_id = {0: base}
            k = 0
            while k < len(order):
                node = order[k]
                k += 1
                if tree.left[node] >= 0:
                    for child in (int(tree.left[node]), int(tree.right[node])):
                        new_id[child] = base + len(order)
                        order.append(child)
            for node in order:
                me = new_id[node]
                if tree.left[node] < 0:
                    feat.append(0), thr.append(-np.inf), first.append(me - 1), value.append(tree.value[node])
                else:
                    feat.append(self._col(tree, node)), thr.append(tree.threshold[node])
                    first.append(new_id[int(tree.left[node])]), value.append(0.0)
        if self._gpu:  # 8 bytes per node: threshold order key, column << 16 | (first child - tree root)
            start = np.repeat(np.asarray(roots, np.int64), np.diff(np.append(roots, len(feat))))
            rel, col = np.asarray(first, np.int64) - start, np.asarray(feat, np.int64)
            if rel.max(initial=0) > 32767 or col.max(initial=0) > 65535:
                raise ModelError("a tree of over 32,767 nodes or an input of over 65,535 expanded columns does not "
                                 "fit the GPU kernel's 8-byte nodes: use --device cpu for this model")
            packed = np.empty((len(feat), 2), np.int32)
            packed[:, 0] = _order_keys(thr)
            packed[:, 1] = ((col << 16) | (rel & 0xFFFF)).astype(np.uint32).view(np.int32)
            xp = self.xp
            self.g_nodes = xp.asarray(packed)
            self.g_value = xp.asarray(np.asarray(value, np.float64))
            self.g_roots = xp.asarray(np.asarray(roots, np.int32))
            self.g_fill = xp.asarray(_order_keys([VARIANTS[v][0] for v in self.variants]))
            self.g_zero = sum(1 << b for b, v in enumerate(self.variants) if VARIANTS[v][1])
            return
        xp = self.xp
        self.n_feat = xp.asarray(np.asarray(feat, np.int64))
        self.n_thr = xp.asarray(np.asarray(thr, np.float32))
        self.n_first = xp.asarray(np.asarray(first, np.int64))
        self.n_value = xp.asarray(np.asarray(value, np.float64))
        self.n_roots = xp.asarray(np.asarray(roots, np.int64))

    def _margin_nodes(self, Xe):  # host only: a GPU forest takes _gpu_scores
        n = Xe.shape[0]
        flat = Xe.ravel()
        rowoff = (np.arange(n, dtype=np.int64) * self.ncol)[:, None]
        idx = np.repeat(self.n_roots[None, :], n, axis=0)
        col, x, t = np.empty(idx.shape, np.int64), np.empty(idx.shape, np.float32), np.empty(idx.shape, np.float32)
        bit = np.empty(idx.shape, np.bool_)
        for _ in range(self.depth):
            self.n_feat.take(idx, out=col, mode="clip")
            np.add(col, rowoff, out=col)
            flat.take(col, out=x, mode="clip")
            self.n_thr.take(idx, out=t, mode="clip")
            np.greater_equal(x, t, out=bit)
            self.n_first.take(idx, out=idx, mode="clip")
            np.add(idx, bit, out=idx)
        return self.n_value.take(idx, mode="clip").sum(axis=1)

    def _gpu_scores(self, X, link: bool):
        """The whole forest in one kernel launch: inputs rewritten per variant into order keys
        while the block's rows are copied into shared memory (rows too wide for it are rewritten
        into global memory by a first launch), the base margin and, with ``link``, the sigmoid
        applied in the kernel; tree groups (sized so blocks x groups x GPU_BLOCK threads cover the
        GPU GPU_FILL times) are summed by a second launch only when there is more than one.
        (A float64 X is narrowed to float32 on the device, where CuPy flushes denormals.)"""
        cp, F = self.xp, self.forest.n_features
        n, T = X.shape[0], self.n_trees
        if n == 0:
            return cp.zeros(0, cp.float64)
        use_tile = GPU_BLOCK * self.ncol * 4 <= GPU_TILE_BYTES
        kernel, finish, keys = _gpu_kernels()
        rewrite = (self.g_fill, np.int32(self.g_zero), np.int32(len(self.variants)),
                   np.int32(self.forest.tiny_is_zero), np.uint32(np.float32(ZERO_BAND).view(np.uint32)))
        src = cp.ascontiguousarray(X[:, :F], dtype=cp.float32)
        if not use_tile:
            expanded = cp.empty((n, self.ncol), cp.int32)
            keys((-(-n * F // GPU_BLOCK),), (GPU_BLOCK,), (src, np.int32(n), np.int32(F), *rewrite, expanded))
            src = expanded
        blocks = -(-n // GPU_BLOCK)
        want = GPU_FILL * _gpu_threads() // GPU_BLOCK
        per_group = -(-T // max(1, min(T, want // blocks)))
        groups = -(-T // per_group)
        fin = (np.float64(self.forest.base_margin), np.float64(self.forest.sigmoid_scale),
               np.int32(link and self.forest.link != "identity"))
        out = cp.empty((groups, n), cp.float64)
        kernel((blocks, groups), (GPU_BLOCK,),
               (src, self.g_nodes, self.g_value, self.g_roots, *rewrite, np.int32(n), np.int32(F), np.int32(T),
                np.int32(self.depth), np.int32(per_group), np.int32(use_tile), *fin, out),
               shared_mem=GPU_BLOCK * self.ncol * 4 if use_tile else 0)
        if groups == 1:
            return out[0]
        scores = cp.empty(n, cp.float64)
        finish((blocks,), (GPU_BLOCK,), (out, np.int32(groups), np.int32(n), *fin, scores))
        return scores

    # ---- public --------------------------------------------------------------------------------
    def _check_width(self, X) -> None:
        if X.shape[1] < self.forest.n_features:
            raise ModelError(f"tree model reads {self.forest.n_features} feature columns; the matrix has {X.shape[1]}")

    def margin(self, X):
        xp = self.xp
        self._check_width(X)
        if self._gpu:
            return self._gpu_scores(X, link=False)
        Xe = expand_variants(X[:, :self.forest.n_features], self.variants, xp, self.forest.tiny_is_zero)
        step = self._margin_perfect if self.strategy == "perfect" else self._margin_nodes
        if self.strategy == "perfect" and Xe.shape[0] <= SMALL_BATCH:
            if not hasattr(self, "n_feat"):
                self._build_nodes()
            step = self._margin_nodes  # fewer NumPy calls: bench, batch 1: nodes 11.3k rows/s, perfect 5.7k
        if Xe.shape[0] <= CHUNK_ROWS:
            out = step(Xe)
        else:
            out = xp.concatenate([step(Xe[i:i + CHUNK_ROWS]) for i in range(0, Xe.shape[0], CHUNK_ROWS)])
        return out + self.forest.base_margin

    def predict(self, X, xp=None):
        if self._gpu:
            self._check_width(X)
            return self._gpu_scores(X, link=True)
        m = self.margin(X)
        if self.forest.link == "identity":
            return m
        return 1.0 / (1.0 + self.xp.exp(-self.forest.sigmoid_scale * m))


_GPU_SOURCE = r"""
#define HW_STEP(b, k) { const int2 nd = __ldg(nodes + (b) + (k)); \
    k = (int)(short)(nd.y & 0xffff) + (x[(((unsigned)nd.y) >> 16) * stride] >= nd.x ? 1 : 0); }

// One input value (float32 bits) rewritten for missing variant b, as expand_variants does
// (VARIANTS: NaN, and |x| <= band where bit b of zero is set, -> fill[b]; +-inf -> +-FLT_MAX;
// |x| <= band -> 0 when tiny), returned as an order key (_order_keys). Integer operations only:
// CuPy compiles with -ftz=true, and float compares would read denormals as zero.
__device__ __forceinline__ int hw_key(unsigned u, const int b, const int* __restrict__ fill, const int zero,
                                      const int tiny, const unsigned band) {
    const unsigned a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return fill[b];
    if (a == 0x7f800000u) u = (u & 0x80000000u) | 0x7f7fffffu;
    if (tiny && a <= band) u = 0u;
    if (((zero >> b) & 1) && (u & 0x7fffffffu) <= band) return fill[b];
    if (u == 0x80000000u) u = 0u;
    return (int)(u ^ ((unsigned)((int)u >> 31) & 0x7fffffffu));
}

__device__ double hw_finish(double m, const double base, const double scale, const int link) {
    m += base;
    return link ? 1.0 / (1.0 + exp(-scale * m)) : m;
}

// rows too wide for the shared-memory tile: keys of every variant into global memory first
extern "C" __global__ void headwater_forest_keys(
        const unsigned* __restrict__ src, const int n, const int nf, const int* __restrict__ fill,
        const int zero, const int nvar, const int tiny, const unsigned band, int* __restrict__ out) {
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)n * nf) return;
    const long long r = k / nf;
    const int f = (int)(k - r * nf);
    for (int b = 0; b < nvar; ++b) out[r * nvar * nf + b * nf + f] = hw_key(src[k], b, fill, zero, tiny, band);
}

// src: raw rows (n x nf, float32 bits) with use_tile, rewritten into the tile as they are copied;
// without, the keys from headwater_forest_keys (n x nvar*nf).
extern "C" __global__ void headwater_forest(
        const unsigned* __restrict__ src, const int2* __restrict__ nodes, const double* __restrict__ value,
        const int* __restrict__ roots, const int* __restrict__ fill, const int zero, const int nvar,
        const int tiny, const unsigned band, const int n, const int nf, const int ntrees, const int depth,
        const int per_group, const int use_tile, const double base, const double scale, const int link,
        double* __restrict__ out) {
    extern __shared__ int tile[];  // [nvar * nf][blockDim.x]: column-major, one bank per thread
    const int r0 = blockIdx.x * blockDim.x;
    const int rows = min((int)blockDim.x, n - r0);
    if (use_tile) {
        for (int k = threadIdx.x; k < rows * nf; k += blockDim.x) {  // coalesced global reads
            const int r = k / nf, f = k - r * nf;
            const unsigned u = src[(long long)r0 * nf + k];
            for (int b = 0; b < nvar; ++b) tile[(b * nf + f) * blockDim.x + r] = hw_key(u, b, fill, zero, tiny, band);
        }
        __syncthreads();
    }
    const int r = threadIdx.x;
    if (r >= rows) return;
    const int* x = use_tile ? tile + r : (const int*)src + (long long)(r0 + r) * nvar * nf;
    const int stride = use_tile ? blockDim.x : 1;
    const int t0 = blockIdx.y * per_group, t1 = min(ntrees, t0 + per_group);
    double acc = 0.0;
    int t = t0;
    for (; t + 4 <= t1; t += 4) {  // four independent walks in flight hide the load latency
        const int b0 = roots[t], b1 = roots[t + 1], b2 = roots[t + 2], b3 = roots[t + 3];
        int k0 = 0, k1 = 0, k2 = 0, k3 = 0;
        for (int d = 0; d < depth; ++d) {  // leaves point at themselves: extra levels are no-ops
            HW_STEP(b0, k0) HW_STEP(b1, k1) HW_STEP(b2, k2) HW_STEP(b3, k3)
        }
        acc += value[b0 + k0]; acc += value[b1 + k1]; acc += value[b2 + k2]; acc += value[b3 + k3];
    }
    for (; t < t1; ++t) {
        const int b0 = roots[t];
        int k0 = 0;
        for (int d = 0; d < depth; ++d) HW_STEP(b0, k0)
        acc += value[b0 + k0];
    }
    out[(long long)blockIdx.y * n + r0 + r] = gridDim.y == 1 ? hw_finish(acc, base, scale, link) : acc;
}

// several tree groups: their partial sums in group order, then the base margin and the link
extern "C" __global__ void headwater_forest_finish(
        const double* __restrict__ partial, const int groups, const int n, const double base,
        const double scale, const int link, double* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double m = 0.0;
    for (int g = 0; g < groups; ++g) m += partial[(long long)g * n + i];
    out[i] = hw_finish(m, base, scale, link);
}
"""

_KERNEL = None
_THREADS = None


def _gpu_kernels():
    """(forest, finish, keys), compiled once per process (NVRTC through CuPy)."""
    global _KERNEL
    if _KERNEL is None:
        import cupy
        module = cupy.RawModule(code=_GPU_SOURCE)
        _KERNEL = tuple(module.get_function(f"headwater_forest{s}") for s in ("", "_finish", "_keys"))
    return _KERNEL


def _gpu_threads() -> int:
    """Resident threads the current GPU can hold (multiprocessors x max threads per SM)."""
    global _THREADS
    if _THREADS is None:
        import cupy
        attrs = cupy.cuda.Device().attributes
        _THREADS = attrs["MultiProcessorCount"] * attrs["MaxThreadsPerMultiProcessor"]
    return _THREADS
