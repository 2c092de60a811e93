"""Reductions against numpy (sum, mean, prod, max, min, argmax, argmin, var, std, any, all,
logsumexp) over axis None / int / negative / tuple, with and without keepdims."""
import numpy as np
import pytest
import scipy.special

import graphc
import graphc.tensor as T
from op_table import (EDGE_FLOAT, F_AND_I, FLOATS, INTS, MODE_IDS, MODES, Arg, Case,
                      case_tests)

A = (2, 3, 4)
AXES = [None, 0, 1, -1, (0, 2), (0, 1, 2)]


def _ax_id(axis):
    return "all" if axis is None else str(axis).replace(" ", "")


def reductions(name, t_fn, np_fn, kind="any", dtypes=F_AND_I, grad=True, axes=AXES,
               edge=None, **kw):
    """One record per (function, axis, keepdims)."""
    out = []
    for axis in axes:
        for keep in (False, True):
            if keep and axis not in (None, 1, (0, 2)):
                continue
            out.append(Case(
                f"{name}_{_ax_id(axis)}{'_keep' if keep else ''}",
                lambda x, axis=axis, keep=keep: t_fn(x, axis=axis, keepdims=keep),
                lambda x, axis=axis, keep=keep: np_fn(x, axis=axis, keepdims=keep),
                [Arg(A, kind)], dtypes=dtypes, grad=grad, edge=edge, **kw))
    return out


# edge values laid out as a 2x3x4 block (as columns of one input)
EDGE_BLOCK = [np.resize(np.asarray(EDGE_FLOAT), A).tolist()]
FINITE_EDGE = [np.resize(np.asarray([0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 0.5, 1e-30]), A).tolist()]


TABLE = (
    reductions("sum", T.sum, np.sum, edge=EDGE_BLOCK, rtol=1e-5)
    + reductions("prod", T.prod, np.prod, "nonzero", rtol=1e-5)
    + reductions("max", T.max, np.max, "distinct", edge=EDGE_BLOCK)
    + reductions("min", T.min, np.min, "distinct", edge=EDGE_BLOCK)
    + reductions("mean", T.mean, np.mean, edge=FINITE_EDGE, rtol=1e-5)
    + reductions("var", T.var, np.var, dtypes=FLOATS, rtol=1e-5)
    + reductions("std", T.std, np.std, "distinct", dtypes=FLOATS, rtol=1e-5)
    + reductions("any", T.any, np.any, dtypes=INTS + ("bool", "float64"),
                 grad=False, edge=EDGE_BLOCK)
    + reductions("all", T.all, np.all, dtypes=INTS + ("bool", "float64"),
                 grad=False, edge=EDGE_BLOCK)
    + reductions("logsumexp", T.logsumexp, scipy.special.logsumexp, dtypes=FLOATS,
                 axes=[None, 1, (0, 2)], edge=FINITE_EDGE)
    + [Case(f"{name}_{_ax_id(axis)}{'_keep' if keep else ''}",
            lambda x, f=f, axis=axis, keep=keep: f(x, axis=axis, keepdims=keep),
            lambda x, g=g, axis=axis, keep=keep: np.asarray(g(x, axis=axis, keepdims=keep)),
            [Arg(A, "distinct")], dtypes=F_AND_I, grad=False, edge=EDGE_BLOCK)
       for name, f, g in (("argmax", T.argmax, np.argmax), ("argmin", T.argmin, np.argmin))
       for axis in (None, 0, 1, -1) for keep in (False, True)]
    + [
        Case("prod_with_zeros", lambda x: T.prod(x, axis=1),
             lambda x: np.prod(x, axis=1), [Arg((4, 3), "idx:2")], dtypes=("float64",),
             grad=False),
        Case("sum_method", lambda x: x.sum(axis=0), lambda x: x.sum(axis=0), [Arg(A)]),
        Case("mean_method", lambda x: x.mean(), lambda x: x.mean(), [Arg(A)]),
        Case("max_method", lambda x: x.max(axis=-1), lambda x: x.max(axis=-1),
             [Arg(A, "distinct")]),
        Case("norm_l2", lambda x: x.norm(2, axis=1), lambda x: np.linalg.norm(x, axis=1),
             [Arg((3, 4), "nonzero")]),
        Case("norm_l1", lambda x: x.norm(1), lambda x: np.abs(x).sum(),
             [Arg((3, 4), "nonzero")]),
        Case("sum_dtype", lambda x: T.sum(x, dtype="float32"),
             lambda x: np.sum(x, dtype="float32"), [Arg(A)], dtypes=("int32", "float64"),
             grad=False, check_dtype=False, rtol=1e-5),
        Case("sum_of_row", lambda x: T.sum(x, axis=0), lambda x: np.sum(x, axis=0),
             [Arg((1, 5))]),
        Case("var_corrected", lambda x: T.var(x, axis=0, corrected=True),
             lambda x: np.var(x, axis=0, ddof=1), [Arg((5, 3))]),
        Case("std_ddof", lambda x: T.std(x, ddof=1), lambda x: np.std(x, ddof=1), [Arg((5, 3))]),
    ]
)

