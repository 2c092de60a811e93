"""specialize: dot/scale/add -> gemm, gemv, ger; transposes as BLAS flags; powers; the
softmax cross-entropy and its gradient as one op."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.tensor.blas import Gemm, Gemv, Ger
from graphc.tensor.elemwise import DimShuffle
from graphc.tensor.math import Dot
from graphc.tensor.nnet.xent import (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                     SoftmaxCrossentropyWithGrad)

from helpers import FAST, REF, assert_same, compile_both, count, elemwise_names

SPEC = FAST.excluding("fusion", "inplace")


def gemm_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Gemm)]


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_transposes_become_gemm_flags(ta, tb):
    a, b = T.dmatrix("a"), T.dmatrix("b")
    y = T.dot(a.T if ta else a, b.T if tb else b)
    f, g = compile_both([a, b], y)
    (node,) = gemm_nodes(f)
    assert (node.op.trans_a, node.op.trans_b) == (ta, tb) and not node.op.has_z
    assert count(f, DimShuffle) == 0 and count(f, Dot) == 0
    rng = np.random.default_rng(0)
    assert_same(f, g, rng.random((3, 3)), rng.random((3, 3)))


def test_sgd_update_is_one_gemm_with_scale_and_z():
    x, d = T.dmatrix("x"), T.dmatrix("d")
    w = theano.shared(np.ones((4, 3)), name="w")
    f = theano.function([x, d], [], updates=[(w, w - 0.1 * T.dot(x.T, d))], mode=SPEC)
    (node,) = gemm_nodes(f)
    assert node.op.has_z and node.op.trans_a and node.inputs[3] is f.maker.fgraph.inputs[2]
    assert float(node.inputs[2].data) == -0.1 and float(node.inputs[4].data) == 1.0
    assert elemwise_names(f) == []
    rng = np.random.default_rng(0)
    xv, dv = rng.random((5, 4)), rng.random((5, 3))
    f(xv, dv)
    np.testing.assert_allclose(w.get_value(), np.ones((4, 3)) - 0.1 * xv.T @ dv)


def test_gemm_z_forms():
    a, b, z = T.dmatrix("a"), T.dmatrix("b"), T.dmatrix("z")
    s = T.dscalar("s")
    rng = np.random.default_rng(1)
    args = rng.random((3, 3)), rng.random((3, 3)), rng.random((3, 3)), 0.7
    for expr in [z + T.dot(a, b), T.dot(a, b) + z, z - T.dot(a, b), T.dot(a, b) - z,
                 z - s * T.dot(a, b), s * T.dot(a, b) + z]:
        f, g = compile_both([a, b, z, s], expr, on_unused_input="ignore")
        f = theano.function([a, b, z, s], expr, mode=SPEC, on_unused_input="ignore")
        assert len(gemm_nodes(f)) == 1, theano.pp(expr)
        # at most scalar arithmetic on the scale factors is left
        assert all(n.outputs[0].ndim == 0 for n in f.maker.fgraph.toposort()
                   if not isinstance(n.op, Gemm)), theano.pp(expr)
        assert_same(f, g, *args)


def test_bias_row_stays_for_fusion():
    x, w, b = T.dmatrix("x"), T.dmatrix("w"), T.dvector("b")
    f = theano.function([x, w, b], T.dot(x, w) + b, mode=SPEC)
    (node,) = gemm_nodes(f)
    assert not node.op.has_z and "add" in elemwise_names(f)


def test_gemv_forms():
    m, v, u = T.dmatrix("m"), T.dvector("v"), T.dvector("u")
    rng = np.random.default_rng(2)
    args = rng.random((3, 3)), rng.random(3), rng.random(3)
    for expr, trans in [(T.dot(m, v), False), (T.dot(m.T, v), True), (T.dot(v, m), True),
                        (u + T.dot(m, v), False), (u - 2.0 * T.dot(v, m), True)]:
        f, g = compile_both([m, v, u], expr, on_unused_input="ignore")
        f = theano.function([m, v, u], expr, mode=SPEC, on_unused_input="ignore")
        (node,) = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Gemv)]
        assert node.op.trans == trans and elemwise_names(f) == []
        assert_same(f, g, *args)


def test_outer_product_update_is_ger():
    z, a, b = T.dmatrix("z"), T.dvector("a"), T.dvector("b")
    rng = np.random.default_rng(3)
    args = rng.random((3, 4)), rng.random(3), rng.random(4)
    for expr in [z + T.outer(a, b), z - 0.5 * T.outer(a, b)]:
        f, g = compile_both([z, a, b], expr)
        f = theano.function([z, a, b], expr, mode=SPEC)
        assert count(f, Ger) == 1 and elemwise_names(f) == []
        assert_same(f, g, *args)


def test_int_and_mixed_dtype_dots_are_left_alone():
    a, b = T.lmatrix("a"), T.lmatrix("b")
    f = theano.function([a, b], T.dot(a, b), mode=SPEC)
    assert count(f, Dot) == 1
    c, d = T.fmatrix("c"), T.dmatrix("d")
    g = theano.function([c, d], T.dot(c, d), mode=SPEC)
    assert count(g, Dot) == 1


def test_powers_and_squares():
    x = T.dvector("x")
    f = theano.function([x], [x * x, x ** 2, x ** 0.5, 1 / x], mode=SPEC)
    names = elemwise_names(f)
    assert names.count("sqr") == 1 and "sqrt" in names and "reciprocal" in names
    assert "pow" not in names and "mul" not in names
    np.testing.assert_allclose(f(np.array([4.0]))[2], [2.0])


def test_gemm_shape_errors_name_the_op():
    a, b = T.dmatrix("a"), T.dmatrix("b")
    f = theano.function([a, b], T.dot(a, b), mode=SPEC)
    with pytest.raises(ValueError, match="Gemm.*inner dimensions"):
        f(np.ones((2, 3)), np.ones((4, 2)))


# --------------------------------------------------------------------------- xent with grad
def xent_nodes(f):
    return [count(f, c) for c in (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                  SoftmaxCrossentropyWithGrad)]


def xent_args(dtype="float64", n=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return (4 * rng.standard_normal((n, k))).astype(dtype), rng.integers(0, k, n).astype("int32")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_xent_and_its_gradient_become_one_op(dtype, reduce):
    z, y = T.matrix("z", dtype=dtype), T.ivector("y")
    nll = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y)
    cost = nll.mean() if reduce == "mean" else nll.sum()
    f, g = compile_both([z, y], [cost, theano.grad(cost, z)])
    assert xent_nodes(f) == [0, 0, 1]
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    assert_same(f, g, *xent_args(dtype), rtol=tol, atol=tol)


def test_xent_with_bias_and_its_gradients_become_one_op():
    x, y = T.dmatrix("x"), T.ivector("y")
    w = theano.shared(np.linspace(-1, 1, 12).reshape(3, 4), name="w")
    b = theano.shared(np.arange(4.0), name="b")
    cost = T.nnet.categorical_crossentropy(T.nnet.softmax(T.dot(x, w) + b), y).mean()
    f, g = compile_both([x, y], [cost] + theano.grad(cost, [w, b]))
    (node,) = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, SoftmaxCrossentropyWithGrad)]
    assert node.op.has_bias and xent_nodes(f) == [0, 0, 1]
    rng = np.random.default_rng(1)
    assert_same(f, g, rng.random((6, 3)), rng.integers(0, 4, 6).astype("int32"))


def test_xent_gradient_alone_becomes_one_op():
    z, y = T.dmatrix("z"), T.ivector("y")
    cost = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean()
    f, g = compile_both([z, y], theano.grad(cost, z))
    assert xent_nodes(f) == [0, 0, 1]
    assert_same(f, g, *xent_args())


def test_xent_pairing_declines_when_the_softmax_or_the_nll_is_needed():
    z, y = T.dmatrix("z"), T.ivector("y")
    sm = T.nnet.softmax(z)
    nll = T.nnet.categorical_crossentropy(sm, y)
    # the loss alone: no gradient to pair with
    f, g = compile_both([z, y], nll.mean())
    assert xent_nodes(f) == [1, 0, 0]
    assert_same(f, g, *xent_args())
    # the softmax is an output too: the op keeps producing it
    cost = nll.mean()
    f, g = compile_both([z, y], [cost, theano.grad(cost, z), sm])
    assert xent_nodes(f) == [1, 1, 0]
    assert_same(f, g, *xent_args())
    # the gradient of sum(nll^2) scales each row by its nll: dnll needs the forward first
    cost = (nll ** 2).sum()
    f, g = compile_both([z, y], [cost, theano.grad(cost, z)])
    assert xent_nodes(f) == [1, 1, 0]
    assert_same(f, g, *xent_args())


def test_xent_pairing_keeps_the_fused_graph_acyclic():
    """After fusion too (the mean's 1/n and the gradient's 1/n share a Fused node in the
    unpaired graph; paired, the gradient reads its 1/n before the sum exists)."""
    z, y = T.fmatrix("z"), T.ivector("y")
    cost = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean()
    mode = theano.Mode(linker="py", optimizer="fast_run", check=True)
    f = theano.function([z, y], [cost, theano.grad(cost, z)], mode=mode)
    g = theano.function([z, y], [cost, theano.grad(cost, z)], mode=REF)
    assert xent_nodes(f) == [0, 0, 1]
    assert_same(f, g, *xent_args("float32"), rtol=1e-5, atol=1e-6)
