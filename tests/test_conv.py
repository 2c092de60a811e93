"""conv2d and its gradients against a direct numpy definition and scipy.signal; finite
difference gradient checks over border_mode x subsample x dilation x filter_flip."""
import itertools

import numpy as np
import pytest
from scipy import signal

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.tensor.elemwise import ShapeError
from graphc.tensor.nnet.abstract_conv import get_conv_output_shape
from graphc.tensor.nnet.conv import (Conv2d, Conv2dGradInputs, Conv2dGradWeights, conv2d,
                                     conv2d_grad_wrt_inputs, conv2d_grad_wrt_weights)


# --------------------------------------------------------------------------- reference
def ref_pads(border_mode, kh, kw, dil):
    """((top, bottom), (left, right)) written out from Theano's documentation."""
    if border_mode == "valid":
        return (0, 0), (0, 0)
    if border_mode == "full":
        return (dil[0] * (kh - 1),) * 2, (dil[1] * (kw - 1),) * 2
    if border_mode == "half":
        return (dil[0] * (kh // 2),) * 2, (dil[1] * (kw // 2),) * 2
    if isinstance(border_mode, int):
        return (border_mode,) * 2, (border_mode,) * 2
    a, b = border_mode
    return (a, a) if isinstance(a, int) else a, (b, b) if isinstance(b, int) else b


def ref_conv2d(x, w, border_mode="valid", subsample=(1, 1), flip=True, dil=(1, 1), groups=1):
    """out[b, o, y, x] = sum_{c,i,j} pad(x)[b, g*Cg+c, y*sh+i*dh, x*sw+j*dw] * w'[o, c, i, j],
    one output pixel at a time."""
    B, C, H, W = x.shape
    O, cg, kh, kw = w.shape
    (t, bo), (l, r) = ref_pads(border_mode, kh, kw, dil)
    xp = np.zeros((B, C, H + t + bo, W + l + r))
    xp[:, :, t:t + H, l:l + W] = x
    if flip:
        w = w[:, :, ::-1, ::-1]
    eh, ew = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    oh = (xp.shape[2] - eh) // subsample[0] + 1
    ow = (xp.shape[3] - ew) // subsample[1] + 1
    out = np.zeros((B, O, oh, ow))
    og = O // groups
    for o in range(O):
        g = o // og
        for y in range(oh):
            for z in range(ow):
                y0, z0 = y * subsample[0], z * subsample[1]
                patch = xp[:, g * cg:(g + 1) * cg, y0:y0 + eh:dil[0], z0:z0 + ew:dil[1]]
                out[:, o, y, z] = np.sum(patch * w[o], axis=(1, 2, 3))
    return out


def compile_conv(**kw):
    x, w = T.tensor4("x"), T.tensor4("w")
    return graphc.function([x, w], conv2d(x, w, **kw))


BORDER_MODES = ["valid", "full", "half", 1, (2, 1), ((1, 0), (0, 2))]
SUBSAMPLES = [(1, 1), (2, 1), (2, 3)]
DILATIONS = [(1, 1), (2, 1)]


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("border_mode", BORDER_MODES, ids=str)
def test_forward_matches_direct_definition(border_mode, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    for sub, dil, flip in itertools.product(SUBSAMPLES, DILATIONS, (True, False)):
        f = compile_conv(border_mode=border_mode, subsample=sub, filter_dilation=dil,
                         filter_flip=flip)
        got = f(x, w)
        want = ref_conv2d(x, w, border_mode, sub, flip, dil)
        assert got.shape == want.shape, (sub, dil, flip)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=str((sub, dil, flip)))


@pytest.mark.parametrize("mode,scipy_mode", [("valid", "valid"), ("full", "full"),
                                             ("half", "same")])
def test_single_channel_matches_scipy(mode, scipy_mode, rng):
    img = rng.standard_normal((9, 11))
    k = rng.standard_normal((3, 5))          # odd sizes: 'half' is scipy's 'same'
    x, w = img[None, None], k[None, None]
    conv = compile_conv(border_mode=mode)(x, w)[0, 0]
    corr = compile_conv(border_mode=mode, filter_flip=False)(x, w)[0, 0]
    np.testing.assert_allclose(conv, signal.convolve2d(img, k, mode=scipy_mode), atol=1e-12)
    np.testing.assert_allclose(corr, signal.correlate2d(img, k, mode=scipy_mode), atol=1e-12)


def test_multichannel_is_sum_of_scipy_convolutions(rng):
    x = rng.standard_normal((2, 3, 6, 7))
    w = rng.standard_normal((2, 3, 4, 3))
    got = compile_conv(border_mode="full")(x, w)
    for b, o in itertools.product(range(2), range(2)):
        want = sum(signal.convolve2d(x[b, c], w[o, c], mode="full") for c in range(3))
        np.testing.assert_allclose(got[b, o], want, atol=1e-12)


@pytest.mark.parametrize("groups", [2, 3])
def test_num_groups(groups, rng):
    x = rng.standard_normal((2, 6, 6, 5))
    w = rng.standard_normal((groups * 2, 6 // groups, 3, 3))
    got = compile_conv(border_mode="half", num_groups=groups, subsample=(2, 1))(x, w)
    np.testing.assert_allclose(got, ref_conv2d(x, w, "half", (2, 1), True, (1, 1), groups),
                               atol=1e-12)


def test_float32_stays_float32(rng):
    x, w = T.tensor4("x", dtype="float32"), T.tensor4("w", dtype="float32")
    y = conv2d(x, w)
    assert y.dtype == "float32"
    xv = rng.standard_normal((2, 2, 5, 5)).astype("float32")
    wv = rng.standard_normal((3, 2, 2, 2)).astype("float32")
    r = graphc.function([x, w], y)(xv, wv)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r, ref_conv2d(xv, wv), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- gradients
def small_case(rng, groups=1):
    return [rng.standard_normal((2, 2 * groups, 5, 6)), rng.standard_normal((2 * groups, 2, 3, 2))]


@pytest.mark.parametrize("border_mode", BORDER_MODES, ids=str)
def test_grad_every_combination(border_mode, rng):
    x, w = small_case(rng)
    for sub, dil, flip in itertools.product([(1, 1), (2, 2)], DILATIONS, (True, False)):
        verify_grad(lambda a, b: conv2d(a, b, border_mode=border_mode, subsample=sub,
                                        filter_dilation=dil, filter_flip=flip),
                    [x, w], rng=np.random.default_rng(0), n_tests=1)


def test_grad_groups(rng):
    x, w = small_case(rng, groups=2)
    verify_grad(lambda a, b: conv2d(a, b, border_mode=(1, 0), subsample=(2, 1), num_groups=2),
                [x, w], rng=np.random.default_rng(0), n_tests=1)


@pytest.mark.parametrize("border_mode,sub,dil", [("valid", (1, 1), (1, 1)),
                                                 ("half", (2, 1), (1, 2)),
                                                 ((1, 2), (2, 2), (1, 1))])
def test_second_order(border_mode, sub, dil, rng):
    """Gradients of the gradient ops (each expressed with the other two)."""
    x, w = small_case(rng)
    kw = dict(border_mode=border_mode, subsample=sub, filter_dilation=dil)

    def dx(a, b):
        return graphc.grad(T.sum(T.sqr(conv2d(a, b, **kw))), a)

    def dw(a, b):
        return graphc.grad(T.sum(T.sqr(conv2d(a, b, **kw))), b)

    verify_grad(dx, [x, w], rng=np.random.default_rng(1), n_tests=1)
    verify_grad(dw, [x, w], rng=np.random.default_rng(2), n_tests=1)


def test_grad_ops_are_adjoints(rng):
    """<conv(x, w), g> == <x, grad_inputs(g, w)> == <w, grad_weights(x, g)>."""
    kw = dict(border_mode=(1, 2), subsample=(2, 3), filter_dilation=(2, 1))
    x, w = rng.standard_normal((2, 3, 9, 10)), rng.standard_normal((4, 3, 3, 2))
    y = ref_conv2d(x, w, kw["border_mode"], kw["subsample"], True, kw["filter_dilation"])
    g = rng.standard_normal(y.shape)
    gt, wt, xt = T.tensor4("g"), T.tensor4("w"), T.tensor4("x")
    gi = graphc.function([gt, wt], conv2d_grad_wrt_inputs(gt, wt, x.shape, **kw))(g, w)
    gw = graphc.function([xt, gt], conv2d_grad_wrt_weights(xt, gt, w.shape, **kw))(x, g)
    assert gi.shape == x.shape and gw.shape == w.shape
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gi), rtol=1e-10)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(w, gw), rtol=1e-10)


def test_transposed_conv_for_generators(rng):
    """conv2d_grad_wrt_inputs upsamples: a 4x4 map becomes 8x8 with stride 2, 'half'."""
    z = T.tensor4("z")
    w = T.tensor4("w")
    up = conv2d_grad_wrt_inputs(z, w, (None, 3, 8, 8), filter_shape=(5, 3, 4, 4),
                                border_mode=(1, 1), subsample=(2, 2))
    assert up.type.shape == (None, 3, 8, 8)
    zv, wv = rng.standard_normal((2, 5, 4, 4)), rng.standard_normal((5, 3, 4, 4))
    got = graphc.function([z, w], up)(zv, wv)
    x = T.tensor4("x")
    g = graphc.grad(T.sum(conv2d(x, w, border_mode=(1, 1), subsample=(2, 2)) *
                          T.constant(zv)), x)
    want = graphc.function([x, w], g)(np.zeros((2, 3, 8, 8)), wv)
    np.testing.assert_allclose(got, want, atol=1e-12)
    verify_grad(lambda a, b: conv2d_grad_wrt_inputs(a, b, (1, 3, 8, 8), border_mode=(1, 1),
                                                    subsample=(2, 2)),
                [zv[:1, :2], wv[:2]], rng=np.random.default_rng(0), n_tests=1)


# --------------------------------------------------------------------------- shapes & errors
def test_static_shape_from_hints_and_types():
    x = T.tensor4("x")
    y = conv2d(x, T.tensor4("w"), input_shape=(None, 1, 28, 28), filter_shape=(20, 1, 5, 5))
    assert y.type.shape == (None, 20, 24, 24)
    xs = T.TensorType("float64", shape=(8, 3, 10, 9))("xs")
    ws = T.TensorType("float64", shape=(4, 3, 3, 3))("ws")
    assert conv2d(xs, ws, border_mode="half", subsample=(2, 2)).type.shape == (8, 4, 5, 5)
    assert conv2d(xs, ws, border_mode="full", filter_dilation=(2, 1)).type.shape == (8, 4, 14, 11)
    assert get_conv_output_shape((8, 3, 10, 9), (4, 3, 3, 3), "half", (2, 2)) == (8, 4, 5, 5)
    assert get_conv_output_shape((None, 3, None, 9), (4, 3, 3, 3), "valid", (1, 1)) == \
        (None, 4, None, 7)


@pytest.mark.parametrize("border_mode,sub,dil,groups", [
    ("valid", (1, 1), (1, 1), 1), ("full", (2, 3), (1, 2), 1), ("half", (1, 2), (2, 2), 2),
    (((2, 0), (1, 3)), (3, 1), (1, 1), 1)])
def test_infer_shape(border_mode, sub, dil, groups, rng):
    x, w = T.tensor4("x"), T.tensor4("w")
    kw = dict(border_mode=border_mode, subsample=sub, filter_dilation=dil, num_groups=groups)
    y = conv2d(x, w, **kw)
    g = T.tensor4("g")
    outs = [y, Conv2dGradInputs(**kw)(w, g, x.shape[2:]),
            Conv2dGradWeights(**kw)(x, g, w.shape[2:])]
    xv = rng.standard_normal((2, 4, 9, 8))
    wv = rng.standard_normal((4, 4 // groups, 3, 2))
    yv = ref_conv2d(xv, wv, border_mode, sub, True, dil, groups)
    for out in outs:
        node = out.owner
        shapes = [tuple(T.shape_i(i, d) for d in range(i.ndim)) for i in node.inputs]
        sym = node.op.infer_shape(node, shapes)[0]
        f = graphc.function([x, w, g], [out, T.stack(list(sym))],
                            on_unused_input="ignore")
        val, shp = f(xv, wv, rng.standard_normal(yv.shape))
        assert tuple(shp) == val.shape


def test_channel_mismatch_is_a_static_error():
    x = T.TensorType("float64", shape=(None, 3, None, None))("x")
    w = T.TensorType("float64", shape=(4, 2, 3, 3))("w")
    with pytest.raises(ShapeError) as e:
        conv2d(x, w)
    msg = str(e.value)
    assert "Conv2d" in msg and "3 channels" in msg and "(4, 2, 3, 3)" in msg
    assert "test_conv.py" in msg          # the user's line


def test_hint_mismatch_and_runtime_errors(rng):
    x, w = T.tensor4("x"), T.tensor4("w")
    with pytest.raises(ShapeError, match="filter"):
        conv2d(x, w, input_shape=(None, 3, 5, 5), filter_shape=(2, 3, 7, 7))
    f = graphc.function([x, w], conv2d(x, w, input_shape=(None, 3, None, None)))
    with pytest.raises(Exception, match="input_shape|shape hint"):
        f(rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3)))
    g = graphc.function([x, w], conv2d(x, w))
    with pytest.raises(ShapeError, match="2 channels but the filters expect 3"):
        g(rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 3, 3, 3)))
    with pytest.raises(ShapeError, match="do not fit"):
        g(rng.standard_normal((1, 3, 2, 5)), rng.standard_normal((2, 3, 3, 3)))
    with pytest.raises(TypeError, match="4-d"):
        conv2d(T.matrix(), w)
    with pytest.raises(ValueError, match="border_mode"):
        conv2d(x, w, border_mode="same")
    with pytest.raises(NotImplementedError):
        conv2d(x, w, unshared=True)


