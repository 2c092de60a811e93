"""inplace and the destroy handler: dead buffers are reused, live ones never clobbered."""
import numpy as np

import graphc as theano
import graphc.tensor as T
from graphc.graph.basic import Apply, Op
from graphc.tensor.blas import Gemm
from graphc.tensor.fused import Fused
from graphc.tensor.subtensor import IncSubtensor

from helpers import FAST, REF, assert_same, compile_both


def destroyers(f):
    return [n for n in f.maker.fgraph.toposort() if getattr(n.op, "destroy_map", None)]


def test_dead_intermediate_is_overwritten():
    x, w, b = T.dmatrix("x"), T.dmatrix("w"), T.dvector("b")
    f, g = compile_both([x, w, b], T.tanh(T.dot(x, w) + b))
    (d,) = destroyers(f)
    assert isinstance(d.op, Fused) and isinstance(d.inputs[d.op.destroy[0][1]].owner.op, Gemm)
    rng = np.random.default_rng(0)
    assert_same(f, g, rng.random((3, 4)), rng.random((4, 5)), rng.random(5))


def test_inputs_are_never_clobbered():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    f = theano.function([x, y], T.exp(x) * y + x, mode=FAST)
    assert destroyers(f) == []
    xv, yv = np.ones((2, 2)), np.full((2, 2), 2.0)
    f(xv, yv)
    assert (xv == 1).all() and (yv == 2).all()


def test_shared_values_and_their_updates_are_never_clobbered():
    w = theano.shared(np.ones((3, 3)), name="w")
    x = T.dmatrix("x")
    old = w.get_value(borrow=True)
    f = theano.function([x], T.dot(x, w), updates=[(w, w - 0.5 * T.dot(x.T, x))], mode=FAST)
    assert destroyers(f) == []          # the gemm with z = w must not write into w
    out = f(np.eye(3))
    np.testing.assert_allclose(out, np.ones((3, 3)))
    assert (old == 1).all()             # the previous value object is untouched
    np.testing.assert_allclose(w.get_value(), np.ones((3, 3)) - 0.5 * np.eye(3))


def test_value_still_needed_later_is_not_overwritten():
    x = T.dmatrix("x")
    e = T.exp(x)                        # one fused node ...
    s = T.sum(e, axis=1)                # ... read by a reduction ...
    y = T.log(e + 1).dimshuffle(1, 0)   # ... and by a later elementwise region
    f, g = compile_both([x], [y, s + 1.0])
    assert_same(f, g, np.random.default_rng(1).random((3, 4)))
    f.maker.fgraph.check()


def test_buffers_seen_by_outputs_or_through_views_are_kept():
    x = T.dmatrix("x")
    a = T.exp(x)
    f, g = compile_both([x], [a.T, T.tanh(a) * 2])    # a's view is an output
    for d in destroyers(f):
        for k, (j,) in d.op.destroy_map.items():
            assert d.inputs[j].owner.outputs[0] is not a
    assert_same(f, g, np.random.default_rng(2).random((2, 3)))


def test_ordering_constraints_make_readers_run_first():
    x, w = T.dmatrix("x"), T.dmatrix("w")
    h = T.tanh(T.dot(x, w))              # read by a gemm and by an elementwise region
    y = T.dot(h, w) + h * 3
    f, g = compile_both([x, w], y)
    fg = f.maker.fgraph
    order = fg.toposort()
    for d, before in fg.orderings.items():
        for r in before:
            assert order.index(r) < order.index(d)
    rng = np.random.default_rng(3)
    assert_same(f, g, rng.random((3, 3)), rng.random((3, 3)))


def test_unknown_ops_outputs_are_not_destroyed():
    class Alias(Op):                    # returns its input without declaring a view
        def make_node(self, v):
            return Apply(self, [v], [v.type()])

        def perform(self, node, inputs, out):
            out[0][0] = inputs[0]

        def infer_shape(self, node, shapes):
            return shapes

    x = T.dvector("x")
    y = T.exp(Alias()(x)) + 1
    f = theano.function([x], y, mode=FAST)
    assert destroyers(f) == []
    xv = np.zeros(3)
    f(xv)
    assert (xv == 0).all()


def test_repeated_calls_give_the_same_results():
    x, w = T.dmatrix("x"), T.dmatrix("w")
    y = T.nnet.sigmoid(T.dot(x, w) * 2) - T.dot(x, w)
    f, g = compile_both([x, w], y)
    rng = np.random.default_rng(4)
    args = rng.random((4, 4)), rng.random((4, 4))
    first = f(*args).copy()
    for _ in range(3):
        np.testing.assert_array_equal(f(*args), first)
    assert_same(f, g, *args)


def _inc_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, IncSubtensor)]


def test_set_and_inc_subtensor_write_into_a_dead_fresh_buffer():
    x, y, v = T.dmatrix("x"), T.dvector("y"), T.dvector("v")
    i = T.lvector("i")
    outs = [T.set_subtensor(T.exp(x)[-1], y),             # the zeros-but-last pattern of BPTT
            T.inc_subtensor(T.tanh(x)[:, 1], y[:3] * 2),
            T.inc_subtensor((x * 3)[i], v)]                # repeated rows accumulate
    rng = np.random.default_rng(5)
    args = rng.random((3, 4)), rng.random(4), rng.random(4), np.array([0, 2, 0])
    for mode in (FAST, None):                              # the py and the default linker
        f = theano.function([x, y, v, i], outs, mode=mode)
        g = theano.function([x, y, v, i], outs, mode=REF)
        assert [n.op.inplace for n in _inc_nodes(f)] == [True] * 3
        assert all(n.op.destroy_map == {0: [0]} for n in _inc_nodes(f))
        first = [a.copy() for a in f(*args)]
        for _ in range(2):                                 # kept buffers: nothing carries over
            for a, b in zip(f(*args), first):
                np.testing.assert_array_equal(a, b)
        assert_same(f, g, *args)


def test_inc_subtensor_never_writes_into_inputs_or_live_values():
    x, y = T.dmatrix("x"), T.dvector("y")
    e = T.exp(x)
    outs = [T.set_subtensor(x[0], y),                      # x: an input
            T.inc_subtensor(e[1], y), e.sum()]             # e: read again by the sum
    f, g = compile_both([x, y], outs)
    on_input = [n for n in _inc_nodes(f) if n.inputs[0] is x]
    assert len(on_input) == 1 and not on_input[0].op.inplace
    xv, yv = np.random.default_rng(6).random((2, 3)), np.ones(3)
    keep = xv.copy()
    for _ in range(2):
        assert_same(f, g, xv, yv)
        np.testing.assert_array_equal(xv, keep)
        np.testing.assert_allclose(f(xv, yv)[2], np.exp(keep).sum())
    f.maker.fgraph.check()
    order = f.maker.fgraph.toposort()
    for inc in _inc_nodes(f):       # whatever reads a destroyed buffer runs before
        assert all(order.index(r) < order.index(inc)
                   for r in f.maker.fgraph.orderings.get(inc, ()))
