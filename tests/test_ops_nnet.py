"""T.nnet against numpy: sigmoid family, softplus, softmax / log_softmax (any axis, large
inputs), relu & co., categorical / binary cross-entropies, one-hot."""
import numpy as np
import pytest
import scipy.special

import graphc
import graphc.tensor as T
from op_table import FLOATS, MODE_IDS, MODES, Arg, Case, case_tests

NN = T.nnet
M = (4, 5)
LABELS = Arg((4,), "idx:5", "int64")
SOFT_EDGE = [[0.0, 1e3, -1e3, 3.0, -np.inf] * 4]     # one row per softmax row (4x5)


def _softmax(x, axis=-1):
    return scipy.special.softmax(x, axis=axis)


def _log_softmax(x, axis=-1):
    return scipy.special.log_softmax(x, axis=axis)


def _rows(flat):
    return [np.asarray(flat[0]).reshape(M).tolist()]


def _cce(p, y):
    return -np.log(p[np.arange(len(y)), y])


def _bce(o, t):
    return -(t * np.log(o) + (1 - t) * np.log(1 - o))


TABLE = [
    Case("sigmoid", NN.sigmoid, scipy.special.expit, [Arg(M)],
         edge=[[0.0, 1e3, -1e3, 40.0, -40.0, np.inf, -np.inf, np.nan]]),
    Case("ultra_fast_sigmoid", NN.ultra_fast_sigmoid, scipy.special.expit, [Arg(M)], rtol=1e-2),
    Case("hard_sigmoid", NN.hard_sigmoid, lambda x: np.clip(0.2 * x + 0.5, 0, 1),
         [Arg(M, "small")]),
    Case("softplus", NN.softplus, lambda x: np.logaddexp(0, x), [Arg(M)],
         edge=[[0.0, 1e3, -1e3, 40.0, -40.0, np.inf, -np.inf]]),
    Case("softmax", NN.softmax, _softmax, [Arg(M)], edge=_rows(SOFT_EDGE)),
    Case("softmax_axis0", lambda x: NN.softmax(x, axis=0), lambda x: _softmax(x, 0), [Arg(M)]),
    Case("softmax_vector", NN.softmax, _softmax, [Arg((5,))]),
    Case("softmax_3d", NN.softmax, _softmax, [Arg((2, 3, 4))]),
    Case("softmax_graph", NN.softmax_graph, _softmax, [Arg(M)]),
    Case("softmax_with_bias", NN.softmax_with_bias, lambda x, b: _softmax(x + b),
         [Arg(M), Arg((5,))], bcast=[[(4, 5), (1, 5)]]),
    Case("log_softmax", NN.log_softmax, _log_softmax, [Arg(M)], edge=_rows(SOFT_EDGE)),
    Case("logsoftmax_axis0", lambda x: NN.logsoftmax(x, axis=0), lambda x: _log_softmax(x, 0),
         [Arg(M)]),
    Case("relu", NN.relu, lambda x: np.maximum(x, 0), [Arg(M, "nonzero")],
         dtypes=FLOATS + ("int32",), edge=[[0.0, -0.0, 1.0, -1.0, np.inf, -np.inf]]),
    Case("leaky_relu", lambda x: NN.relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
         [Arg(M, "nonzero")]),
    Case("elu", NN.elu, lambda x: np.where(x > 0, x, np.expm1(x)), [Arg(M, "nonzero")]),
    Case("selu", NN.selu, lambda x: 1.0507009873554805 * np.where(
        x > 0, x, 1.6732632423543772 * np.expm1(x)), [Arg(M, "nonzero")]),
    Case("softsign", NN.softsign, lambda x: x / (1 + np.abs(x)), [Arg(M, "nonzero")]),
    Case("cce_int_labels", NN.categorical_crossentropy, _cce, [Arg(M, "prob"), LABELS]),
    Case("cce_of_softmax", lambda x, y: NN.categorical_crossentropy(NN.softmax(x), y),
         lambda x, y: _cce(_softmax(x), y), [Arg(M), LABELS]),
    Case("cce_dense_targets", NN.categorical_crossentropy,
         lambda p, t: -np.sum(t * np.log(p), axis=1), [Arg(M, "prob"), Arg(M, "prob")]),
    Case("cce_1hot", NN.crossentropy_categorical_1hot, _cce, [Arg(M, "prob"), LABELS]),
    Case("nll_tutorial", lambda x, y: -T.mean(T.log(NN.softmax(x))[T.arange(y.shape[0]), y]),
         lambda x, y: np.mean(_cce(_softmax(x), y)), [Arg(M), LABELS]),
    Case("binary_crossentropy", NN.binary_crossentropy, _bce, [Arg(M, "prob"), Arg(M, "prob")],
         bcast=[[(4, 5), (1, 5)]]),
    Case("sigmoid_bce", NN.sigmoid_binary_crossentropy,
         lambda x, t: _bce(scipy.special.expit(x), t), [Arg(M), Arg(M, "prob")]),
    Case("to_one_hot", lambda y: T.extra_ops.to_one_hot(y, 5),
         lambda y: np.eye(5)[y], [LABELS], dtypes=("float64",), grad=False, check_dtype=False),
]

case_tests(TABLE, globals())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_softmax_rows_sum_to_one_for_large_inputs(mode):
    x = T.fmatrix("x")
    f = graphc.function([x], [NN.softmax(x), NN.log_softmax(x)], mode=mode)
    xv = np.array([[1e4, -1e4, 0.0], [88.0, 89.0, 90.0]], "float32")
    sm, lsm = f(xv)
    assert sm.dtype == np.float32 and np.all(np.isfinite(lsm))
    np.testing.assert_allclose(sm.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(lsm, _log_softmax(xv.astype("float64")), rtol=1e-5)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_softmax_gradient_of_nll_is_p_minus_onehot(mode):
    x = T.dmatrix("x")
    y = T.lvector("y")
    cost = T.sum(NN.categorical_crossentropy(NN.softmax(x), y))
    f = graphc.function([x, y], graphc.grad(cost, x), mode=mode)
    xv = np.random.default_rng(0).normal(size=(3, 4))
    yv = np.array([0, 3, 1])
    np.testing.assert_allclose(f(xv, yv), _softmax(xv) - np.eye(4)[yv], atol=1e-12)


def test_categorical_crossentropy_rejects_bad_targets():
    with pytest.raises(TypeError, match="categorical_crossentropy"):
        NN.categorical_crossentropy(T.matrix(), T.vector())
    with pytest.raises(TypeError, match="at least 1"):
        NN.softmax(T.scalar())
