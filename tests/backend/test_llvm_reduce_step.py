"""The native linker's step for a standalone sum (graphc/link/llvm_reduce.py): the layouts
numpy reduces slowly run the fused kernel, the rest keep numpy's perform."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.tensor.elemwise import CAReduce


@pytest.fixture
def performs(monkeypatch):
    """The shapes CAReduce.perform was called on."""
    seen = []
    orig = CAReduce.perform

    def perform(self, node, inputs, out):
        seen.append(np.shape(inputs[0]))
        orig(self, node, inputs, out)
    monkeypatch.setattr(CAReduce, "perform", perform)
    return seen


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_bias_sum_runs_natively(dtype, performs):
    x = T.TensorType(dtype, shape=(None,) * 4)("x")
    f = theano.function([x], T.sum(x, axis=(0, 2, 3)))
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for shape in [(8, 5, 4, 6), (3, 7, 5, 5), (8, 5, 4, 6)]:   # new shapes, then the first
        v = rng.normal(size=shape).astype(dtype)
        for arg in (v, v[:, :, ::-1, 1:], np.asfortranarray(v)):
            np.testing.assert_allclose(f(arg), arg.astype(np.float64).sum(axis=(0, 2, 3)),
                                       rtol=tol, atol=tol)
    assert performs == []


def test_other_sums_keep_numpy(performs):
    x, m = T.dtensor3("x"), T.dmatrix("m")
    i = T.ltensor3("i")
    cases = [(x, (0, 1)), (x, (1, 2)), (m, (0,)), (i, (0, 2))]     # columns, rows, ints
    rng = np.random.default_rng(1)
    for var, axes in cases:
        f = theano.function([var], T.sum(var, axis=axes))
        v = rng.integers(-9, 9, (4, 5, 6)) if var is i else rng.normal(size=(4, 5, 6)[:var.ndim])
        np.testing.assert_allclose(f(v), v.sum(axis=axes))
    assert len(performs) == len(cases)


def test_short_rows_are_summed_in_order(performs):
    """1e30 - 1e30 + 0.5 along a row of 4: numpy's order keeps the 0.5."""
    x = T.ftensor3("x")
    f = theano.function([x], T.sum(x, axis=(0, 2)))
    v = np.resize(np.asarray([0, -0.0, 1, -1, 1e30, -1e30, 0.5, 1e-30], np.float32), (2, 3, 4))
    np.testing.assert_array_equal(f(v), np.sum(v, axis=(0, 2)))
    assert performs == [(2, 3, 4)]


def test_bad_input_still_gets_the_ops_error():
    x = T.ftensor4("x")
    f = theano.function([x], T.sum(x, axis=(0, 2, 3)))
    with pytest.raises(TypeError):
        f(np.zeros((2, 3, 4, 5)))                   # float64 for a float32 input
    with pytest.raises(Exception):
        f(np.zeros((2, 3, 4), np.float32))          # wrong rank
