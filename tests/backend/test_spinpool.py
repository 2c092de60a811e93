"""The native spin pool (graphc/backend/llvm/spinpool.py) and what runs on it: heavy small
kernels (KernelSplit), large kernels in dynamic slices, products split by columns
(graphc/backend/llvm/blas_split.py), several callers at once, a forked child."""
import os

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.tensor.packed import pack_weights

PY = graphc.Mode(linker="py", optimizer="fast_run")


def _f32(a):
    return np.asarray(a, dtype=np.float32)


@pytest.fixture(autouse=True)
def pool_code_loaded():
    """Splits wait for the pool's code, loaded in the background (spinpool.prefetch): load
    it now, so the tests see both ways from their first calls."""
    from graphc.backend.llvm import spinpool
    if spinpool.usable(1):
        spinpool._functions()
        spinpool.kernel_slice()


# ------------------------------------------------------------------ the spin pool
def _counter_region():
    from graphc.backend.llvm import jit
    text = """
define void @ENTRY(ptr %d, i64 %s) {
entry:
  %p = getelementptr inbounds i64, ptr %d, i64 %s
  %v = load i64, ptr %p
  %s1 = add i64 %s, 1
  %v1 = add i64 %v, %s1
  store i64 %v1, ptr %p
  ret void
}"""
    return jit.load_function(jit.cache_key("test-spinpool-region", text),
                             lambda: text.replace("@ENTRY", "@" + jit.PLACEHOLDER))


def test_spin_pool_runs_every_slice_once():
    from graphc.backend.llvm.spinpool import get_pool
    pool = get_pool(2)
    if pool is None:
        pytest.skip("no spin pool on this platform")
    fn = _counter_region()
    d = np.zeros(50, np.int64)
    for slices in list(range(1, 51)) * 4:
        pool.run(fn, d.ctypes.data, slices)
    expect = np.zeros(50, np.int64)
    for slices in list(range(1, 51)) * 4:
        expect[:slices] += np.arange(1, slices + 1)
    np.testing.assert_array_equal(d, expect)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_spin_pool_in_forked_child():
    """A child has none of the parent's worker threads: it gets a pool of its own."""
    from graphc.backend.llvm.spinpool import get_pool
    parent = get_pool(2)
    if parent is None:
        pytest.skip("no spin pool on this platform")
    fn = _counter_region()
    d = np.zeros(4, np.int64)
    parent.run(fn, d.ctypes.data, 4)
    pid = os.fork()
    if pid == 0:                                    # pragma: no cover - the child
        ok = False
        try:
            child = get_pool(2)
            c = np.zeros(4, np.int64)
            child.run(fn, c.ctypes.data, 4)
            ok = child is not parent and (c == [1, 2, 3, 4]).all()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


# ------------------------------------------------------------------ kernels on the spin pool
def test_heavy_kernel_split_over_spin_pool():
    """A loop too small for the thread pool but heavy runs on the spin pool or on one thread,
    whichever has been faster; both ways give the reference's results."""
    from graphc.backend.llvm import compile_kernel
    from graphc.backend.llvm.kernel import num_threads
    from graphc.backend.llvm.spinpool import usable
    from graphc.tensor.fused import Fused
    from graphc.tensor.nnet import sigmoid
    z = T.matrix("z", dtype="float32")
    c = T.matrix("c", dtype="float32")
    outs = [sigmoid(z[:, :100]) * T.tanh(c) + T.exp(-z[:, 100:] ** 2), T.tanh(z[:, 100:] * c)]
    f = graphc.function([z, c], outs)
    ref = graphc.function([z, c], outs, mode=PY)
    rng = np.random.default_rng(4)
    for _ in range(40):
        zv = _f32(rng.standard_normal((96, 200)))
        cv = _f32(rng.standard_normal((96, 100)))
        for got, want in zip(f(zv, cv), ref(zv, cv)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if num_threads() < 2 or not usable(4):
        return
    fused = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Fused)]
    plans = [p for n in fused for p in compile_kernel(n.op.to_kernel_spec())._plans.values()]
    splits = [p.split for p in plans if p.split is not None]
    assert splits and all(s.ways.cost[0] > 0 and s.ways.cost[1] > 0 for s in splits)


