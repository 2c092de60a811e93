"""The LLVM linker (graphc/link/llvm.py) as a user sees it: buffers kept across calls,
in-place kernels, shapes changing between calls, errors, mixed native / numpy graphs,
profiling and unusual array layouts -- each checked against the numpy reference backend.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.backend import llvm as gl
from graphc.backend.llvm import jit
from graphc.configdefaults import config
from graphc.ifelse import ifelse
from graphc.tensor.blas import Gemm
from graphc.tensor.elemwise import ShapeError
from graphc.tensor.fused import Fused
from graphc.tensor.nnet.conv import conv2d
from graphc.tensor.signal import pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_backends import NATIVE, REFERENCE, assert_same, compare  # noqa: E402


def ops_of(f):
    return [n.op for n in f.maker.fgraph.toposort()]


def line_of_next_statement():
    return sys._getframe(1).f_lineno + 1


def mlp(dtype="float64"):
    """x -> tanh(x W + b) -> softmax(h W.T): Gemm, in-place Fused, Softmax (numpy)."""
    x = T.TensorType(dtype, shape=(None, None))("x")
    W = T.TensorType(dtype, shape=(None, None))("W")
    b = T.TensorType(dtype, shape=(None,))("b")
    h = T.tanh(T.dot(x, W) + b)
    p = T.nnet.softmax(T.dot(h, W.T))
    return [x, W, b], h, p


def mlp_values(rng, n, dtype="float64"):
    return [rng.standard_normal((n, 4)).astype(dtype), rng.standard_normal((4, 4)).astype(dtype),
            rng.standard_normal(4).astype(dtype)]


# --------------------------------------------------------------------------- buffers
def test_kept_buffers_never_change_returned_outputs(rng):
    """Intermediate buffers are written again on the next call; nothing the caller holds
    (outputs, views of intermediates, in-place results) may be among them."""
    ins, h, p = mlp()
    outs = [p, h.T, h.reshape((-1,))[:3], T.sum(h * 2, axis=1), T.dot(h, h.T)]
    f = graphc.function(ins, outs, mode=NATIVE)
    ref = graphc.function(ins, outs, mode=REFERENCE)
    assert any(isinstance(op, Fused) and op.destroy for op in ops_of(f))
    first = f(*mlp_values(rng, 5))
    saved = [r.copy() for r in first]
    for n, vals in ((5, mlp_values(rng, 5)), (5, mlp_values(rng, 5)), (7, mlp_values(rng, 7))):
        got = f(*vals)
        for k, (r, s) in enumerate(zip(first, saved)):
            np.testing.assert_array_equal(r, s, err_msg=f"output {k} of call 1 changed")
        for k, (g, w) in enumerate(zip(got, ref(*vals))):
            assert_same(g, w, f"output {k}, batch {n}")


def test_buffers_are_kept_between_calls(rng):
    """A steady loop allocates nothing for intermediates: the same arrays come back (seen
    in the cells, which allow_gc=False leaves filled after a call)."""
    ins, h, p = mlp()
    with config.change_flags(allow_gc=False):
        f = graphc.function(ins, T.sum(p), mode=NATIVE)
    inner = [v for n in f.maker.fgraph.apply_nodes for v in n.outputs
             if v not in f.maker.fgraph.outputs]
    f(*mlp_values(rng, 5))
    first = {v: f.storage[v][0] for v in inner}
    f(*mlp_values(rng, 5))
    assert any(f.storage[v][0] is a for v, a in first.items() if a is not None and a.ndim)


def test_allow_gc_empties_the_cells_of_intermediates_after_their_last_use(rng):
    """With a step that allocates per call (an op run on numpy), every intermediate cell is
    empty after a call, and the results are those of allow_gc=False."""
    x = T.matrix("x")
    y = T.cumsum(T.tanh(x) * 2, axis=1)          # CumOp: no native kernel
    outs = [T.exp(y).sum(axis=1), y[:, 0]]
    f = graphc.function([x], outs, mode=NATIVE)
    with config.change_flags(allow_gc=False):
        g = graphc.function([x], outs, mode=NATIVE)
    assert any(type(n.op).__name__ == "CumOp" for n in f.maker.fgraph.apply_nodes)
    for _ in range(3):
        v = rng.standard_normal((6, 5))
        for a, b in zip(f(v), g(v)):
            np.testing.assert_array_equal(a, b)
        inner = [w for n in f.maker.fgraph.apply_nodes for w in n.outputs
                 if w not in f.maker.fgraph.outputs]
        assert inner and all(f.storage[w][0] is None for w in inner)


def test_outputs_through_unfused_second_are_not_reused(rng):
    """Elemwise identity / second return their input (a broadcast view) from numpy without
    declaring a view_map; where they stay unfused (float16 is not a native dtype) the
    producer's buffer reaches the caller and must not be reused (linker bug, fixed)."""
    x = T.TensorType("float16", shape=(None, None))("x")
    y = T.frow("y")
    f = graphc.function([x, y], T.fill(x, T.exp(y) + 1), mode=NATIVE)
    xv = np.zeros((2, 3), "float16")
    r1 = f(xv, np.zeros((1, 3), "float32"))
    s1 = r1.copy()
    f(xv, np.ones((1, 3), "float32"))
    np.testing.assert_array_equal(r1, s1)


