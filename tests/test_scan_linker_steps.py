"""Steps of the LLVM linker that an LSTM's scan step relies on (graphc/link/llvm.py): a Join
of one fused kernel's outputs written by the kernel into the join's output, and constant
Subtensor views."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.link import llvm as L
from graphc.tensor.basic import Join
from graphc.tensor.fused import Fused
from graphc.tensor.nnet import sigmoid

FAST = graphc.Mode(optimizer="fast_run")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def joined(x, y):
    t = T.tanh(x) * y                      # shared: one kernel computes all three blocks
    return T.concatenate([t * x, sigmoid(t), t + 1.0], axis=1)


def reference(xv, yv):
    t = np.tanh(xv) * yv
    return np.concatenate([t * xv, 1 / (1 + np.exp(-t)), t + 1.0], axis=1)


def join_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Join)]


def test_join_of_one_kernels_outputs_is_recognized():
    x, y = T.matrix("x"), T.matrix("y")
    f = graphc.function([x, y], joined(x, y).sum(), mode=FAST)
    (j,) = join_nodes(f)
    assert isinstance(j.inputs[0].owner.op, Fused)
    assert L._joins_of_fused(f.maker.fgraph, f.maker.fgraph.toposort()) == {
        j: j.inputs[0].owner}


def test_join_written_by_the_kernel(rng):
    x, y = T.matrix("x"), T.matrix("y")
    f = graphc.function([x, y], [joined(x, y).sum(), joined(x, y) * 2.0], mode=FAST)
    for shape in [(4, 3), (4, 3), (4, 3), (5, 2), (5, 2)]:       # changed shape: concatenate
        xv, yv = rng.standard_normal(shape), rng.standard_normal(shape)
        s, d = f(xv, yv)
        ref = reference(xv, yv)
        np.testing.assert_allclose(s, ref.sum(), rtol=1e-6)
        np.testing.assert_allclose(d, 2 * ref, rtol=1e-6)


def test_join_as_output_gives_fresh_arrays(rng):
    x, y = T.matrix("x"), T.matrix("y")
    f = graphc.function([x, y], joined(x, y), mode=FAST)
    outs = []
    for _ in range(3):
        xv, yv = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
        outs.append((f(xv, yv), reference(xv, yv)))
    for got, ref in outs:                  # a later call wrote into none of them
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert not np.shares_memory(outs[0][0], outs[1][0])


def test_join_along_the_first_axis(rng):
    x, y = T.matrix("x"), T.matrix("y")
    t = T.tanh(x) * y
    f = graphc.function([x, y], T.concatenate([t * x, t - y], axis=0) + 0.0, mode=FAST)
    for _ in range(2):
        xv, yv = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
        t = np.tanh(xv) * yv
        np.testing.assert_allclose(f(xv, yv), np.concatenate([t * xv, t - yv]), rtol=1e-6)


def test_join_as_a_scan_per_step_output(rng):
    """The backward step of an LSTM: the gate gradients' join is a per-step output whose
    buffer row the loop lends; the kernel writes into the row's column blocks."""
    xs, h0 = T.tensor3("xs"), T.matrix("h0")

    def step(x_t, h):
        t = T.tanh(x_t) * h
        z = T.concatenate([t * x_t, sigmoid(t) + h], axis=1)
        return [z, T.tanh(x_t + h)]

    (zs, hs), _ = graphc.scan(step, sequences=xs, outputs_info=[None, h0])
    f = graphc.function([xs, h0], [zs, hs], mode=FAST)
    xv, hv = rng.standard_normal((6, 3, 4)), rng.standard_normal((3, 4))
    for _ in range(2):
        zv, hsv = f(xv, hv)
        h = hv
        for t in range(6):
            u = np.tanh(xv[t]) * h
            ref = np.concatenate([u * xv[t], 1 / (1 + np.exp(-u)) + h], axis=1)
            np.testing.assert_allclose(zv[t], ref, rtol=1e-6, atol=1e-12)
            h = np.tanh(xv[t] + h)
            np.testing.assert_allclose(hsv[t], h, rtol=1e-6)


@pytest.mark.parametrize("index", [(slice(1, None), slice(None, None, 2)), (0,), (1, 2),
                                   (slice(None), slice(2, 4))])
def test_constant_subtensor_steps(index, rng):
    x = T.matrix("x")
    f = graphc.function([x], x[index] * 1.5, mode=FAST)
    xv = rng.standard_normal((3, 5))
    for _ in range(2):
        got = f(xv)
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, xv[index] * 1.5)


def test_constant_subtensor_bad_index_names_the_op(rng):
    x = T.matrix("x")
    f = graphc.function([x], x[4] + 1.0, mode=FAST)
    f(rng.standard_normal((5, 2)))
    with pytest.raises(Exception, match="Subtensor"):
        f(rng.standard_normal((3, 2)))


def test_step_loop_products_run_on_one_blas_thread(rng, monkeypatch):
    """Products (in a scan and outside) run on one OpenBLAS thread (graphc/backend/llvm/blas.py);
    the process-wide count is restored after each product, also when a step fails."""
    from graphc.backend.llvm import blas
    threads = blas._numpy_blas_threads()
    if threads is None:
        pytest.skip("numpy's OpenBLAS thread control not found")
    get, put = threads
    before = get()
    put(2)
    try:
        real = blas.numpy_cblas_gemm("float64")
        if real is None:
            pytest.skip("numpy's CBLAS not found")
        seen = []

        def spy(*args):                     # the thread count each product ran with
            seen.append(get())
            real(*args)
        monkeypatch.setitem(blas._numpy_cblas, "float64", spy)
        x, h0, W = T.tensor3("x"), T.matrix("h0"), T.matrix("W")
        # tanh(x_t + h @ W) is a Gemm with z; h @ W alone one with alpha 1, beta 0
        hs, _ = graphc.scan(lambda x_t, h, W: [T.tanh(x_t + T.dot(h, W)), T.dot(h, W)],
                            sequences=x, outputs_info=[h0, None], non_sequences=W)
        f = graphc.function([x, h0, W], hs, mode=FAST)
        xv, hv, Wv = (rng.standard_normal(s) for s in [(5, 4, 8), (4, 8), (8, 8)])
        got, prods = f(xv, hv, Wv)
        h = hv
        for t in range(5):
            np.testing.assert_allclose(prods[t], h @ Wv, rtol=1e-6)
            h = np.tanh(xv[t] + h @ Wv)
            np.testing.assert_allclose(got[t], h, rtol=1e-6)
        assert len(seen) >= 5 and set(seen) == {1}
        assert get() == 2 and blas.step_loops[0] == 0
        big = np.ones((300, 300))       # outside loops too: graphc makes the parallelism
        graphc.function([W], T.dot(W, W) * 2.0, mode=FAST)(big)
        assert seen[-1] == 1 and get() == 2
        with pytest.raises(Exception):
            f(xv, hv, Wv[:5])
        assert get() == 2 and blas.step_loops[0] == 0
    finally:
        put(before)
