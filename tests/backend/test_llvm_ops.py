"""The native steps of graphc/link/llvm_ops.py (softmax cross-entropy, max pooling) and of
graphc/link/llvm_conv.py (convolution; its blocked route in detail: test_llvm_conv.py), each
compared with the numpy reference backend: odd shapes, non-contiguous inputs, both dtypes,
ties, nan/inf, repeated calls with kept buffers, and the reference's errors.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.link.llvm import STEP_MAKERS, _PerformStep
from graphc.link.llvm_ops import _max_grad_spec, _max_spec, _xent_specs
from graphc.tensor.elemwise import ShapeError
from graphc.tensor.nnet.conv import conv2d
from graphc.tensor.nnet.xent import (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                     SoftmaxCrossentropyWithGrad)
from graphc.tensor.signal import pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_backends import NATIVE, REFERENCE, assert_same, compare  # noqa: E402

rng = np.random.default_rng(7)


def native_steps(f):
    """Op type names of the nodes of ``f`` that run a native step (not numpy perform)."""
    names = set()
    for node in f.maker.fgraph.toposort():
        maker = STEP_MAKERS.get(type(node.op))
        if maker is not None:
            step = maker(node, [[None]] * len(node.inputs), [[None]] * len(node.outputs), True)
            if step is not None and not isinstance(step, _PerformStep):
                names.add(type(node.op).__name__)
    return names


def test_specs_are_canonical():
    for dt in ("float32", "float64"):
        for bias in (False, True):
            for spec in _xent_specs(dt, bias):
                spec.check()
        for cells in (1, 4, 6):
            _max_spec(dt, cells).check()
            _max_grad_spec(dt, cells).check()


# --------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 13), (1, 1), (33, 2),
                                   (5, 70),         # float32 rows: vector loops and a tail
                                   (64, 1000)])     # long rows (threads: below)
def test_xent_loss_and_grad(dtype, shape):
    z = T.matrix("z", dtype=dtype)
    y = T.ivector("y")
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean()
    outs = [loss, graphc.grad(loss, z)]
    zv = (3 * rng.standard_normal(shape)).astype(dtype)
    yv = rng.integers(0, shape[1], shape[0]).astype(np.int32)
    compare([z, y], outs, [zv, yv], f"xent {dtype} {shape}")
    f = graphc.function([z, y], outs, mode=NATIVE)
    assert "SoftmaxCrossentropyWithGrad" in native_steps(f)    # one op: nll and dx
    compare([z, y], outs[1:], [zv, yv], f"xent grad alone {dtype} {shape}")
    assert "SoftmaxCrossentropyWithGrad" in native_steps(
        graphc.function([z, y], outs[1:], mode=NATIVE))


@pytest.mark.parametrize("bias", [False, True])
def test_xent_op_outputs_strided_and_negative_labels(bias):
    x = T.matrix("x", dtype="float32")
    b = T.vector("b", dtype="float32")
    y = T.lvector("y")
    op = SoftmaxCrossentropy(bias)
    nll, sm = op(x, b, y) if bias else op(x, y)
    dnll = T.vector("dnll", dtype="float32")
    g = SoftmaxCrossentropyGrad()(dnll, sm, y)
    ins = [x, b, y, dnll] if bias else [x, y, dnll]
    big = (2 * rng.standard_normal((9, 22))).astype(np.float32)
    xv = big[:, ::2]                                   # non-contiguous logits (9, 11)
    xv[0, :] = 80.0                                    # exp overflows without the max shift
    yv = np.array([0, -1, 10, 3, -11, 5, 5, 1, 2])     # negative labels count from the end
    vals = [xv, rng.standard_normal(11).astype(np.float32), yv] if bias else [xv, yv]
    vals.append(rng.standard_normal(9).astype(np.float32))
    compare(ins, [nll, sm, g], vals, f"xent op bias={bias}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [9, 1])
def test_xent_with_grad_op(dtype, bias, rows):
    """The paired op on strided logits, negative labels, int64/int8 labels, a per-row dnll
    and a broadcast one, against the reference's two ops."""
    x = T.matrix("x", dtype=dtype)
    b = T.vector("b", dtype=dtype)
    y = T.lvector("y")
    d1 = T.TensorType(dtype, shape=(1,))("d1")         # broadcast: one value for every row
    dn = T.vector("dn", dtype=dtype)
    head = [x, b, y] if bias else [x, y]
    nll, dx1 = SoftmaxCrossentropyWithGrad(bias)(*head, d1)
    _, dxn = SoftmaxCrossentropyWithGrad(bias)(*head, dn)
    ref_nll, sm = SoftmaxCrossentropy(bias)(*head)
    refs = [ref_nll, SoftmaxCrossentropyGrad()(d1, sm, y), SoftmaxCrossentropyGrad()(dn, sm, y)]
    xv = (3 * rng.standard_normal((rows, 70))).astype(dtype)[:, ::2]     # (rows, 35), strided
    xv[0, :] = 80.0
    yv = np.array([0, -1, 34, 3, -35, 5, 5, 1, 2])[:rows]
    vals = [xv, rng.standard_normal(35).astype(dtype), yv] if bias else [xv, yv]
    vals += [np.array([0.25], dtype), rng.standard_normal(rows).astype(dtype)]
    f = graphc.function(head + [d1, dn], [nll, dx1, dxn], mode=NATIVE)
    r = graphc.function(head + [d1, dn], refs, mode=REFERENCE)
    for got, want, what in zip(f(*vals), r(*vals), ("nll", "dx broadcast", "dx per row")):
        assert_same(got, want, f"xent with grad {dtype} bias={bias} rows={rows}: {what}")
    assert "SoftmaxCrossentropyWithGrad" in native_steps(f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xent_with_grad_non_finite_errors_and_empty(dtype):
    x = T.matrix("x", dtype=dtype)
    y = T.bvector("y")                                 # int8 labels
    d = T.vector("d", dtype=dtype)
    outs = SoftmaxCrossentropyWithGrad()(x, y, d)
    f = graphc.function([x, y, d], outs, mode=NATIVE)
    xv = (3 * rng.standard_normal((5, 45))).astype(dtype)
    xv[0, ::3] = -np.inf
    xv[1, 40] = np.nan
    xv[2, 7] = np.inf
    xv[3, 1:] = -200.0
    yv = np.array([1, 2, 3, 4, 0], np.int8)
    dv = np.arange(1, 6).astype(dtype)
    r = graphc.function([x, y, d], outs, mode=REFERENCE)
    for got, want in zip(f(xv, yv, dv), r(xv, yv, dv)):
        assert_same(got, want, f"xent with grad non-finite {dtype}")
    assert (f(xv, yv, dv)[1][0, ::3] == 0).all()
    with pytest.raises(ShapeError, match="out of range"):
        f(xv, np.array([1, 2, 3, 45, 0], np.int8), dv)
    with pytest.raises(ShapeError, match="dnll length"):
        f(xv, yv, dv[:3])
    with pytest.raises(ShapeError, match="dnll length"):
        f(xv, yv, dv[:1])                              # length 1, but not typed broadcast
    empty = f(np.zeros((0, 45), dtype), np.zeros(0, np.int8), np.zeros(0, dtype))
    assert empty[0].shape == (0,) and empty[1].shape == (0, 45)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xent_masked_and_non_finite_logits(dtype):
    """-inf logits (masked classes) give exactly 0; a nan or +inf makes its row nan."""
    x = T.matrix("x", dtype=dtype)
    y = T.ivector("y")
    nll, sm = SoftmaxCrossentropy()(x, y)
    xv = (3 * rng.standard_normal((6, 45))).astype(dtype)
    xv[0, ::3] = -np.inf
    xv[1, 40] = np.nan
    xv[2, 7] = np.inf
    xv[3, :] = -np.inf
    xv[4, 1:] = -200.0                                 # exp underflows next to the max
    yv = np.array([1, 2, 3, 4, 5, 0], np.int32)
    got = compare([x, y], [nll, sm], [xv, yv], f"xent non-finite {dtype}")
    assert (got[1][0, ::3] == 0).all()


@pytest.mark.parametrize("ldt", ["int64", "int16", "uint8", "uint64"])
def test_xent_label_dtypes_and_reversed_rows(ldt):
    x, y, d = T.fmatrix("x"), T.vector("y", dtype=ldt), T.fvector("d")
    outs = SoftmaxCrossentropyWithGrad()(x, y, d)
    f = graphc.function([x, y, d], outs, mode=NATIVE)
    r = graphc.function([x, y, d], outs, mode=REFERENCE)
    xv = rng.standard_normal((6, 9)).astype(np.float32)[::-1]     # negative row stride
    yv = np.array([0, 1, 2, 3, 8, 5], ldt)
    dv = rng.standard_normal(6).astype(np.float32)
    for got, want in zip(f(xv, yv, dv), r(xv, yv, dv)):
        assert_same(got, want, f"xent with {ldt} labels")
    yv[4] = np.iinfo(ldt).max                          # (uint64: would wrap to -1 as int64)
    with pytest.raises(ShapeError, match="out of range"):
        f(xv, yv, dv)


def test_xent_row_blocks_on_threads(monkeypatch):
    """Rows split across two threads (large matrices): values, and a bad label in the
    second block still raises."""
    from graphc.backend.llvm import kernel
    from graphc.link import llvm_ops
    monkeypatch.setattr(llvm_ops, "_SOFTMAX_PARALLEL_MIN", 1)
    kernel.set_num_threads(2)
    try:
        x, y, d = T.matrix("x", dtype="float32"), T.ivector("y"), T.vector("d", dtype="float32")
        outs = list(SoftmaxCrossentropyWithGrad()(x, y, d)) + [SoftmaxCrossentropy()(x, y)[1]]
        f = graphc.function([x, y, d], outs, mode=NATIVE)
        r = graphc.function([x, y, d], outs, mode=REFERENCE)
        vals = [(3 * rng.standard_normal((37, 50))).astype(np.float32),
                rng.integers(0, 50, 37).astype(np.int32), rng.standard_normal(37).astype(np.float32)]
        for got, want in zip(f(*vals), r(*vals)):
            assert_same(got, want, "xent on threads")
        vals[1][-1] = 50
        with pytest.raises(ShapeError, match="out of range"):
            f(*vals)
    finally:
        kernel.set_num_threads(None)


def test_xent_rows_split_on_the_spin_pool():
    """The row kernel over row slices on the spin pool (softmax.RowSplit): the one-thread
    results bit for bit, and a bad label in any slice still raises."""
    from graphc.backend.llvm import kernel, softmax, spinpool
    if not spinpool.usable(1):
        pytest.skip("no spin pool on this platform")
    spinpool._functions()
    spinpool.kernel_slice()
    softmax._rows_slice()                       # loaded now, not in the background
    kernel.set_num_threads(2)
    try:
        x, y, d = T.matrix("x", dtype="float32"), T.ivector("y"), T.vector("d", dtype="float32")
        outs = list(SoftmaxCrossentropyWithGrad()(x, y, d))
        f = graphc.function([x, y, d], outs, mode=NATIVE)
        (rows,) = [c.cell_contents for step, _, _ in f._run.steps
                   for c in (getattr(getattr(step, "step", step), "__closure__", None) or ())
                   if isinstance(c.cell_contents, softmax.RowSplit)]
        vals = [(3 * rng.standard_normal((37, 50))).astype(np.float32),
                rng.integers(0, 50, 37).astype(np.int32), rng.standard_normal(37).astype(np.float32)]
        got = {}
        for split in (False, True):
            rows.ways.force(split)
            got[split] = [np.array(o, copy=True) for o in f(*vals)]
        assert rows.ways.seen[1] >= 1               # the split way ran
        for a, b in zip(got[True], got[False]):
            np.testing.assert_array_equal(a, b)
        for bad_row in (0, 20, 36):                 # first, a middle and the last slice
            v = [a.copy() for a in vals]
            v[1][bad_row] = 50
            with pytest.raises(ShapeError, match="out of range"):
                f(*v)
    finally:
        kernel.set_num_threads(None)


def test_xent_keeps_results_across_calls_and_errors():
    z = T.matrix("z", dtype="float32")
    y = T.ivector("y")
    nll, sm = SoftmaxCrossentropy()(z, y)
    f = graphc.function([z, y], [nll, sm], mode=NATIVE)
    a = rng.standard_normal((5, 4)).astype(np.float32)
    yv = np.array([0, 1, 2, 3, 0], np.int32)
    first = [np.array(o, copy=True) for o in f(a, yv)]
    kept = f(a, yv)
    f(a + 1, yv)                                       # a second call must not overwrite
    for k, o in enumerate(first):                      # what the caller holds
        assert_same(kept[k], o, "kept output")
    assert_same(f(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))[1],
                np.zeros((0, 4), np.float32), "empty batch")
    with pytest.raises(ShapeError, match="out of range"):
        f(a, np.array([0, 1, 2, 4, 0], np.int32))
    with pytest.raises(ShapeError, match="labels for"):
        f(a, np.array([0, 1], np.int32))