def test_batch_size_change_compiles_nothing(rng):
    """Kernels take shapes and strides at run time: a new batch size reuses them."""
    ins, h, p = mlp("float32")
    outs = [p, T.sum(h ** 2, axis=1), T.mean(h)]
    f = graphc.function(ins, outs, mode=NATIVE)
    ref = graphc.function(ins, outs, mode=REFERENCE)
    f(*mlp_values(rng, 6, "float32"))
    before = (dict(jit.stats), len(gl._memo), sum(len(k._variants) for k in gl._memo.values()))
    for n in (9, 3, 17, 6):
        vals = mlp_values(rng, n, "float32")
        for k, (g, w) in enumerate(zip(f(*vals), ref(*vals))):
            assert_same(g, w, f"output {k}, batch {n}")
    after = (dict(jit.stats), len(gl._memo), sum(len(k._variants) for k in gl._memo.values()))
    assert after == before


# --------------------------------------------------------------------------- in place
def test_in_place_kernels_spare_inputs_and_shared_values(rng):
    w = graphc.shared(rng.standard_normal((4, 4)), name="w")
    c = graphc.shared(rng.standard_normal(4), name="c")
    x = T.dmatrix("x")
    y = T.dmatrix("y")
    h = T.tanh(T.dot(x, w) + c) * 2 + y      # in-place candidates everywhere
    out = T.dot(h, w.T) + h
    f = graphc.function([x, y], [out, T.exp(x) + y], mode=NATIVE)
    assert any(getattr(op, "destroy_map", None) for op in ops_of(f))
    xv = rng.standard_normal((3, 4))
    keep = [xv.copy(), w.get_value(), c.get_value()]
    w_buf, c_buf = w.get_value(borrow=True), c.get_value(borrow=True)
    ref = graphc.function([x, y], [out, T.exp(x) + y], mode=REFERENCE)
    for args in ((xv, xv), (xv, xv.copy()), (xv, xv[:, :])):   # same array twice, views
        got = f(*args)
        np.testing.assert_array_equal(xv, keep[0])
        np.testing.assert_array_equal(w_buf, keep[1])
        np.testing.assert_array_equal(c_buf, keep[2])
        for g, r in zip(got, ref(*args)):
            assert_same(g, r, "in-place graph")


@pytest.mark.parametrize("mode", [pytest.param(NATIVE, id="native"), pytest.param(
    graphc.Mode(linker="py", optimizer="fast_run"), id="py-fast_run")])
