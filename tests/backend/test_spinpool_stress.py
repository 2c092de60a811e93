"""Stress and fault-injection tests of the native spin pool (graphc/backend/llvm/spinpool.py)
and what runs on it: the claim protocol with a delay injected into the caller, several Python
threads sharing compiled functions, reductions in more slices than threads, odd shapes and
strides of split products, a forked child, $GRAPHC_SPIN_POOL=0. No timing assertions."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import graphc
import graphc.tensor as T

from test_spinpool import _counter_region

PY = graphc.Mode(linker="py", optimizer="fast_run")


def _f32(a):
    return np.asarray(a, dtype=np.float32)


def _spin_pool_or_skip():
    from graphc.backend.llvm import spinpool
    if not spinpool.usable(1):
        pytest.skip("no spin pool on this platform")
    spinpool._functions()
    spinpool.kernel_slice()
    return spinpool


# ------------------------------------------------------------------ the claim protocol
_ANCHOR = "  store atomic i64 0, ptr %donep monotonic, align 8\n"
_DELAY = _ANCHOR + """  br label %dl
dl:
  %di = phi i64 [ 0, %entry ], [ %di1, %dl ]
  call void @llvm.x86.sse2.pause()
  %di1 = add i64 %di, 1
  %dmore = icmp slt i64 %di1, 3000
  br i1 %dmore, label %dl, label %dl_out