def test_theano_names_and_deprecated_image_shape():
    x, w = T.tensor4("x"), T.tensor4("w")
    assert T.nnet.conv2d is conv2d
    with pytest.warns(DeprecationWarning, match="input_shape"):
        y = T.nnet.conv2d(x, w, image_shape=(None, 2, 6, 6), filter_shape=(3, 2, 3, 3))
    assert y.type.shape == (None, 3, 4, 4)
    assert isinstance(y.owner.op, Conv2d)
    assert Conv2d(border_mode=(1, 1)) == Conv2d(border_mode=1)
    assert Conv2d(border_mode=((1, 0), (0, 0))) != Conv2d(border_mode=1)


def test_non_contiguous_inputs(rng):
    """Transposed and reversed views (as DimShuffle / Subtensor produce) convolve correctly."""
    x, w = T.tensor4("x"), T.tensor4("w")
    xv, wv = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 3, 2))
    y = conv2d(x.dimshuffle(0, 1, 3, 2)[:, :, ::-1], w[:, :, :, ::-1], border_mode=(1, 0),
               subsample=(2, 1))
    got = graphc.function([x, w], y)(xv, wv)
    want = ref_conv2d(xv.transpose(0, 1, 3, 2)[:, :, ::-1], wv[:, :, :, ::-1], (1, 0), (2, 1))
    np.testing.assert_allclose(got, want, atol=1e-12)