def test_in_place_waits_for_readers_of_views_through_second(mode, rng):
    """Elemwise{second} once returned a broadcast view of v with no view_map, so tanh(v)*2
    went in place on v before w[0] was read; its output is now a new array."""
    x = T.TensorType("float16", shape=(None, None, None))("x")   # second stays unfused
    y = T.fmatrix("y")
    v = T.dot(y, y.T)                        # fresh (Gemm)
    w = T.fill(x, v)                         # Elemwise{second}: a view of v
    out = T.dot(w[0], T.tanh(v) * 2)
    yv = rng.standard_normal((4, 4)).astype("float32")
    got = graphc.function([x, y], out, mode=mode)(np.zeros((2, 4, 4), "float16"), yv)
    want = graphc.function([x, y], out, mode=REFERENCE)(np.zeros((2, 4, 4), "float16"), yv)
    assert_same(got, want, "dot(w[0], tanh(v) * 2)")


def test_updates_are_computed_from_old_values(rng):
    a = graphc.shared(np.arange(4.0), name="a")
    b = graphc.shared(np.ones(4), name="b")
    x = T.dvector("x")
    # each update reads both old values; outputs read old values too
    f = graphc.function([x], [a * 1, b + x, T.exp(a) * b],
                        updates=[(a, T.tanh(b) * 2 + a * x), (b, a + b * 3)], mode=NATIVE)
    av, bv = np.arange(4.0), np.ones(4)
    for step in range(3):
        xv = rng.standard_normal(4)
        out_a, out_b, out_e = f(xv)
        np.testing.assert_allclose(out_a, av, rtol=1e-12)
        np.testing.assert_allclose(out_b, bv + xv, rtol=1e-12)
        np.testing.assert_allclose(out_e, np.exp(av) * bv, rtol=1e-12)
        av, bv = np.tanh(bv) * 2 + av * xv, av + bv * 3
        np.testing.assert_allclose(a.get_value(), av, rtol=1e-12)
        np.testing.assert_allclose(b.get_value(), bv, rtol=1e-12)
        assert not np.shares_memory(out_a, a.get_value(borrow=True))


def test_swap_updates_and_output_equal_to_an_update(rng):
    a = graphc.shared(np.array([1.0, 2.0]), name="a")
    b = graphc.shared(np.array([3.0, 4.0]), name="b")
    f = graphc.function([], a + 1, updates=[(a, b), (b, a)], mode=NATIVE)
    g = graphc.function([], a + 1, updates=[(a, a + 1)], mode=NATIVE)
    r = f()
    np.testing.assert_array_equal(r, [2.0, 3.0])
    np.testing.assert_array_equal(a.get_value(), [3.0, 4.0])
    np.testing.assert_array_equal(b.get_value(), [1.0, 2.0])
    r = g()                      # the output and the update are the same variable
    np.testing.assert_array_equal(r, [4.0, 5.0])
    r[:] = 0                     # the caller's array is not the shared value
    np.testing.assert_array_equal(a.get_value(), [4.0, 5.0])


def test_minibatch_training_loop_matches_reference(rng):
    """Theano's tutorial loop: givens slice minibatches out of shared data, updates train
    W and b.  In-place kernels must leave the data (views of it reach the graph) intact,
    and twelve steps on the native backend track the reference."""
    X, Y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    runs = []
    for mode in (NATIVE, REFERENCE):
        data, labels = graphc.shared(X.copy()), graphc.shared(Y.copy())
        W, b = graphc.shared(np.zeros((5, 3))), graphc.shared(np.zeros(3))
        x, y, i = T.dmatrix("x"), T.lvector("y"), T.lscalar("i")
        p = T.nnet.softmax(T.dot(x, W) + b)
        cost = -T.mean(T.log(p)[T.arange(y.shape[0]), y]) + 0.01 * (W ** 2).sum()
        gW, gb = graphc.grad(cost, [W, b])
        f = graphc.function([i], [cost, p], updates=[(W, W - 0.5 * gW), (b, b - 0.5 * gb)],
                            givens={x: data[i * 5:(i + 1) * 5], y: labels[i * 5:(i + 1) * 5]},
                            mode=mode)
        runs.append([f(k % 4) for k in range(12)] + [[W.get_value(), b.get_value()]])
        np.testing.assert_array_equal(data.get_value(borrow=True), X)
        np.testing.assert_array_equal(labels.get_value(borrow=True), Y)
    for step, (got, want) in enumerate(zip(*runs)):
        for g, w in zip(got, want):
            assert_same(g, w, f"step {step}", rtol=1e-10)