dl_out:
"""


def _delayed_pool(spinpool, workers):
    """A pool whose caller pauses between writing a region's slice count and publishing its
    ticket (the pool's own IR plus a delay), so late workers of the previous region run into
    that window often."""
    from graphc.backend.llvm import jit
    assert spinpool._IR.count(_ANCHOR) == 1
    ir = spinpool._IR.replace(_ANCHOR, _DELAY)
    entry = spinpool._ENTRY(jit.load_function(
        jit.cache_key("test-spinpool-delayed", ir),
        lambda: ir.replace("ENTRY_NAME", jit.PLACEHOLDER), title="delayed spin pool"))
    fns = (spinpool._WORKER(entry(0)), spinpool._RUN(entry(1)), spinpool._STOP(entry(2)))
    orig = spinpool._functions
    spinpool._functions = lambda: fns
    try:
        return spinpool.SpinPool(workers, spin=200)
    finally:
        spinpool._functions = orig


def test_late_worker_cannot_claim_with_the_old_ticket():
    """A worker that read the finished region's ticket (g, n) and then the next region's
    larger slice count must not win its compare-and-swap: it ran slices twice and counted
    them in the next region's ``done`` (before the fix: thousands of extra runs here)."""
    spinpool = _spin_pool_or_skip()
    pool = _delayed_pool(spinpool, 4)
    try:
        fn = _counter_region()
        d = np.zeros(64, np.int64)
        expect = np.zeros(64, np.int64)
        for i in range(1500):
            n = 1 if i % 2 == 0 else 40
            pool.run(fn, d.ctypes.data, n)
            expect[:n] += np.arange(1, n + 1)
        np.testing.assert_array_equal(d, expect)
    finally:
        pool.close()


# ------------------------------------------------------------------ packed products
def _layouts(rng, m, k):
    row = _f32(rng.standard_normal(k))
    yield np.broadcast_to(row, (m, k))                          # row stride 0
    yield _f32(rng.standard_normal((m, k)))[::-1]               # negative row stride
    yield _f32(rng.standard_normal((k, m))).T                   # column-major
    yield _f32(rng.standard_normal((m, 2 * k)))[:, ::2]         # strided columns
    yield _f32(rng.standard_normal((m, k + 3)))[:, 1:-2]        # lda > k, unaligned start


@pytest.mark.parametrize("split", [False, True])
def test_packed_product_operand_layouts(split):
    """Every layout of ``a`` gives numpy's product, on one thread and split (a broadcast row,
    row stride 0, was read as if rows were 4 bytes apart)."""
    from graphc.backend.llvm.packgemm import PackedProduct, _load
    from graphc.tensor.packed import pack_weights
    _spin_pool_or_skip()
    _load(True)
    rng = np.random.default_rng(11)
    for m, k, n in [(6, 64, 80), (33, 20, 130), (1, 7, 200)]:
        w = _f32(rng.standard_normal((k, n)))
        bp = pack_weights(w, False)
        for a in _layouts(rng, m, k):
            pp = PackedProduct()
            if split:
                pp.ways.force(True)
            out = np.full((m, n), np.nan, np.float32)
            pp(a, bp, n, out, 2)
            np.testing.assert_allclose(out, a @ w, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_inside_get_pool_gets_a_pool():
    """A fork while another thread is inside get_pool (holding its lock): the child must not
    wait on the lock forever (it exits 2 when an alarm fires first)."""
    import signal
    spinpool = _spin_pool_or_skip()
    fn = _counter_region()
    with spinpool._pool_lock:
        pid = os.fork()
        if pid == 0:                                # pragma: no cover - the child
            code = 1
            try:
                signal.signal(signal.SIGALRM, lambda *_: os._exit(2))
                signal.alarm(10)
                c = np.zeros(4, np.int64)
                spinpool.get_pool(2).run(fn, c.ctypes.data, 4)
                code = 0 if (c == [1, 2, 3, 4]).all() else 1
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


# ------------------------------------------------------------------ kernels and reductions
@pytest.fixture
def three_threads():
    """Three kernel threads on this machine whatever its cores: pools of 2 workers, more
    slices than cores."""
    from graphc.backend.llvm import kernel
    old = kernel._num_threads
    kernel.set_num_threads(3)
    yield
    kernel._num_threads = old


def _spy_runs(monkeypatch, spinpool):
    ran = []
    real = spinpool.SpinPool.run

    def run(self, fn, data, slices):
        ok = real(self, fn, data, slices)
        ran.append(ok)
        return ok
    monkeypatch.setattr(spinpool.SpinPool, "run", run)
    return ran


def test_full_reductions_in_more_slices_than_threads(three_threads, monkeypatch):
    """Full reductions split into 4 slices per thread: one partial result per slice, all
    combined; sums, products, max and min against numpy, float32 and float64."""
    spinpool = _spin_pool_or_skip()
    ran = _spy_runs(monkeypatch, spinpool)
    rng = np.random.default_rng(12)
    for dtype in ("float32", "float64"):
        x = T.vector("x", dtype=dtype)
        outs = [T.sum(T.exp(x)), T.max(T.tanh(x) * T.exp(x)), T.min(T.exp(-x) + T.log1p(x * x)),
                T.prod(T.exp(x * 1e-5))]
        f = graphc.function([x], outs)
        for n in (70001, 1 << 17, 200003):
            xv = rng.standard_normal(n).astype(dtype)
            x64 = xv.astype(np.float64)
            want = [np.exp(x64).sum(), (np.tanh(x64) * np.exp(x64)).max(),
                    (np.exp(-x64) + np.log1p(x64 * x64)).min(), np.prod(np.exp(x64 * 1e-5))]
            # a float32 product of 1e5 factors near 1 is only good to ~1e-3 (rounding of
            # the factors themselves), whichever way it is split
            tols = [2e-4, 2e-4, 2e-4, 3e-3] if dtype == "float32" else [1e-9] * 3 + [1e-7]
            for got, w, tol in zip(f(xv), want, tols):
                np.testing.assert_allclose(got, w, rtol=tol)
    assert any(ran)


def test_axis_reductions_and_maps_split(three_threads):
    """Reductions over one axis (kept loops split) and heavy maps on odd, strided,
    transposed and broadcast operands, against numpy."""
    _spin_pool_or_skip()
    rng = np.random.default_rng(13)
    x = T.matrix("x", dtype="float32")
    y = T.matrix("y", dtype="float32")
    z = T.exp(x) * T.tanh(y) + T.sqrt(T.abs(x))
    f = graphc.function([x, y], [T.sum(z, axis=0), T.max(z, axis=1), z])

    def ref(xv, yv):
        r = np.exp(xv) * np.tanh(yv) + np.sqrt(np.abs(xv))
        return [r.sum(0), r.max(1), r]
    for shape in [(257, 301), (1, 70000), (70000, 1), (513, 129), (0, 5)]:
        big = _f32(rng.standard_normal((shape[0] * 2 + 1, shape[1] * 2 + 1)))
        cases = [(_f32(rng.standard_normal(shape)), _f32(rng.standard_normal(shape))),
                 (big[:shape[0] * 2:2, ::-2][:, :shape[1]], _f32(rng.standard_normal(shape))),
                 (_f32(rng.standard_normal(shape[::-1])).T,
                  np.broadcast_to(_f32(rng.standard_normal(shape[1])), shape))]
        for xv, yv in cases:
            for got, want in zip(f(xv, yv), ref(xv, yv)):
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-3)


# ------------------------------------------------------------------ several Python threads
def test_threads_share_compiled_functions(three_threads):
    """Four Python threads each call their own function (a Function is not re-entrant), all
    four sharing compiled kernels and plans (a large product split by columns, a heavy map,
    full and axis reductions): every result matches numpy while the pool takes one caller at
    a time and the others run alone."""
    _spin_pool_or_skip()
    from graphc.backend.llvm import blas_split
    blas_split._ways.clear()
    a = T.matrix("a", dtype="float32")
    b = T.matrix("b", dtype="float32")
    p = T.dot(a, b)
    outs = [T.tanh(p) * T.exp(-p * p), T.sum(T.exp(a)), T.max(T.sigmoid(b) * T.exp(b), axis=0)]
    fns = [graphc.function([a, b], outs) for _ in range(4)]

    def ref(av, bv):
        p = av.astype(np.float64) @ bv
        return [np.tanh(p) * np.exp(-p * p), np.exp(av.astype(np.float64)).sum(),
                (1 / (1 + np.exp(-bv)) * np.exp(bv)).max(0)]
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in range(8):
                m = (160, 96, 257)[i % 3]
                av = _f32(rng.standard_normal((m, 272)) * 0.1)
                bv = _f32(rng.standard_normal((272, 336)))
                for got, want in zip(fns[seed](av, bv), ref(av, bv)):
                    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
        except Exception as e:                      # reported by the main thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    threads_fns = __import__("graphc.backend.llvm.blas", fromlist=["x"])._numpy_blas_threads()
    if threads_fns is not None:                     # the count every split set is restored
        assert threads_fns[0]() == _BLAS_THREADS_AT_IMPORT


def _blas_threads():
    from graphc.backend.llvm import blas
    fns = blas._numpy_blas_threads()
    return fns[0]() if fns is not None else None


_BLAS_THREADS_AT_IMPORT = _blas_threads()


# ------------------------------------------------------------------ products by columns
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_gemm_odd_layouts(dtype, monkeypatch):
    """Column-split products on operand views (ldc > n, lda > k, transposed, m == 1, n just
    above two slice units) against numpy, always split (blas_split.TwoWays forced)."""
    from graphc.backend.llvm import blas, blas_split
    spinpool = _spin_pool_or_skip()
    fn = blas.numpy_cblas_gemm(np.dtype(dtype))
    if fn is None or blas._numpy_blas_threads() is None:
        pytest.skip("numpy's CBLAS not found")
    import ctypes
    blas_split._slice_fn("float" if dtype == "float32" else "double",
                         64 if fn.argtypes[3] is ctypes.c_int64 else 32)
    ran = _spy_runs(monkeypatch, spinpool)
    monkeypatch.setattr(blas_split.TwoWays, "split", lambda self: True)
    monkeypatch.setattr(blas_split, "MIN_WORK", 1)
    monkeypatch.setattr(blas, "SPLIT_MIN", 1)
    rng = np.random.default_rng(14)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for m, k, n in [(1, 300, 1000), (37, 41, 33), (64, 1, 200), (5, 700, 47)]:
        A = rng.standard_normal((m + 3, k + 5)).astype(dtype)
        B = rng.standard_normal((k + 2, n + 7)).astype(dtype)
        for a in (A[1:m + 1, 2:k + 2], np.ascontiguousarray(A[:m, :k].T).T):
            for b in (B[:k, 3:n + 3], np.ascontiguousarray(B[:k, :n].T).T):
                C = rng.standard_normal((m + 1, n + 9)).astype(dtype)
                c = C[1:, 4:n + 4]                      # ldc > n
                want = 0.5 * (a.astype(np.float64) @ b) - 2.0 * c
                outside = C.copy()
                assert blas.gemm_into(a, b, 0.5, -2.0, c)
                np.testing.assert_allclose(c, want, rtol=tol, atol=tol * 10)
                outside[1:, 4:n + 4] = c                # nothing else written
                np.testing.assert_array_equal(C, outside)
    assert any(ran)
    assert _blas_threads() == _BLAS_THREADS_AT_IMPORT


# ------------------------------------------------------------------ switched off
def test_spin_pool_off_by_environment():
    """$GRAPHC_SPIN_POOL=0: no pool and no spinning thread; splits run on their caller and
    results are unchanged."""
    code = """
import threading, numpy as np, graphc, graphc.tensor as T
from graphc.backend.llvm import spinpool, kernel
kernel.set_num_threads(2)
assert not spinpool.usable(1) and spinpool.get_pool(2) is None
x = T.matrix('x', dtype='float32')
f = graphc.function([x], [T.sum(T.exp(x)), T.tanh(T.dot(x, x.T))])
xv = np.random.default_rng(0).standard_normal((300, 300)).astype('float32') * 0.1
s, t = f(xv)
x64 = xv.astype(np.float64)
assert np.allclose(s, np.exp(x64).sum(), rtol=1e-4)
assert np.allclose(t, np.tanh(x64 @ x64.T), rtol=1e-4, atol=1e-5)
assert not [th for th in threading.enumerate() if th.name.startswith('graphc-spin')]
print('ok')
"""
    env = dict(os.environ, GRAPHC_SPIN_POOL="0")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------ pools replaced, closed
def test_pool_replaced_while_another_thread_runs_on_it():
    """get_pool with more threads closes the pool another thread is running regions on: that
    thread's regions still run every slice once (its caller claims what the stopped workers
    leave), nothing hangs, and a closed pool keeps working on its caller alone."""
    spinpool = _spin_pool_or_skip()
    fn = _counter_region()
    old = spinpool.get_pool(2)
    d = np.zeros(40, np.int64)
    stop = threading.Event()
    count = [0]

    def runner():
        while not stop.is_set() or count[0] < 200:
            n = 1 + count[0] % 40
            assert old.run(fn, d.ctypes.data, n)
            count[0] += 1
    t = threading.Thread(target=runner)
    t.start()
    try:
        new = spinpool.get_pool(len(old.threads) + 3)       # more workers: a new pool
        assert new is not old and old.closed
        e = np.zeros(8, np.int64)
        for _ in range(50):
            new.run(fn, e.ctypes.data, 8)
        np.testing.assert_array_equal(e, 50 * np.arange(1, 9))
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    expect = np.zeros(40, np.int64)
    for i in range(count[0]):
        n = 1 + i % 40
        expect[:n] += np.arange(1, n + 1)
    np.testing.assert_array_equal(d, expect)
    with spinpool._pool_lock:                   # later tests start a pool of their size
        big, spinpool._pool["pool"] = spinpool._pool["pool"], None
    big.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_during_a_one_blas_thread_product_restores_the_count():
    """A fork while another thread runs a product with OpenBLAS's count lowered to 1 (a
    column split, a product in a step loop): the child, which has no thread to restore it,
    gets the count back (before: it kept one BLAS thread for good)."""
    from graphc.backend.llvm import blas
    fns = blas._numpy_blas_threads()
    if fns is None or fns[0]() < 2:
        pytest.skip("needs numpy's OpenBLAS with several threads")
    get, put = fns
    before = get()
    blas.lowered[0] += 1                    # what blas.one_blas_thread does around a call
    blas.lowered[1] = before
    put(1)
    try:
        pid = os.fork()
        if pid == 0:                        # pragma: no cover - the child
            os._exit(0 if get() == before else 1)
    finally:
        put(before)
        blas.lowered[0] -= 1
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("real", ["float", "double"])
def test_gemm_slice_arguments(bits, real, monkeypatch):
    """The column slices' CBLAS calls, for both integer widths and precisions (numpy here
    has one of them): a recording gemm stands in for the library. The slices cover [0, n)
    once, in multiples of 16 columns, with B and C advanced by their column steps."""
    import ctypes
    from graphc.backend.llvm import blas_split
    _spin_pool_or_skip()
    i = ctypes.c_int64 if bits == 64 else ctypes.c_int32
    r = ctypes.c_float if real == "float" else ctypes.c_double
    p = ctypes.c_void_p
    calls = []
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i, r, p, i,
                             p, i, r, p, i)

    def record(*args):
        calls.append(args)
    fn = proto(record)
    fn.argtypes = proto._argtypes_
    blas_split._slice_fn(real, bits)
    monkeypatch.setattr(blas_split.TwoWays, "split", lambda self: True)
    item = 4 if real == "float" else 8
    for tb, n in [(111, 1000), (112, 33), (111, 47)]:
        calls.clear()
        m, k, ldb, ldc = 70, 5000, 1200, 1100
        args = (101, 111, tb, m, n, k, 0.5, 4096, 5008, 1 << 20, ldb, -2.0, 1 << 30, ldc)
        assert blas_split.split_gemm(fn, args, 3)
        assert len(calls) >= 2                          # split, not the one call
        bstep = item if tb == 111 else ldb * item
        cols = []
        for c in sorted(calls, key=lambda c: c[12]):
            order, ta, tb_, m_, w, k_, al, a, lda, b, ldb_, be, cp, ldc_ = c
            n0 = (cp - (1 << 30)) // item
            assert (order, ta, tb_, m_, k_, lda, ldb_, ldc_) == (101, 111, tb, m, k, 5008, ldb,
                                                                  ldc)
            assert (al, be, a) == (0.5, -2.0, 4096) and b == (1 << 20) + n0 * bstep
            assert n0 % 16 == 0 and w > 0
            cols += range(n0, n0 + w)
        assert cols == list(range(n))
