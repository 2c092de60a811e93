"""Batch normalization (T.nnet.bn) against numpy, with finite-difference gradients."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.tensor.nnet import bn

AXES = [("per-activation", (0,)), ("spatial", (0, 2, 3)), ((0, 2), (0, 2)), ((1, 3), (1, 3))]


def param_shape(x_shape, axes, keep_dims):
    if keep_dims:
        return tuple(1 if d in axes else n for d, n in enumerate(x_shape))
    return tuple(n for d, n in enumerate(x_shape) if d not in axes)


def expand(p, x_shape, axes):
    return p.reshape(param_shape(x_shape, axes, True))


def ref_train(x, gamma, beta, axes, eps, factor, rm, rv):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    out = (x - mean) * (expand(gamma, x.shape, axes) * invstd) + expand(beta, x.shape, axes)
    m = np.prod([x.shape[a] for a in axes])
    new_rm = expand(rm, x.shape, axes) * (1 - factor) + mean * factor
    new_rv = expand(rv, x.shape, axes) * (1 - factor) + var * m / (m - 1) * factor
    return out, mean, invstd, new_rm, new_rv


@pytest.mark.parametrize("axes_arg,axes", AXES, ids=str)
@pytest.mark.parametrize("keep_dims", [True, False], ids=["full_params", "dropped_params"])
def test_train_matches_numpy(axes_arg, axes, keep_dims, rng):
    shape = (4, 3, 2, 5)
    pshape = param_shape(shape, axes, keep_dims)
    x = T.tensor4("x")
    g, b, rm, rv = (T.TensorType("float64", shape=(None,) * len(pshape))(n)
                    for n in ("g", "b", "rm", "rv"))
    outs = bn.batch_normalization_train(x, g, b, axes_arg, epsilon=1e-3,
                                        running_average_factor=0.3, running_mean=rm,
                                        running_var=rv)
    assert len(outs) == 5 and all(o.ndim == len(pshape) for o in outs[1:])
    xv = rng.standard_normal(shape) * 3 + 2
    gv, bv, rmv = (rng.standard_normal(pshape) for _ in range(3))
    rvv = rng.uniform(0.5, 2, pshape)
    got = graphc.function([x, g, b, rm, rv], list(outs))(xv, gv, bv, rmv, rvv)
    want = ref_train(xv, gv, bv, axes, 1e-3, 0.3, rmv, rvv)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-12)
    for a, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(a, w.reshape(pshape), rtol=1e-10)
    # without running statistics: three outputs
    assert len(bn.batch_normalization_train(x, g, b, axes_arg)) == 3


@pytest.mark.parametrize("axes_arg,axes", AXES[:3], ids=str)
def test_test_mode_matches_numpy(axes_arg, axes, rng):
    shape = (3, 4, 2, 3)
    pshape = param_shape(shape, axes, False)
    x = T.tensor4("x")
    syms = [T.TensorType("float64", shape=(None,) * len(pshape))(n) for n in "gbmv"]
    out = bn.batch_normalization_test(x, *syms, axes=axes_arg, epsilon=1e-4)
    xv = rng.standard_normal(shape)
    gv, bv, mv = (rng.standard_normal(pshape) for _ in range(3))
    vv = rng.uniform(0.5, 2, pshape)
    got = graphc.function([x] + syms, out)(xv, gv, bv, mv, vv)
    e = lambda p: expand(p, shape, axes)  # noqa: E731
    want = (xv - e(mv)) * (e(gv) / np.sqrt(e(vv) + 1e-4)) + e(bv)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("axes_arg,axes", AXES[:3], ids=str)
def test_train_gradients(axes_arg, axes, rng):
    shape = (3, 2, 3, 2)
    pshape = param_shape(shape, axes, False)
    xv = rng.standard_normal(shape)
    gv, bv = rng.standard_normal(pshape), rng.standard_normal(pshape)

    def out(x, g, b):
        return bn.batch_normalization_train(x, g, b, axes_arg)[0]

    def stats(x, g, b):  # a cost that also goes through the returned mean and invstd
        o, mean, invstd = bn.batch_normalization_train(x, g, b, axes_arg)
        return T.sum(o) * 0.1 + T.sum(T.sqr(mean)) + T.sum(invstd * g)

    verify_grad(out, [xv, gv, bv], rng=np.random.default_rng(0), n_tests=1)
    verify_grad(stats, [xv, gv, bv], rng=np.random.default_rng(1), n_tests=1)


def test_test_mode_gradients(rng):
    xv = rng.standard_normal((4, 3))
    g, b, m = (rng.standard_normal(3) for _ in range(3))
    v = rng.uniform(0.5, 2, 3)
    verify_grad(lambda *a: bn.batch_normalization_test(*a), [xv, g, b, m, v],
                rng=np.random.default_rng(0), n_tests=1)


def test_large_mean_is_accurate():
    """Two-pass variance: a 1e6 offset does not destroy the unit-scale signal (float64)."""
    x = T.matrix("x")
    out, mean, invstd = bn.batch_normalization_train(x, T.ones((3,)), T.zeros((3,)))
    xv = np.random.default_rng(0).standard_normal((64, 3)) + 1e6
    o, m, s = graphc.function([x], [out, mean, invstd])(xv)
    np.testing.assert_allclose(o.std(axis=0), 1 / np.sqrt(1 + 1e-4 * s ** 2), rtol=1e-6)
    np.testing.assert_allclose(1 / s ** 2 - 1e-4, (xv - xv.mean(0)).var(axis=0), rtol=1e-7)


def test_float32_stays_float32(rng):
    x = T.matrix("x", dtype="float32")
    g, b = T.vector("g", dtype="float32"), T.vector("b", dtype="float32")
    rm, rv = T.vector("rm", dtype="float32"), T.vector("rv", dtype="float32")
    outs = bn.batch_normalization_train(x, g, b, running_mean=rm, running_var=rv)
    assert all(o.dtype == "float32" for o in outs)
    assert bn.batch_normalization_test(x, g, b, rm, rv).dtype == "float32"


def test_old_batch_normalization(rng):
    x, g, b, m, s = T.matrix("x"), T.vector("g"), T.vector("b"), T.vector("m"), T.vector("s")
    vals = [rng.standard_normal((4, 3))] + [rng.standard_normal(3) for _ in range(3)] + \
        [rng.uniform(0.5, 2, 3)]
    want = (vals[0] - vals[3]) * (vals[1] / vals[4]) + vals[2]
    for mode in ("low_mem", "high_mem"):
        f = graphc.function([x, g, b, m, s], bn.batch_normalization(x, g, b, m, s, mode=mode))
        np.testing.assert_allclose(f(*vals), want, rtol=1e-12)
    with pytest.raises(ValueError, match="low_mem"):
        bn.batch_normalization(x, g, b, m, s, mode="fast")


def test_errors():
    x, v = T.tensor4("x"), T.vector("v")
    with pytest.raises(ValueError, match="axes"):
        bn.batch_normalization_train(x, v, v, axes="channels")
    with pytest.raises(ValueError, match="less than ndim"):
        bn.batch_normalization_train(x, v, v, axes=(0, 4))
    with pytest.raises(ValueError, match="gamma"):
        bn.batch_normalization_train(x, T.matrix(), v)
    with pytest.raises(ValueError, match="both"):
        bn.batch_normalization_train(x, T.tensor3(), T.tensor3(), running_mean=T.tensor3())
    with pytest.raises(ValueError, match="epsilon"):
        bn.batch_normalization_train(x, T.tensor3(), T.tensor3(), epsilon=1e-6)
    assert T.nnet.bn is bn