# --------------------------------------------------------------------------- errors
def test_fused_shape_mismatch_names_the_op_and_the_line():
    x, y = T.fmatrices("x", "y")
    line = line_of_next_statement()
    out = T.exp(x) * 2 + y
    f = graphc.function([x, y], [out, T.sum(x * y, axis=0)], mode=NATIVE)
    assert any(isinstance(op, Fused) for op in ops_of(f))
    with pytest.raises(ShapeError) as err:
        f(np.ones((3, 4), "float32"), np.ones((3, 5), "float32"))
    msg = str(err.value)
    assert "Fused" in msg and "(3, 4) float32, (3, 5) float32" in msg
    assert f"{__file__}\", line {line}" in msg, msg


def test_reduce_shape_mismatch_is_a_shape_error():
    x, y = T.dmatrices("x", "y")
    f = graphc.function([x, y], T.sum(x * y, axis=1), mode=NATIVE)
    with pytest.raises(ShapeError, match="Fused.*dimension 0"):
        f(np.ones((2, 4)), np.ones((3, 4)))


def test_gemm_shape_errors_follow_the_reference():
    """A matrix z of the wrong size, or of size 1 in a dimension its type does not declare
    broadcastable, is a ShapeError naming Gemm -- as Gemm.perform says (the native step
    used to let ``c[...] = z`` broadcast it silently; fixed)."""
    x, y, z = T.dmatrices("x", "y", "z")
    line = line_of_next_statement()
    out = T.dot(x, y) * 2 + z
    f = graphc.function([x, y, z], out, mode=NATIVE)
    assert any(isinstance(op, Gemm) for op in ops_of(f))
    for zs in ((1, 5), (3, 1), (2, 5)):
        with pytest.raises(ShapeError, match=r"Gemm.*z has size") as err:
            f(np.ones((3, 4)), np.ones((4, 5)), np.ones(zs))
        assert f"line {line}" in str(err.value)
    with pytest.raises(ShapeError, match=r"Gemm.*inner dimensions differ \(4 vs 3\)"):
        f(np.ones((3, 4)), np.ones((3, 5)), np.ones((3, 5)))
    r = T.drow("r")     # a declared-broadcastable z still broadcasts
    g = graphc.function([x, y, r], T.dot(x, y) + r, mode=NATIVE)
    np.testing.assert_allclose(g(np.ones((3, 4)), np.ones((4, 5)), np.ones((1, 5))), 5.0)


# --------------------------------------------------------------------------- mixed graphs
def mixed_graph():
    x = T.dtensor4("x")
    w = T.dtensor4("w")
    idx = T.lvector("idx")
    h = T.nnet.relu(conv2d(x, w, border_mode="half"))
    h = pool.pool_2d(h, (2, 2), ignore_border=True)
    flat = T.concatenate([h.flatten(2), T.exp(h[:, 0].flatten(2))], axis=1)
    p = T.nnet.softmax(flat[idx] * 2)
    p = T.inc_subtensor(p[:, 1:3], 1.0)
    s, _ = graphc.scan(lambda r, acc: acc + T.tanh(r), sequences=p,
                       outputs_info=T.zeros_like(p[0]))
    c = ifelse(T.gt(p.sum(), 0), s[-1].sum(), p.max())
    return [x, w, idx], [p, s, c] + graphc.grad(c + (p ** 2).sum(), [x, w])


def inner_linkers(f):
    return {fn.fn.maker.linker for n in f.maker.fgraph.apply_nodes
            for fn in getattr(n.op, "_compiled", {}).values()}


