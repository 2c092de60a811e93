"""canonicalize: structural before/after tests of each rule family, values unchanged."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.printing import Print
from graphc.tensor.basic import Reshape, Shape
from graphc.tensor.elemwise import CAReduce, DimShuffle

from helpers import FAST, assert_same, compile_both, count, elemwise_names, ops

CANON = FAST.excluding("stabilize", "specialize", "fusion", "inplace")


def nodes(f):
    return f.maker.fgraph.toposort()


def test_identities_disappear():
    x = T.dmatrix("x")
    cases = [x * 1, 1 * x, x + 0, 0 + x, x - 0, x / 1, -(-x), T.exp(T.log(x)), T.log(T.exp(x)),
             x.T.T, x ** 1, T.tensor_copy(x)]
    for y in cases:
        f = theano.function([x], y, mode=CANON)
        assert f.maker.fgraph.outputs[0] is f.maker.fgraph.inputs[0], theano.pp(y)
        v = np.random.default_rng(0).random((2, 3)) + 0.5
        np.testing.assert_allclose(f(v), v)


def test_x_minus_x_is_zeros_of_the_right_shape_and_dtype():
    x = T.fmatrix("x")
    f = theano.function([x], x - x, mode=CANON)
    assert "sub" not in elemwise_names(f)
    r = f(np.ones((2, 3), dtype="float32"))
    assert r.shape == (2, 3) and r.dtype == np.float32 and not r.any()


def test_identity_that_would_shrink_the_output_is_declined():
    row = T.TensorType("float64", shape=(1, None))("row")
    ones = T.ones((3, 4))
    f = theano.function([row], row * ones, mode=CANON)
    assert f(np.ones((1, 4))).shape == (3, 4)


def test_common_subexpressions_are_computed_once():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    a = T.tanh(x * y + 2)
    b = T.tanh(x * y + 2)                  # built twice by the user
    f = theano.function([x, y], [a + b, a * b], mode=CANON)
    assert elemwise_names(f).count("tanh") == 1
    assert elemwise_names(f).count("mul") == 2  # x*y once, a*b once


def test_constant_folding_and_print_is_not_folded(capsys):
    x = T.dvector("x")
    c = T.constant(np.arange(3.0))
    f = theano.function([x], x + T.exp(c) * 2, mode=CANON)
    assert "exp" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.zeros(3)), np.exp(np.arange(3.0)) * 2)
    p = Print("hello")(c)
    g = theano.function([x], x + p, mode=CANON)
    assert any(isinstance(op, Print) for op in ops(g))
    g(np.zeros(3))
    assert "hello" in capsys.readouterr().out


def test_constant_folding_does_not_blow_up_allocations():
    x = T.dmatrix("x")
    big = T.zeros((1000, 1000))
    f = theano.function([x], x + big.sum(), mode=CANON)
    assert max(np.size(v.data) for v in f.maker.fgraph.variables if hasattr(v, "data")) < 10 ** 6


def test_shape_of_intermediates_becomes_shape_of_inputs():
    x, w = T.dmatrix("x"), T.dmatrix("w")
    h = T.tanh(T.dot(x, w) + 1)
    f = theano.function([x, w], [h.shape[0] * h.shape[1]], mode=CANON)
    # no op computes h any more: only shapes of x and w are read
    assert not any(isinstance(op, DimShuffle) or type(op).__name__ == "Dot" for op in ops(f))
    shaped = {n.inputs[0].name for n in nodes(f) if isinstance(n.op, Shape)}
    assert shaped == {"x", "w"}
    assert f(np.ones((3, 4)), np.ones((4, 5)))[0] == 15


def test_static_sizes_become_constants():
    x = T.TensorType("float64", shape=(3, None))("x")
    y = T.exp(x)
    f = theano.function([x], T.cast(y.shape[0], "float64") * y, mode=CANON)
    assert not any(isinstance(op, Shape) for op in ops(f))
    np.testing.assert_allclose(f(np.zeros((3, 2))), 3 * np.ones((3, 2)))


def test_ops_without_infer_shape_keep_shape_of_their_output():
    from graphc.graph.basic import Apply, Op

    class NoShape(Op):
        def make_node(self, x):
            return Apply(self, [x], [x.type()])

        def perform(self, node, inputs, out):
            out[0][0] = inputs[0] * 2

    x = T.dvector("x")
    y = NoShape()(x)
    f = theano.function([x], y.shape[0], mode=CANON)
    assert any(isinstance(n.op, Shape) and isinstance(n.inputs[0].owner.op, NoShape)
               for n in nodes(f))
    assert f(np.ones(4)) == 4


def test_reshape_of_reshape_and_reshape_to_own_shape():
    x = T.dmatrix("x")
    y = x.reshape((6,)).reshape((3, 2))
    f = theano.function([x], y, mode=CANON)
    assert count(f, Reshape) == 1
    np.testing.assert_allclose(f(np.arange(6.0).reshape(2, 3)), np.arange(6.0).reshape(3, 2))
    e = T.exp(x)
    g = theano.function([x], e.reshape(e.shape, ndim=2), mode=CANON)
    assert count(g, Reshape) == 0


def test_dimshuffles_merge_and_lift_through_elementwise():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    f = theano.function([x, y], (x.T + y.T).T, mode=CANON)
    assert count(f, DimShuffle) == 0
    v = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(f(v, v), 2 * v)


def test_sum_over_broadcast_dims_is_dropped():
    b = T.dvector("b")
    y = T.sum(b.dimshuffle("x", 0), axis=0)
    f = theano.function([b], y, mode=CANON)
    assert count(f, CAReduce) == 0 and count(f, DimShuffle) == 0


def test_fills_sink_and_cut():
    x, z = T.dvector("x"), T.dvector("z")
    y = T.exp(T.zeros_like(x) + 1.0) * z       # second(x, 0) feeds an elemwise with z
    f = theano.function([x, z], y, mode=CANON)
    assert "second" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.ones(3), np.arange(3.0)), np.e * np.arange(3.0))


def test_switch_on_constant_condition():
    x, y = T.dvector("x"), T.dvector("y")
    f = theano.function([x, y], T.switch(1, x, y) + T.switch(0, x, y), mode=CANON)
    assert "switch" not in elemwise_names(f)


def test_canonical_graphs_compute_the_same_values():
    x, y = T.dmatrix("x"), T.dvector("y")
    out = [(x * 1 + 0).T.T - x * (-1), T.exp(T.log(x + 2)) / 1, (x + y).sum(axis=0) + x.shape[0]]
    f, g = compile_both([x, y], out)
    rng = np.random.default_rng(0)
    assert_same(f, g, rng.random((3, 4)), rng.random(4))


def test_random_draws_are_neither_merged_nor_folded():
    from graphc.tensor.shared_randomstreams import RandomStreams
    srng = RandomStreams(seed=3)
    a, b = srng.uniform((4,)), srng.uniform((4,))
    f = theano.function([], [a, b], mode=FAST)
    u, v = f()
    assert not np.allclose(u, v)
    assert not np.allclose(f()[0], u)      # the stream advances between calls


def test_folded_constants_keep_the_type_they_replace():
    from graphc.tensor.elemwise import ShapeError
    x = T.dvector("x")
    c = T.unbroadcast(T.constant(np.array([2.0])), 0)    # (1,) but typed as (?)
    f = theano.function([x], x * T.exp(c), mode=CANON)
    assert "exp" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.ones(1)), [np.exp(2.0)])
    with pytest.raises(ShapeError):         # not broadcastable, as without the optimizer
        f(np.ones(3))
    g = theano.function([x], x * T.exp(c), mode=FAST)
    with pytest.raises(ShapeError):
        g(np.ones(3))