# --------------------------------------------------------------------------- max pooling
POOLS = [  # (input shape, ws, ignore_border)
    ((2, 3, 8, 6), (2, 2), True),
    ((2, 3, 9, 7), (2, 2), True),          # odd sizes: the last row/col is in no window
    ((3, 4, 6, 9), (3, 3), False),         # divisible: no partial window
    ((2, 5, 7, 5), (2, 2), False),         # partial edge windows: numpy perform
    ((4, 6, 4), (1, 2), True),             # 3-d input
    ((1, 2, 6, 8, 4), (2, 4), True),       # 5-d input
    ((9, 40), (2, 2), True),               # 2-d input, 2x2: one plane
    ((4, 5, 24, 24), (2, 2), True),        # 2x2 rows long enough for the vector loop
    ((16, 33, 50, 41), (2, 2), True),      # 2x2, large: plane blocks on threads
]


@pytest.mark.parametrize("shape,ws,ignore_border", POOLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_pool_and_grad(shape, ws, ignore_border, dtype):
    x = T.TensorType(dtype, shape=(None,) * len(shape))("x")
    out = pool.pool_2d(x, ws=ws, ignore_border=ignore_border)
    w = T.TensorType(dtype, shape=(None,) * len(shape))("w")
    cost = (out * w).sum()
    xv = rng.integers(-3, 3, shape).astype(dtype)      # small ints: many tied maxima
    wv = rng.standard_normal(graphc.function([x], out.shape, mode=NATIVE)(xv)).astype(dtype)
    compare([x, w], [out, graphc.grad(cost, x)], [xv, wv], f"pool {shape} {ws}")
    f = graphc.function([x, w], [out, graphc.grad(cost, x)], mode=NATIVE)
    assert {"Pool", "MaxPoolGrad"} <= native_steps(f)


def test_max_pool_strided_input_nan_inf():
    x = T.tensor4("x", dtype="float32")
    out = pool.pool_2d(x, ws=(2, 2), ignore_border=True)
    g = graphc.grad((out * out).sum(), x)
    base = rng.standard_normal((3, 2, 10, 16)).astype(np.float32)
    xv = base[:, :, ::-1, ::2]                         # negative and non-unit strides
    xv[0, 0, 0, 0] = np.nan
    xv[1, 1, 2, 3] = np.inf
    xv[2, 0, 5, 5] = -np.inf
    compare([x], [out, g], [xv], "pool strided nan/inf")


def test_pool_other_modes_and_geometries_run_perform():
    x = T.tensor4("x")
    outs = [pool.pool_2d(x, ws=(2, 2), ignore_border=True, mode="average_inc_pad"),
            pool.pool_2d(x, ws=(3, 3), stride=(2, 2), ignore_border=True),
            pool.pool_2d(x, ws=(2, 2), pad=(1, 1), ignore_border=True)]
    grads = [graphc.grad(o.sum(), x) for o in outs]
    compare([x], outs + grads, [rng.standard_normal((2, 2, 7, 7))], "other pools")


def test_max_pool_grad_errors_like_reference():
    x = T.tensor4("x", dtype="float32")
    mx = T.tensor4("m", dtype="float32")
    gz = T.tensor4("gz", dtype="float32")
    g = pool.MaxPoolGrad((2, 2), True)(x, mx, gz)
    f = graphc.function([x, mx, gz], g, mode=NATIVE)
    xv = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ShapeError, match="output gradient"):
        f(xv, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32))