def test_ops_without_native_kernels_run(rng):
    """Softmax, indexing, conv, pool, join, ifelse and scan run their numpy perform between
    native kernels; the whole function agrees with the reference, gradients included.

    Scan and IfElse compile their inner graphs with the *configured* mode, not the mode
    given to graphc.function (and cache them on the op, which clones of the graph share),
    so the reference graph is built separately and run with mode=FAST_COMPILE configured.
    """
    values = [rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3)),
              np.array([1, 0, 1])]
    ins, outs = mixed_graph()
    with graphc.config.change_flags(mode="FAST_COMPILE"):
        ref = graphc.function(*mixed_graph(), mode=REFERENCE)
        want = ref(*values)
    f = graphc.function(ins, outs, mode=NATIVE)
    got = f(*values)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, f"mixed graph output {k}")
    names = {type(op).__name__ for op in ops_of(f)}
    assert {"Fused", "Softmax", "Pool", "Scan", "IfElse"} <= names, names
    assert inner_linkers(ref) == {"py"} and inner_linkers(f) == {"llvm"}


def test_profile_with_the_native_linker(rng):
    ins, h, p = mlp()
    f = graphc.function(ins, [p, T.sum(h)], mode=NATIVE, profile=True)
    for _ in range(3):
        f(*mlp_values(rng, 5))
    assert f.profile.calls == 3
    nodes = f.maker.fgraph.toposort()
    assert set(f.profile.by_node) == set(nodes)
    assert all(n == 3 and t >= 0 for t, n in f.profile.by_node.values())
    report = f.profile.report()
    assert "Fused" in report and "Gemm" in report and "Softmax" in report


# --------------------------------------------------------------------------- layouts
LAYOUTS = ("contiguous", "transposed", "sliced_steps", "negative_strides", "fortran",
           "zero_strides", "empty_batch", "large_threads")


def layout_values(layout, rng, dtype):
    """Two operands (6 x 4 and 4 x 6 unless said otherwise), views of larger arrays."""
    a = rng.standard_normal((9, 8)).astype(dtype)
    b = rng.standard_normal((8, 9)).astype(dtype)
    return {
        "contiguous": lambda: (a[:6, :4].copy(), b[:4, :6].copy()),
        "transposed": lambda: (b.T[:6, :4], a.T[:4, :6]),
        "sliced_steps": lambda: (a[::2, 1::2][:4], b[1:5, ::-1][:, :6]),
        "negative_strides": lambda: (a[::-1, ::-1][:6, :4], b[::-2, ::-1][:4, :6]),
        "fortran": lambda: (np.asfortranarray(a[:6, :4]), np.asfortranarray(b[:4, :6])),
        "zero_strides": lambda: (np.broadcast_to(a[0, :4], (6, 4)),
                                 np.broadcast_to(b[:4, :1], (4, 6))),
        "empty_batch": lambda: (a[:0, :4], b[:4, :6]),
        "large_threads": lambda: (rng.standard_normal((300, 260)).astype(dtype),
                                  rng.standard_normal((260, 300)).astype(dtype)),
    }[layout]()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_array_layouts(layout, dtype, rng):
    """Kernels and BLAS take any strides: transposed, stepped, reversed, Fortran-ordered and
    broadcast (zero-stride) arrays, empty batches and arrays large enough for threads."""
    xv, yv = layout_values(layout, rng, dtype)
    x = T.TensorType(dtype, shape=(None, None))("x")
    y = T.TensorType(dtype, shape=(None, None))("y")
    e = T.tanh(x) * T.exp(-abs(x)) + x
    outs = [e, T.sum(e, axis=0), T.max(x, axis=1) if layout != "empty_batch" else T.sum(x),
            T.dot(e, y) + 1, T.sum(T.sigmoid(x) * x), x.T * 2, (y[:, ::-1] + 1)[::2]]
    compare([x, y], outs, [xv, yv], f"{layout} {dtype}")


def test_scalars_and_0d_arrays(rng):
    s = T.dscalar("s")
    i = T.lscalar("i")
    x = T.dvector("x")
    outs = [s * 2 + 1, T.exp(s) * x, T.sum(x * s), s * i + x[i], T.cast(i, "float32") / 3,
            T.switch(s > 0, x, -x)]
    xv = rng.standard_normal(5)
    for sv, iv in ((np.float64(1.5), 2), (-0.25, np.int64(0)), (np.array(3.0), np.array(4))):
        compare([s, i, x], outs, [sv, iv, xv], f"scalars {sv!r}, {iv!r}")