case_tests(TABLE, globals())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_reduction_output_dtypes(mode):
    """Theano's accumulator rules: small ints sum in int64, bool reductions stay bool."""
    for dt, want in (("int8", "int64"), ("int32", "int64"), ("uint8", "uint64"),
                     ("bool", "int64"), ("float32", "float32"), ("int64", "int64")):
        x = T.TensorType(dt, shape=(None,))()
        assert T.sum(x).dtype == want, dt
        assert T.prod(x).dtype == want, dt
        assert T.max(x).dtype == dt
        assert T.any(x).dtype == "bool" and T.all(x).dtype == "bool"
        assert T.argmax(x).dtype == "int64"
    assert T.mean(T.ivector()).dtype == "float64"
    assert T.mean(T.bvector()).dtype == graphc.config.floatX
    assert T.mean(T.fvector()).dtype == "float32"
    x = T.bvector()
    f = graphc.function([x], [T.sum(x), T.mean(x)], mode=mode)
    s, m = f(np.full(300, 100, dtype="int8"))
    assert s == 30000 and s.dtype == np.int64        # no int8 overflow
    np.testing.assert_allclose(m, 100.0)


def test_reduction_axis_errors():
    x = T.matrix()
    with pytest.raises(ValueError, match="out of range"):
        T.sum(x, axis=2)
    with pytest.raises(ValueError, match="out of range"):
        T.max(x, axis=-3)
    with pytest.raises(ValueError, match="several axes"):
        T.argmax(T.tensor3(), axis=(0, 1))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_max_of_empty_raises(mode):
    x = T.matrix("x")
    f = graphc.function([x], T.max(x, axis=0), mode=mode)
    with pytest.raises(ValueError, match="max|identity|zero-size"):
        f(np.zeros((0, 3)))
    g = graphc.function([x], T.sum(x, axis=0), mode=mode)
    np.testing.assert_array_equal(g(np.zeros((0, 3))), np.zeros(3))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_prod_grad_with_zeros(mode):
    """prod's gradient is exact where the input has zeros (one zero or several)."""
    x = T.dmatrix("x")
    g = graphc.grad(T.sum(T.prod(x, axis=1)), x)
    f = graphc.function([x], g, mode=mode)
    xv = np.array([[2.0, 3.0, 4.0], [0.0, 3.0, 4.0], [0.0, 0.0, 5.0]])
    expected = np.array([[12.0, 8.0, 6.0], [12.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(f(xv), expected)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_max_grad_goes_to_the_max(mode):
    x = T.dmatrix("x")
    f = graphc.function([x], graphc.grad(T.sum(T.max(x, axis=1)), x), mode=mode)
    xv = np.array([[1.0, 5.0, 2.0], [7.0, -1.0, 0.0]])
    np.testing.assert_allclose(f(xv), [[0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_logsumexp_is_stable(mode):
    x = T.dvector("x")
    f = graphc.function([x], T.logsumexp(x), mode=mode)
    np.testing.assert_allclose(f(np.array([1000.0, 1000.0])), 1000 + np.log(2))
    assert f(np.array([-np.inf, -np.inf])) == -np.inf
