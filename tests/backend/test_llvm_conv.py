"""The blocked convolution steps of graphc/link/llvm_conv.py and the im2col / col2im kernels
of graphc/backend/llvm/convblock.py, against numpy and the reference backend.

The steps' block size and thresholds are module constants: the tests set them so that small
shapes take every route (several blocks, two threads, the direct forward, one product per
image or per block) that LeNet-sized ones take by default.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.backend.llvm import kernel
from graphc.backend.llvm.convblock import load_convblock
from graphc.gradient import verify_grad
from graphc.link import llvm_conv
from graphc.tensor.nnet.conv import conv2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_backends import NATIVE, compare  # noqa: E402

rng = np.random.default_rng(11)


# --------------------------------------------------------------------------- kernels
def _windows(a, kh, kw, oh, ow, sub, dil):
    """Per offset (i, j): the (n, C, oh, ow) view of a at that offset."""
    (sh, sw), (dh, dw) = sub, dil
    return {(i, j): a[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                      j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)}


KERNEL_CASES = [  # (n, C, H, W, kh, kw, subsample, dilation)
    (3, 2, 9, 11, 3, 2, (1, 1), (1, 1)),     # ow = 10: one vector step and a tail
    (2, 3, 10, 9, 2, 3, (2, 3), (2, 1)),     # strided columns: the scalar row loop
    (1, 1, 5, 5, 5, 5, (1, 1), (1, 1)),      # one output pixel
    (2, 2, 12, 40, 3, 3, (1, 1), (1, 2)),    # ow = 36: several vector steps
    (2, 3, 12, 12, 5, 5, (1, 1), (1, 1)),    # ow = 8 (LeNet layer 2): one float32 vector
    (2, 2, 6, 6, 3, 3, (2, 1), (1, 1)),      # ow = 4: one float64 vector
]


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_im2col_and_col2im_kernels(case, dtype):
    n, C, H, W, kh, kw, sub, dil = case
    oh = (H - dil[0] * (kh - 1) - 1) // sub[0] + 1
    ow = (W - dil[1] * (kw - 1) - 1) // sub[1] + 1
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    im2col = proto(load_convblock("im2col", dtype))
    col2im = proto(load_convblock("col2im", dtype))
    big = rng.standard_normal((n, C + 1, H, W + 3)).astype(dtype)
    src = big[:, 1:, :, 2:-1]                          # strided images, unit column stride
    meta = np.array([C, kh, kw, oh, ow, n, *sub, *dil,
                     *[s // src.itemsize for s in src.strides[:3]], H, W], np.int64)
    cols = np.empty((C, kh, kw, n, oh, ow), dtype)
    im2col(meta.ctypes.data, src.ctypes.data, cols.ctypes.data)
    for (i, j), view in _windows(src, kh, kw, oh, ow, sub, dil).items():
        np.testing.assert_array_equal(cols[:, i, j], view.transpose(1, 0, 2, 3))

    g = rng.standard_normal(cols.shape).astype(dtype)
    big[...] = 7.0                                     # col2im must clear its planes
    col2im(meta.ctypes.data, g.ctypes.data, src.ctypes.data)
    want = np.zeros(src.shape, dtype)
    for (i, j), view in _windows(want, kh, kw, oh, ow, sub, dil).items():
        view += g[:, i, j].transpose(1, 0, 2, 3)
    np.testing.assert_allclose(src, want, rtol=1e-6 if dtype == "float32" else 1e-14)
    assert (big[:, 0] == 7.0).all() and (big[..., :2] == 7.0).all()   # outside: untouched


DIRECT_CASES = [  # (n, C, H, W, O, kh, kw, sh, dilation); rows of ow >= 8 columns
    (3, 1, 28, 28, 20, 5, 5, 1, (1, 1)),     # LeNet's first layer: filters 0-11, 8-19
    (2, 2, 9, 13, 11, 3, 2, 2, (2, 1)),      # passes of 4 filters, ow = 12: runs overlap
    (1, 3, 5, 13, 3, 5, 5, 1, (1, 1)),       # one output row of 9, single filters
    (2, 1, 12, 30, 25, 3, 3, 1, (1, 3)),     # 12 + 12 + an overlapping pass of 12
    (2, 2, 6, 8, 4, 2, 1, 1, (1, 1)),        # float64: two runs of 4 in a row of 8
]


@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_direct_forward_kernel(case, dtype):
    n, C, H, W, O, kh, kw, sh, (dh, dw) = case
    oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, W - dw * (kw - 1)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(load_convblock("direct", dtype))
    src = rng.standard_normal((n, C + 1, H, W)).astype(dtype)[:, 1:]
    w = rng.standard_normal((O, C, kh, kw)).astype(dtype)
    wt = np.ascontiguousarray(w.reshape(O, -1).T)
    out = np.empty((n, O, oh, ow), dtype)
    meta = np.array([C, kh, kw, oh, ow, n, sh, dh, dw,
                     *[s // src.itemsize for s in src.strides[:3]], O], np.int64)
    fn(meta.ctypes.data, src.ctypes.data, wt.ctypes.data, out.ctypes.data)
    want = np.zeros(out.shape)
    for (i, j), view in _windows(src, kh, kw, oh, ow, (sh, 1), (dh, dw)).items():
        want += np.einsum("bchw,oc->bohw", view, w[:, :, i, j])
    np.testing.assert_allclose(out, want, rtol=1e-4 if dtype == "float32" else 1e-12,
                               atol=1e-4 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_direct_weight_gradient_kernel(case, dtype):
    n, C, H, W, O, kh, kw, sh, (dh, dw) = case
    oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, W - dw * (kw - 1)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(load_convblock("direct_gw", dtype))
    src = rng.standard_normal((n, C + 1, H, W)).astype(dtype)[:, 1:]
    g = rng.standard_normal((n, O, oh, ow)).astype(dtype)
    acc = np.full((O, C * kh * kw), 0.5, dtype)        # the kernel adds to it
    meta = np.array([C, kh, kw, oh, ow, n, sh, dh, dw,
                     *[s // src.itemsize for s in src.strides[:3]], O], np.int64)
    fn(meta.ctypes.data, src.ctypes.data, g.ctypes.data, acc.ctypes.data)
    want = np.full((O, C, kh, kw), 0.5)
    for (i, j), view in _windows(src, kh, kw, oh, ow, (sh, 1), (dh, dw)).items():
        want[:, :, i, j] += np.einsum("bohw,bchw->oc", g, view)
    np.testing.assert_allclose(acc.reshape(want.shape), want,
                               rtol=1e-4 if dtype == "float32" else 1e-12,
                               atol=1e-3 if dtype == "float32" else 1e-11)


# --------------------------------------------------------------------------- steps
@pytest.fixture(params=["direct", "per_image", "per_block"])
def small_blocks(request, monkeypatch):
    """Blocks of one image on two threads; the forward direct (when the geometry allows)
    or through patches, the products per image or per block."""
    monkeypatch.setattr(llvm_conv, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(llvm_conv, "_THREADS_MIN", 0)
    monkeypatch.setattr(llvm_conv, "_PER_IMAGE_MIN",
                        1 << 30 if request.param == "per_block" else 0)
    if request.param != "direct":
        monkeypatch.setattr(llvm_conv, "_DIRECT_MAX_TAPS", 0)
    kernel.set_num_threads(2)
    yield request.param
    kernel.set_num_threads(None)


CONVS = [  # (input shape, filter shape, conv2d keyword arguments)
    ((5, 2, 9, 7), (4, 2, 3, 2), {}),
    ((3, 1, 7, 20), (3, 1, 3, 3), {"filter_flip": False}),
    ((3, 2, 8, 8), (3, 2, 3, 3), {"border_mode": "full"}),
    ((2, 3, 7, 18), (2, 3, 3, 3), {"border_mode": "half"}),
    ((3, 2, 9, 9), (3, 2, 3, 2), {"border_mode": (1, 2), "subsample": (2, 1)}),
    ((3, 2, 10, 11), (2, 2, 3, 3), {"filter_dilation": (2, 1), "subsample": (1, 2)}),
    ((1, 2, 6, 17), (2, 2, 2, 3), {"border_mode": ((1, 0), (0, 2)), "subsample": (1, 3)}),
    ((1, 3, 5, 5), (2, 3, 5, 5), {}),                               # batch 1, one pixel
]


def _conv_graph(dtype, kw):
    x, W, G = (T.tensor4(n, dtype=dtype) for n in "xWG")
    out = conv2d(x, W, **kw)
    return [x, W, G], [out] + graphc.grad((out * G).sum(), [x, W])


def _blocked_kinds(f):
    """The conv ops of ``f`` whose linked step took the blocked route."""
    from graphc.link.llvm import STEP_MAKERS
    kinds = set()
    for node in f.maker.fgraph.toposort():
        if "Conv" in type(node.op).__name__:
            step = STEP_MAKERS[type(node.op)](node, [[None]] * len(node.inputs),
                                              [[None]], True)
            if getattr(step, "blocked", None) is not None:
                kinds.add(type(node.op).__name__)
    return kinds


@pytest.mark.parametrize("xs,ws,kw", CONVS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_conv_and_grads(small_blocks, xs, ws, kw, dtype):
    inputs, outs = _conv_graph(dtype, kw)
    xv = rng.standard_normal(xs).astype(dtype)
    Wv = rng.standard_normal(ws).astype(dtype)
    oshape = graphc.function(inputs[:2], outs[0].shape, mode=NATIVE)(xv, Wv)
    Gv = rng.standard_normal(oshape).astype(dtype)
    compare(inputs, outs, [xv, Wv, Gv], f"blocked conv {small_blocks} {xs} {ws} {kw}")
    f = graphc.function(inputs, outs, mode=NATIVE)
    assert _blocked_kinds(f) == {"Conv2d", "Conv2dGradInputs", "Conv2dGradWeights"}


@pytest.mark.parametrize("image,filters", [((20, 12, 12), (50, 20, 5, 5)),   # LeNet layer 2
                                           ((1, 28, 28), (20, 1, 5, 5))])    # layer 1
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_default_sizes_two_threads(image, filters, dtype):
    """LeNet's layers at smaller batches with the module's own thresholds: blocks of
    several images, two threads, a partial last block; repeated calls reuse the scratch."""
    kernel.set_num_threads(2)
    try:
        inputs, outs = _conv_graph(dtype, {})
        f = graphc.function(inputs, outs, mode=NATIVE)
        ref = graphc.function(inputs, outs, mode=graphc.Mode(linker="py", optimizer=None))
        ohw = tuple(n - k + 1 for n, k in zip(image[1:], filters[2:]))
        tol = 2e-4 if dtype == "float32" else 1e-11
        for batch in (37, 37, 8):
            vals = [rng.standard_normal((batch,) + image).astype(dtype),
                    rng.standard_normal(filters).astype(dtype),
                    rng.standard_normal((batch, filters[0]) + ohw).astype(dtype)]
            for got, want in zip(f(*vals), ref(*vals)):
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    finally:
        kernel.set_num_threads(None)


def test_blocked_strided_inputs_and_empty_batch(small_blocks):
    inputs, outs = _conv_graph("float32", {"border_mode": (1, 1)})
    f = graphc.function(inputs, outs, mode=NATIVE)
    ref = graphc.function(inputs, outs, mode=graphc.Mode(linker="py", optimizer=None))
    big = rng.standard_normal((4, 3, 12, 16)).astype(np.float32)
    Wv = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)[:, :, ::-1]
    for xv in (big[:, :, ::-1, ::2], big[::-1, :, ::-1], big[1:3], big[:, :, :9, :9], big[:0]):
        Gv = rng.standard_normal((xv.shape[0], 2) + xv.shape[2:]).astype(np.float32)
        for got, want in zip(f(xv, Wv, Gv), ref(xv, Wv, Gv)):
            scale = max(1.0, float(np.abs(want).max(initial=0)))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_blocked_grads_vs_finite_differences(small_blocks):
    x = rng.standard_normal((3, 2, 6, 7))
    w = rng.standard_normal((3, 2, 3, 2))
    for kw in ({}, {"border_mode": "half", "subsample": (2, 1)},
               {"filter_dilation": (1, 2), "border_mode": (2, 0)}):
        verify_grad(lambda a, b: conv2d(a, b, **kw), [x, w],
                    rng=np.random.default_rng(3), n_tests=1)