def test_outputs_alias_no_input_and_no_other_output(rng):
    """Returned arrays own their memory: identical outputs, inputs returned as they are and
    views of inputs are copied, on the native backend as on the reference."""
    x = T.dmatrix("x")
    y = T.exp(x)
    f = graphc.function([x], [x, x.T, y, y, y.T, x[1:], (y + 1).reshape((-1,))], mode=NATIVE)
    xv = rng.standard_normal((3, 4))
    got = f(xv)
    for k, r in enumerate(got):
        assert not np.shares_memory(r, xv), k
        for j in range(k):
            assert not np.shares_memory(r, got[j]), (j, k)


@pytest.mark.parametrize("mode", [
    pytest.param(NATIVE, id="native"), pytest.param(REFERENCE, id="reference")])
def test_tensor_copy_and_fill_return_fresh_arrays(mode):
    x = T.dmatrix("x")
    r = T.drow("r")
    f = graphc.function([x, r], [T.tensor_copy(x), T.fill(x, r)], mode=mode)
    xv, rv = np.zeros((2, 3)), np.ones((1, 3))
    copy, filled = f(xv, rv)
    assert not np.shares_memory(copy, xv) and not np.shares_memory(filled, rv)
    assert copy.flags.writeable and filled.flags.writeable


@pytest.mark.parametrize("mode", [
    pytest.param(NATIVE, id="native"), pytest.param(REFERENCE, id="reference")])
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ndarray_subclass_inputs_are_plain_arrays_inside(mode):
    x = T.dmatrix("x")
    f = graphc.function([x], [T.sum(x, axis=0), x * x], mode=mode)
    s, sq = f(np.matrix([[1.0, 2.0], [3.0, 4.0]]))
    assert s.shape == (2,) and type(sq) is np.ndarray
    np.testing.assert_array_equal(sq, [[1.0, 4.0], [9.0, 16.0]])


# --------------------------------------------------------------------------- per-call path
def test_repeated_calls_return_fresh_outputs_across_layout_changes(rng):
    """The per-call fast path (the previous call's plan, tried first) meets every change an
    input can make between calls: shape, strides, dtype, ndarray or scalar; results match
    the reference and returned arrays are never written again."""
    x = T.fvector("x")
    s = T.fscalar("s")
    f = graphc.function([x, s], T.tanh(x) * s + 1, mode=NATIVE)
    ref = graphc.function([x, s], T.tanh(x) * s + 1, mode=REFERENCE)
    big = rng.standard_normal(40).astype("float32")
    values = [(big[:10], 2.0), (big[:10], np.float32(3.0)), (big[:20:2], 2.0), (big[:7], 2.0),
              (big[::-4], np.array(1.5, "float32")), (big[:10], 2.0), (big[:10].copy(), 0.5)]
    held = []
    for xv, sv in values:
        got = f(xv, sv)
        assert_same(got, ref(xv, sv), f"{xv.shape} {xv.strides} {sv!r}")
        held.append((got, got.copy()))
    for k, (got, snapshot) in enumerate(held):
        np.testing.assert_array_equal(got, snapshot, err_msg=f"call {k} was overwritten")
        assert not any(np.shares_memory(got, o) for o, _ in held[k + 1:])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_small_plans_run_as_builtins():
    """A small one-call plan gets a builtin that checks the whole signature natively
    (type, dtype, shape, strides; outputs writeable) and runs nothing on a mismatch."""
    from graphc.backend.llvm import pycall
    from graphc.backend.kernel_spec import KernelSpec
    if not pycall.AVAILABLE:
        pytest.skip("no native call on this interpreter")
    spec = KernelSpec(("float32", "float32"), (("mul", (("in", 0), ("in", 1)), "float32"),),
                      (("eq", 0),))
    kernel = gl.compile_kernel(spec)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.full(4, 2.0, np.float32)
    out = np.zeros((3, 4), np.float32)
    kernel([x, y], [out])
    (plan,) = [p for key, p in kernel._plans.items() if key[0][2] == (3, 4) and key[1][2] == (4,)
               and key[2][3] == out.strides]
    call = plan.native
    assert call is not None
    out[...] = 0
    refs = sys.getrefcount(out)
    for _ in range(100):
        assert call(x, y, out) is out
    assert sys.getrefcount(out) == refs
    np.testing.assert_array_equal(out, x * y)
    read_only = np.zeros((3, 4), np.float32)
    read_only.flags.writeable = False
    others = [(x, y, read_only), (x, y, None), (x, y, np.zeros((3, 4))),
              (np.asfortranarray(x), y, out), (x, y[None], out), (x, 2.0, out), (x[:2], y, out),
              (x.astype("float64"), y, out), (np.matrix(x), y, out)]
    out[...] = -1
    for args in others:
        assert call(*args) is not args[-1]
    assert (out == -1).all() and not read_only.any()
    with pytest.raises(SystemError):
        call(x, y)