def test_spin_pool_concurrent_callers():
    """Two Python threads splitting products at once: one runs on the pool, the other on its
    own thread (the pool takes one caller at a time); every result is right."""
    import threading
    from graphc.backend.llvm.packgemm import PackedProduct, _load
    _load(True)
    rng = np.random.default_rng(5)
    a = _f32(rng.standard_normal((32, 128)))
    w = _f32(rng.standard_normal((128, 256)))
    bp, ref = pack_weights(w, False), a @ w
    errors = []

    def work():
        pp = PackedProduct()
        pp.ways.force(True)                 # always try the split
        out = np.empty((32, 256), np.float32)
        for _ in range(300):
            out[...] = np.nan
            pp(a, bp, 256, out, 2)
            if not np.allclose(out, ref, rtol=1e-4, atol=1e-4):
                errors.append(float(np.nanmax(np.abs(out - ref))))
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ------------------------------------------------------------------ products split by columns
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_split_gemm_matches_numpy(dtype, ta, tb):
    """blas_split runs a large product as column slices of numpy's CBLAS gemm on the spin
    pool (or as one call, whichever has been faster): both ways, every transpose, with and
    without beta, an N that is not a multiple of the slice unit."""
    from graphc.backend.llvm import blas, blas_split
    if blas.numpy_cblas_gemm(np.dtype(dtype)) is None:
        pytest.skip("numpy's CBLAS not found")
    rng = np.random.default_rng(6)
    m, k, n = 96, 160, 300                     # m*n*k above blas_split.MIN_WORK
    assert m * n * k >= blas_split.MIN_WORK
    A = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    B = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (A.T if ta else A), (B.T if tb else B)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    ref = 0.5 * a.astype(np.float64) @ b.astype(np.float64) + 0.25 * c0
    tol = 1e-4 if dtype == "float32" else 1e-10
    blas_split._ways.clear()
    blas_split._slice_fn("float" if dtype == "float32" else "double",
                         64 if blas.numpy_cblas_gemm(np.dtype(dtype)).argtypes[3] is
                         __import__("ctypes").c_int64 else 32)
    for _ in range(6):                         # the first calls try both ways
        c = c0.copy()
        assert blas.gemm_into(a, b, 0.5, 0.25, c)
        np.testing.assert_allclose(c, ref, rtol=tol, atol=tol * 10)
        c = np.full((m, n), np.nan, dtype)
        assert blas.gemm_into(a, b, 1.0, 0.0, c)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=tol, atol=tol * 10)
    from graphc.backend.llvm.kernel import num_threads
    from graphc.backend.llvm.spinpool import usable
    if num_threads() > 1 and usable(1) and blas._numpy_blas_threads() is not None:
        assert all(w.cost[0] > 0 and w.cost[1] > 0 for w in blas_split._ways.values())


def test_two_ways_warm_up_then_faster_way():
    """Each way is sampled WARM times, alternating, the split first; a slow first sample
    (cold caches) does not decide, and later the faster way runs except for explorations."""
    from graphc.backend.llvm.spinpool import TwoWays
    w = TwoWays()
    times = {True: [9.0, 1.0], False: [2.0, 2.0]}     # the split's first call is slow
    order = []
    for _ in range(2 * TwoWays.WARM):
        way = w.split()
        order.append(way)
        w.record(way, times[way].pop(0))
    assert order == [True, False, True, False]
    assert w.cost == [2.0, 1.0]
    runs = [w.split() for _ in range(TwoWays.EXPLORE * 2 - 1)]
    assert runs.count(True) >= len(runs) - 1 and runs.count(False) <= 1
    # a way that becomes slower is left after its average passes the other's (and tried
    # again 2, 4, 8 and 16 calls later, in case the change was noise)
    for _ in range(20):
        w.record(True, 5.0)
    runs = [w.split() for _ in range(20)]
    tried = [i + 1 for i, way in enumerate(runs) if way]
    assert set(TwoWays.RECHECK) <= set(tried) and len(tried) <= len(TwoWays.RECHECK) + 1


def test_two_ways_outlier_does_not_flip():
    """One very slow sample of the faster way (a descheduled worker) does not make the
    slower way run; a lasting slowdown does, within a few samples."""
    from graphc.backend.llvm.spinpool import TwoWays
    w = TwoWays()
    w.force(True)
    w.cost = [2.0, 1.0]
    w.record(True, 1000.0)
    assert w.cost[1] < w.cost[0] and w.split() is True
    for _ in range(6):
        w.record(True, 5.0)
    assert w.cost[1] > w.cost[0]


def test_two_ways_one_exploration_undoes_a_flip_caused_by_noise():
    """A stretch of slow samples tips the faster way's average over the other's; once the
    noise is gone, the first exploration of that way brings it back."""
    from graphc.backend.llvm.spinpool import TwoWays
    w = TwoWays()
    w.force(True)
    w.cost = [2.0, 1.0]                     # split: 1, one thread: 2
    for _ in range(4):
        w.record(True, 2.0 * w.cost[1])     # noise: each sample twice the average
    assert w.cost[1] > w.cost[0]            # the one-thread way runs now
    for _ in range(3):
        w.record(False, 2.0)
    w.record(True, 1.0)                     # an exploration, noise over
    assert w.cost[1] < w.cost[0]


def test_two_ways_rechecks_soon_after_a_change():
    """After noise made the slower way run, the faster one is tried again within two calls
    (not after the usual EXPLORE * ratio calls) and, the noise over, runs again."""
    from graphc.backend.llvm.spinpool import TwoWays
    w = TwoWays()
    w.force(True)
    w.cost = [2.0, 1.0]
    assert w.split() is True
    for _ in range(4):
        w.record(True, 2.0 * w.cost[1])     # noise tips the split's average over
    ways = []
    for _ in range(3):
        way = w.split()
        ways.append(way)
        w.record(way, 2.0 if not way else 1.0)
    assert ways == [False, True, True]      # the split is tried on the second call, and stays
    assert w.cost[1] < w.cost[0]
