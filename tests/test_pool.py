"""pool_2d / pool_3d against a direct numpy definition (Theano's Pool.perform, window by
window) for every mode x ignore_border x stride x pad; gradients by finite differences."""
import itertools
import warnings

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.tensor.signal import pool
from graphc.tensor.signal.pool import (AveragePoolGrad, MaxPoolGrad, Pool, max_pool_2d_same_size,
                                       pool_2d, pool_3d)


def ref_out_len(n, ws, st, pad, ignore_border):
    v = n + 2 * pad
    if ignore_border:
        return max((v - ws) // st + 1, 0)
    if st >= ws:
        return (v - 1) // st + 1
    return max(0, (v - 1 - ws + st) // st) + 1


def ref_pool(x, ws, ignore_border, stride, pad, mode):
    """One window at a time, regions clipped as in Theano's Pool.perform."""
    nd = len(ws)
    spatial = x.shape[-nd:]
    img = tuple(n + 2 * p for n, p in zip(spatial, pad))
    y = np.zeros(x.shape[:-nd] + img)
    y[(Ellipsis,) + tuple(slice(p, p + n) for p, n in zip(pad, spatial))] = x
    out_shape = [ref_out_len(n, w, s, p, ignore_border)
                 for n, w, s, p in zip(spatial, ws, stride, pad)]
    out = np.zeros(x.shape[:-nd] + tuple(out_shape))
    for r in np.ndindex(*out_shape):
        region = []
        for d in range(nd):
            start = r[d] * stride[d]
            end = min(start + ws[d], img[d])
            if mode != "average_inc_pad":
                start, end = max(start, pad[d]), min(end, img[d] - pad[d])
            region.append(slice(start, end))
        win = y[(Ellipsis,) + tuple(region)].reshape(x.shape[:-nd] + (-1,))
        if mode == "max":
            val = win.max(axis=-1)
        elif mode == "sum":
            val = win.sum(axis=-1)
        else:
            val = win.mean(axis=-1)
        out[(Ellipsis,) + r] = val
    return out


MODES = ["max", "sum", "average_inc_pad", "average_exc_pad"]
# (ws, stride, pad, ignore_border): pad needs ignore_border=True in Theano
GEOMETRIES = [((2, 2), None, (0, 0), True), ((2, 2), None, (0, 0), False),
              ((3, 2), (2, 1), (0, 0), True), ((3, 2), (2, 1), (0, 0), False),
              ((2, 3), (3, 3), (0, 0), False), ((3, 3), (1, 2), (1, 2), True),
              ((3, 2), (2, 3), (2, 1), True)]


def distinct(rng, shape):
    """Values with gaps >> the finite-difference step, so no window max is near a tie."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + \
        rng.uniform(-0.01, 0.01, shape)


@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_reference(mode, rng):
    x = T.tensor4("x")
    xv = rng.standard_normal((2, 3, 7, 8))
    for ws, st, pad, ib in GEOMETRIES:
        y = pool_2d(x, ws, ignore_border=ib, stride=st, pad=pad, mode=mode)
        got = graphc.function([x], y)(xv)
        want = ref_pool(xv, ws, ib, st or ws, pad, mode)
        assert got.shape == want.shape, (ws, st, pad, ib)
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=str((ws, st, pad, ib)))


@pytest.mark.parametrize("mode", MODES)
def test_grad_every_geometry(mode, rng):
    xv = distinct(rng, (2, 2, 6, 7))
    for ws, st, pad, ib in GEOMETRIES:
        verify_grad(lambda a: pool_2d(a, ws, ignore_border=ib, stride=st, pad=pad, mode=mode),
                    [xv], rng=np.random.default_rng(0), n_tests=1)


@pytest.mark.parametrize("mode", MODES)
def test_second_order(mode, rng):
    """Gradients of MaxPoolGrad (via MaxPoolGradGrad) and of AveragePoolGrad (via Pool)."""
    xv = distinct(rng, (1, 2, 5, 6))
    kw = dict(ws=(3, 2), stride=(2, 1), ignore_border=False, mode=mode)

    def g(a):
        return graphc.grad(T.sum(T.sqr(pool_2d(a, **kw))), a)

    verify_grad(g, [xv], rng=np.random.default_rng(0), n_tests=1)


def test_max_grad_goes_to_every_tied_max():
    x = T.matrix("x")
    y = pool_2d(x, (2, 2), ignore_border=True)
    gx = graphc.function([x], graphc.grad(y.sum(), x))(np.array([[1.0, 3.0], [3.0, 0.0]]))
    np.testing.assert_array_equal(gx, [[0, 1], [1, 0]])


def test_ndim_2_3_and_5(rng):
    v2 = rng.standard_normal((5, 7))
    v5 = rng.standard_normal((2, 1, 2, 5, 7))
    for v in (v2, v5):
        x = T.TensorType("float64", shape=(None,) * v.ndim)("x")
        got = graphc.function([x], pool_2d(x, (2, 3), ignore_border=False, mode="sum"))(v)
        np.testing.assert_allclose(got, ref_pool(v, (2, 3), False, (2, 3), (0, 0), "sum"))
    v3 = rng.standard_normal((2, 5, 6, 7))
    x = T.tensor4("x")
    for mode, ib in itertools.product(("max", "average_exc_pad"), (True, False)):
        pad = (1, 0, 1) if ib else (0, 0, 0)
        y = pool_3d(x, (2, 3, 2), ignore_border=ib, stride=(2, 2, 1), pad=pad, mode=mode)
        got = graphc.function([x], y)(v3)
        np.testing.assert_allclose(got, ref_pool(v3, (2, 3, 2), ib, (2, 2, 1), pad, mode))
    verify_grad(lambda a: pool_3d(a, (2, 2, 2), True, mode="average_inc_pad", pad=(1, 0, 1)),
                [v3[:1, :3, :4, :3]], rng=np.random.default_rng(0), n_tests=1)


def test_static_and_inferred_shapes(rng):
    x = T.TensorType("float64", shape=(2, 3, 7, 8))("x")
    y = pool_2d(x, (3, 2), ignore_border=False, stride=(2, 3))
    assert y.type.shape == (2, 3, 3, 3)
    assert Pool.out_shape((2, 3, 7, 8), (3, 2), False, (2, 3)) == [2, 3, 3, 3]
    xs = T.tensor4("xs")
    xv = rng.standard_normal((2, 3, 7, 8))
    for ws, st, pad, ib in GEOMETRIES + [((9, 2), None, (0, 0), True)]:
        for op in (Pool(ws, ib, st, pad, "max"), Pool(ws, ib, st, pad, "sum")):
            out = op(xs)
            sym = op.infer_shape(out.owner, [tuple(T.shape_i(xs, d) for d in range(4))])[0]
            val, shp = graphc.function([xs], [out, T.stack(list(sym))])(xv)
            assert tuple(shp) == val.shape


def test_max_pool_2d_same_size():
    x = T.matrix("x")
    v = np.array([[1.0, 5, 2, 0], [3, 4, 8, 7], [0, 1, 2, 3], [9, 1, 1, 2]])
    got = graphc.function([x], max_pool_2d_same_size(x, (2, 2)))(v)
    np.testing.assert_array_equal(got, [[0, 5, 0, 0], [0, 0, 8, 0], [0, 0, 0, 3], [9, 0, 0, 0]])


def test_deprecated_names_and_errors():
    x = T.tensor4("x")
    with pytest.warns(DeprecationWarning, match="'ds'"):
        y = pool_2d(x, ds=(2, 2), ignore_border=True)
    assert y.owner.op == Pool((2, 2), True)
    with pytest.warns(DeprecationWarning, match="'st'"):
        y = pool_2d(x, (3, 3), ignore_border=True, st=(1, 1))
    assert y.owner.op.stride == (1, 1)
    with pytest.warns(DeprecationWarning, match="'padding'"):
        y = pool_2d(x, (3, 3), ignore_border=True, padding=(1, 1))
    assert y.owner.op.pad == (1, 1)
    with pytest.warns(UserWarning, match="ignore_border"):
        y = pool_2d(x, (2, 2))
    assert y.owner.op.ignore_border is False
    with pytest.raises(ValueError, match="both 'ws' and 'ds'"):
        pool_2d(x, (2, 2), True, ds=(3, 3))
    with pytest.raises(NotImplementedError, match="ignore_border=True"):
        pool_2d(x, (2, 2), False, pad=(1, 1))
    with pytest.raises(NotImplementedError, match="smaller"):
        pool_2d(x, (2, 2), True, pad=(2, 0))
    with pytest.raises(ValueError, match="mode"):
        pool_2d(x, (2, 2), True, mode="median")
    with pytest.raises(NotImplementedError, match=">= 2"):
        pool_2d(T.vector(), (2, 2), True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool.pool_2d(x, (2, 2), True, mode="max_deterministic").owner.op.mode == "max"


def test_grad_op_types():
    x = T.tensor4("x")
    for mode, cls in (("max", MaxPoolGrad), ("average_exc_pad", AveragePoolGrad)):
        g = graphc.grad(pool_2d(x, (2, 2), True, mode=mode).sum(), x)
        assert isinstance(g.owner.op, cls)