def test_large_plans_keep_the_ctypes_call(rng, monkeypatch):
    """Loops from parallel_min() elements on run through ctypes, which releases the GIL."""
    from graphc.backend.llvm import pycall
    if not pycall.AVAILABLE:
        pytest.skip("no native call on this interpreter")
    monkeypatch.setenv("GRAPHC_PARALLEL_MIN", "64")
    x = T.fvector("x")
    f = graphc.function([x], T.exp(x) * 2, mode=NATIVE)
    for n in (10, 100):
        xv = rng.standard_normal(n).astype("float32")
        f(xv)
        np.testing.assert_allclose(f(xv), np.exp(xv) * 2, rtol=1e-6)
    (op,) = [op for op in ops_of(f) if isinstance(op, Fused)]
    plans = gl.compile_kernel(op.to_kernel_spec())._plans
    sizes = {key[0][2][0]: plan.native is not None for key, plan in plans.items()}
    assert sizes.get(10) is True and sizes.get(100) is False


# --------------------------------------------------------------------------- shape arithmetic
def _memo_steps(f):
    from graphc.link.llvm import _ShapeMemo
    steps = [getattr(step, "step", step) for step, _, _ in f._run.steps]    # (_Freeing)
    return [step for step in steps if isinstance(step, _ShapeMemo)]


def test_shape_arithmetic_runs_as_one_step_until_the_shapes_change(rng):
    """A mean's 1 / n (Shape, Subtensor, a cast, a reciprocal): one step, which recomputes
    only when the input's shape changed; the results follow the shapes."""
    x = T.matrix("x")
    y = T.ivector("y")
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(x), y).mean()
    f = graphc.function([x, y], [loss, graphc.grad(loss, x)], mode=NATIVE)
    ref = graphc.function([x, y], [loss, graphc.grad(loss, x)], mode=REFERENCE)
    (memo,) = _memo_steps(f)
    assert len(memo.runs) >= 2
    calls = []
    for step, node, ins in memo.runs:       # count the group's runs
        memo.runs[memo.runs.index((step, node, ins))] = (
            lambda s=step: (calls.append(1), s())[1], node, ins)
    for n in (5, 5, 7, 7, 5):
        xv = rng.standard_normal((n, 4))
        yv = rng.integers(0, 4, n).astype("int32")
        for g, w in zip(f(xv, yv), ref(xv, yv)):
            assert_same(g, w, f"n={n}")
    assert len(calls) == 3 * len(memo.runs)         # shapes 5, 7, 5: three changes


def test_shape_arithmetic_that_leaves_the_function_is_not_grouped():
    x = T.matrix("x")
    f = graphc.function([x], [x.shape[0] * 2, x.sum() / x.shape[1]], mode=NATIVE)
    assert _memo_steps(f) == []
    first = f(np.ones((3, 2)))
    first[0][...] = 7                       # the caller's array: the next call's is fresh
    np.testing.assert_array_equal(f(np.ones((3, 2))), [6, 3.0])


def test_profile_times_each_shape_node(rng):
    x = T.matrix("x")
    y = T.ivector("y")
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(x), y).mean()
    f = graphc.function([x, y], loss, mode=NATIVE, profile=True)
    f(rng.standard_normal((3, 4)), np.array([0, 1, 2], "int32"))
    assert _memo_steps(f) == []
    assert set(f.profile.by_node) == set(f.maker.fgraph.toposort())
