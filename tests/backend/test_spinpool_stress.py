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
                pp.ways.cost, pp.ways.calls = [2.0, 1.0], 1
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