# --------------------------------------------------------------------------- convolution
CONVS = [  # (input shape, filter shape, conv2d keyword arguments)
    ((3, 2, 9, 7), (4, 2, 3, 2), {}),                                    # ow < 16: batch-last
    ((2, 1, 7, 20), (3, 1, 3, 3), {}),                                   # ow >= 16
    ((2, 2, 8, 8), (3, 2, 3, 3), {"border_mode": "full"}),
    ((2, 3, 7, 18), (2, 3, 3, 3), {"border_mode": "half", "filter_flip": False}),
    ((2, 2, 9, 9), (3, 2, 3, 2), {"border_mode": (1, 2), "subsample": (2, 1)}),
    ((2, 4, 10, 10), (6, 2, 3, 3), {"num_groups": 2, "filter_dilation": (2, 1)}),
    ((1, 2, 6, 17), (2, 2, 2, 3), {"border_mode": ((1, 0), (0, 2)), "subsample": (1, 3)}),
    ((2, 4, 6, 19), (6, 2, 3, 3), {"num_groups": 2, "border_mode": "half"}),  # groups, ow >= 16
]


@pytest.mark.parametrize("xs,ws,kw", CONVS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_and_grads(xs, ws, kw, dtype):
    x = T.tensor4("x", dtype=dtype)
    W = T.tensor4("W", dtype=dtype)
    out = conv2d(x, W, **kw)
    G = T.tensor4("G", dtype=dtype)
    cost = (out * G).sum()
    xv = rng.standard_normal(xs).astype(dtype)
    Wv = rng.standard_normal(ws).astype(dtype)
    oshape = graphc.function([x, W], out.shape, mode=NATIVE)(xv, Wv)
    Gv = rng.standard_normal(oshape).astype(dtype)
    outs = [out] + graphc.grad(cost, [x, W])
    compare([x, W, G], outs, [xv, Wv, Gv], f"conv {xs} {ws} {kw}")
    f = graphc.function([x, W, G], outs, mode=NATIVE)
    assert {"Conv2d", "Conv2dGradInputs", "Conv2dGradWeights"} <= native_steps(f)


def test_conv_strided_inputs_repeated_calls_and_errors():
    x = T.tensor4("x", dtype="float32")
    W = T.tensor4("W", dtype="float32")
    out = T.tanh(conv2d(x, W))                         # conv output feeds a kept buffer
    f = graphc.function([x, W], [out, graphc.grad(out.sum(), W)], mode=NATIVE)
    ref = graphc.function([x, W], [out, graphc.grad(out.sum(), W)],
                          mode=graphc.Mode(linker="py", optimizer=None))
    big = rng.standard_normal((4, 3, 12, 16)).astype(np.float32)
    Wv = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    for xv in (big[:, :, ::-1, ::2], big[1:3], big[:, :, :9, :9]):
        for got, want in zip(f(xv, Wv), ref(xv, Wv)):
            assert_same(got, want, f"conv {xv.shape}")
    with pytest.raises(ShapeError, match="channels"):
        f(big, rng.standard_normal((2, 2, 3, 3)).astype(np.float32))


def _conv_steps(f):
    """{op type name: step} of the conv nodes of ``f``, made as the linker makes them (in run
    order, over one shared storage)."""
    from graphc.link.py import make_storage
    fg = f.maker.fgraph
    order = fg.toposort()
    storage = make_storage(fg, order)
    steps = {}
    for node in order:
        maker = STEP_MAKERS.get(type(node.op))
        if maker is not None and "Conv" in type(node.op).__name__:
            steps[type(node.op).__name__] = maker(node, [storage[i] for i in node.inputs],
                                                  [storage[o] for o in node.outputs], True)
    return steps


def test_conv_weight_grad_reuses_the_forward_patches_of_the_same_call():
    # grouped convolutions take the numpy route (im2col of the whole batch), where the
    # weight gradient reads the patches the forward made
    x = T.tensor4("x", dtype="float64")
    W = T.tensor4("W", dtype="float64")
    out = T.tanh(conv2d(x, W, num_groups=2))
    outs = [out, graphc.grad((out * out).sum(), W)]
    f = graphc.function([x, W], outs, mode=NATIVE)
    ref = graphc.function([x, W], outs, mode=graphc.Mode(linker="py", optimizer=None))
    steps = _conv_steps(f)
    assert steps["Conv2dGradWeights"].cols_ws is steps["Conv2d"].ws
    xv = rng.standard_normal((3, 2, 9, 20)).astype(np.float64)
    Wv = rng.standard_normal((4, 1, 3, 3)).astype(np.float64)
    for _ in range(2):              # the caller refills its input array between calls
        for got, want in zip(f(xv, Wv), ref(xv, Wv)):
            assert_same(got, want, "conv with reused patches")
        xv[...] = rng.standard_normal(xv.shape)
    other = rng.standard_normal((3, 2, 9, 20)).astype(np.float64)
    for got, want in zip(f(other, Wv), ref(other, Wv)):
        assert_same(got, want, "conv, another image array")


def test_conv_weight_grad_without_a_forward_makes_its_own_patches():
    x = T.tensor4("x", dtype="float32")
    W = T.tensor4("W", dtype="float32")
    G = T.tensor4("G", dtype="float32")
    gW = graphc.grad((conv2d(x, W, num_groups=2) * G).sum(), W)   # forward value unused
    compare([x, W, G], gW, [rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
                            rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
                            rng.standard_normal((2, 2, 6, 6)).astype(np.float32)],
            "conv weight grad alone")
    f = graphc.function([x, W, G], gW, mode=NATIVE)
    assert _conv_steps(f)["Conv2dGradWeights"].cols_ws is None


@pytest.mark.parametrize("xs,ws", [((32, 4, 24, 24), (8, 4, 5, 5)),     # rows of ow >= 16
                                   ((64, 8, 12, 12), (16, 8, 5, 5))])   # batch-last order
def test_conv_larger_shapes(xs, ws):
    x = T.tensor4("x", dtype="float32")
    W = T.tensor4("W", dtype="float32")
    out = conv2d(x, W)
    G = T.tensor4("G", dtype="float32")
    outs = [out] + graphc.grad((out * G).sum(), [x, W])
    oshape = (xs[0], ws[0], xs[2] - ws[2] + 1, xs[3] - ws[3] + 1)
    compare([x, W, G], outs, [rng.standard_normal(xs).astype(np.float32),
                              rng.standard_normal(ws).astype(np.float32),
                              rng.standard_normal(oshape).astype(np.float32)],
            f"conv {xs} {ws}")


# --------------------------------------------------------------------------- numpy's BLAS
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_into_numpys_blas(dtype):
    """c = alpha * a @ b + beta * c in one CBLAS call, for row- and column-major operands and
    a c with padded rows; layouts BLAS cannot take are declined (the caller uses np.dot)."""
    from graphc.backend.llvm.blas import gemm_into, numpy_cblas_gemm
    if numpy_cblas_gemm(dtype) is None:
        pytest.skip("numpy's CBLAS not found")
    a0 = rng.standard_normal((5, 7)).astype(dtype)
    b0 = rng.standard_normal((7, 3)).astype(dtype)
    for a in (a0, np.asfortranarray(a0)):
        for b in (b0, np.asfortranarray(b0), b0.T.copy().T):
            for alpha, beta in ((1.0, 0.0), (-0.1, 1.0), (2.0, -0.5)):
                big = rng.standard_normal((5, 6)).astype(dtype)
                c = big[:, :3]                                  # rows of stride 6
                want = alpha * (a0.astype(np.float64) @ b0) + beta * c
                if beta == 0.0:
                    c[...] = np.nan                             # ignored when beta == 0
                    want = alpha * (a0.astype(np.float64) @ b0)
                assert gemm_into(a, b, alpha, beta, c)
                assert_same(c, want.astype(dtype), f"gemm_into {alpha} {beta}")
    assert not gemm_into(a0[:, ::-1], b0, 1.0, 0.0, np.empty((5, 3), dtype))
    assert not gemm_into(a0, b0, 1.0, 0.0, np.empty((3, 5), dtype).T)


def test_gemm_with_z_through_blas_matches_reference():
    """The SGD update form W - lr * x.T @ d (Gemm{TN, z}) and a scaled product."""
    x = T.matrix("x", dtype="float32")
    d = T.matrix("d", dtype="float32")
    Wm = T.matrix("W", dtype="float32")
    outs = [Wm - 0.1 * T.dot(x.T, d), 3.0 * T.dot(x, Wm)]
    compare([x, d, Wm], outs, [rng.standard_normal((8, 5)).astype(np.float32),
                               rng.standard_normal((8, 6)).astype(np.float32),
                               rng.standard_normal((5, 6)).astype(np.float32)], "gemm z")
