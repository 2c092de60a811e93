"""subtensor_rules: slice updates of zeros become joins; values match the reference."""
import numpy as np

import graphc as theano
import graphc.tensor as T
from graphc.tensor.basic import Join
from graphc.tensor.elemwise import Elemwise
from graphc.tensor.subtensor import IncSubtensor, Subtensor

from helpers import FAST, REF, assert_same, compile_both, count

CANON = FAST.excluding("stabilize", "specialize", "fusion", "inplace")
RNG = np.random.default_rng(0)


def adds(f):
    return sum(type(op) is Elemwise and op.scalar_op.name == "add" for op in
               (n.op for n in f.maker.fgraph.toposort()))


def both(inputs, outputs, mode=CANON):
    return theano.function(inputs, outputs, mode=mode), theano.function(inputs, outputs, mode=REF)


def test_sum_of_incs_tiling_an_axis_is_a_join():
    z, a, b, c = T.dmatrix("z"), T.dmatrix("a"), T.dmatrix("b"), T.dmatrix("c")
    zz = T.zeros_like(z)
    y = (T.inc_subtensor(zz[:, :2], a) + T.inc_subtensor(zz[:, 2:5], b)
         + T.set_subtensor(zz[:, 5:], c))
    f, g = both([z, a, b, c], y)
    assert count(f, IncSubtensor) == 0 and count(f, Join) == 1 and adds(f) == 0
    assert count(g, IncSubtensor) == 3 and adds(g) == 2
    args = [RNG.random((3, 7)), RNG.random((3, 2)), RNG.random((3, 3)), RNG.random((3, 2))]
    assert_same(f, g, *args)


def test_pieces_in_any_order_and_broadcast_values():
    z, a = T.dmatrix("z"), T.dmatrix("a")
    r = T.row("r", dtype="float64")
    zz = T.zeros_like(z)
    y = T.inc_subtensor(zz[2:], r) + T.inc_subtensor(zz[:2], a)   # r fills rows 2.. of z
    f, g = both([z, a, r], y)
    assert count(f, IncSubtensor) == 0 and count(f, Join) == 1
    assert_same(f, g, RNG.random((5, 3)), RNG.random((2, 3)), RNG.random((1, 3)))


def test_disjoint_partial_cover_is_one_buffer():
    z, a, b = T.dmatrix("z"), T.dmatrix("a"), T.dmatrix("b")
    zz = T.zeros_like(z)
    y = T.inc_subtensor(zz[:, 1:2], a) + T.inc_subtensor(zz[:, 3:5], b)
    f, g = both([z, a, b], y)
    assert count(f, IncSubtensor) == 2 and adds(f) == 0 and count(f, Join) == 0
    assert_same(f, g, RNG.random((3, 6)), RNG.random((3, 1)), RNG.random((3, 2)))


def test_overlapping_or_symbolic_slices_are_declined():
    z, a, b = T.dmatrix("z"), T.dmatrix("a"), T.dmatrix("b")
    k = T.lscalar("k")
    zz = T.zeros_like(z)
    # (graph, shape of a, shape of b) for z of shape (4, 5) and k = 2
    cases = [(T.inc_subtensor(zz[:, :3], a) + T.inc_subtensor(zz[:, 2:], b), (4, 3), (4, 3)),
             (T.inc_subtensor(zz[:, :k], a) + T.inc_subtensor(zz[:, k:], b), (4, 2), (4, 3)),
             (T.inc_subtensor(zz[:2, :2], a) + T.inc_subtensor(zz[2:, 2:], b), (2, 2), (2, 3)),
             (T.inc_subtensor(zz[:, ::2], a) + T.inc_subtensor(zz[:, 1::2], b), (4, 3), (4, 2))]
    for y, sa, sb in cases:
        f = theano.function([z, a, b, k], y, mode=CANON, on_unused_input="ignore")
        g = theano.function([z, a, b, k], y, mode=REF, on_unused_input="ignore")
        assert count(f, IncSubtensor) == 2 and count(f, Join) == 0, theano.pp(y)
        assert_same(f, g, RNG.random((4, 5)), RNG.random(sa), RNG.random(sb), 2)


def test_chain_of_updates_ending_in_full_cover_is_a_join():
    z, a, b = T.dvector("z"), T.dvector("a"), T.dvector("b")
    y = T.set_subtensor(T.inc_subtensor(T.zeros_like(z)[:3], a)[3:], b)
    f, g = both([z, a, b], y)
    assert count(f, IncSubtensor) == 0 and count(f, Join) == 1
    assert_same(f, g, RNG.random(7), RNG.random(3), RNG.random(4))


def test_update_covering_everything_is_the_value():
    z, s = T.dmatrix("z"), T.dscalar("s")
    y = T.inc_subtensor(T.zeros((2, 3))[0:], s) * z
    f, g = both([z, s], y)
    assert count(f, IncSubtensor) == 0
    assert_same(f, g, RNG.random((2, 3)), 1.5)


def test_dtype_is_kept():
    z, a, b = T.fmatrix("z"), T.fmatrix("a"), T.dmatrix("b")
    zz = T.zeros_like(z)
    y = T.inc_subtensor(zz[:, :2], a) + T.inc_subtensor(zz[:, 2:], b)   # b cast to float32
    f, g = both([z, a, b], y)
    assert count(f, Join) == 1 and f.maker.fgraph.outputs[0].dtype == "float32"
    args = [RNG.random((3, 4)).astype("float32"), RNG.random((3, 2)).astype("float32"),
            RNG.random((3, 2))]
    assert_same(f, g, *args)


def test_slice_of_a_join_is_the_piece():
    a, b = T.TensorType("float64", shape=(None, 3))("a"), T.dmatrix("b")
    j = T.join(1, a, b)
    outs = [j[:, :3], j[:, 3:], j[:, 0:3] * 2]
    f, g = both([a, b], outs)
    assert count(f, Join) == 0 and count(f, Subtensor) == 0
    assert_same(f, g, RNG.random((2, 3)), RNG.random((2, 4)))
    h = theano.function([a, b], j[:, 1:3], mode=CANON)     # not a piece: kept
    assert count(h, Subtensor) == 1


def _lstm_step(n):
    x, h0, c0 = T.dmatrix("x"), T.dmatrix("h0"), T.dmatrix("c0")
    W, U, b = T.dmatrix("W"), T.dmatrix("U"), T.dvector("b")
    z = T.dot(x, W) + T.dot(h0, U) + b
    i, f, o = (T.nnet.sigmoid(z[:, k * n:(k + 1) * n]) for k in range(3))
    g = T.tanh(z[:, 3 * n:])
    c = f * c0 + i * g
    h = o * T.tanh(c)
    return [x, h0, c0, W, U, b], T.grad(h.sum(), [W, U, b, x, h0])


def test_lstm_step_gradient():
    n, batch, nin = 3, 2, 4
    inputs, grads = _lstm_step(n)
    f, g = compile_both(inputs, grads)
    assert count(f, IncSubtensor) == 0 and count(f, Join) == 1
    assert count(g, IncSubtensor) == 4
    args = [RNG.standard_normal(s) for s in
            [(batch, nin), (batch, n), (batch, n), (nin, 4 * n), (n, 4 * n), (4 * n,)]]
    assert_same(f, g, *args)


def test_a_buffer_read_elsewhere_is_not_rebuilt():
    z, a, b = T.dmatrix("z"), T.dmatrix("a"), T.dmatrix("b")
    zz = T.zeros_like(z)
    ia = T.inc_subtensor(zz[:, :2], a)
    outs = [ia + T.inc_subtensor(zz[:, 2:], b), ia * 2]
    f, g = both([z, a, b], outs)
    assert count(f, Join) == 0 and count(f, IncSubtensor) == 2
    assert_same(f, g, RNG.random((3, 5)), RNG.random((3, 2)), RNG.random((3, 3)))


def test_updates_at_the_same_index_add_their_values():
    z, a, b = T.dmatrix("z"), T.dvector("a"), T.dvector("b")
    zz = T.zeros_like(z)
    y = T.inc_subtensor(zz[-1], a) + T.inc_subtensor(zz[-1], b)
    f, g = both([z, a, b], y)
    assert count(f, IncSubtensor) == 1 and adds(f) == 1
    assert_same(f, g, RNG.random((3, 4)), RNG.random(4), RNG.random(4))


def test_update_of_a_tail_slice_by_an_update_of_its_row_is_one_update():
    # the gradient of (h[-1] ** 2).sum() for h = x[1:] (a scan's states after the initial)
    x = T.dmatrix("x")
    h = x[1:]
    for cost in [(h[-1] * h[-1]).sum(), (h[2] * 3).sum()]:
        f, g = both([x], theano.grad(cost, x))
        assert count(f, IncSubtensor) == 1, theano.pp(cost)
        for rows in (4, 6):
            assert_same(f, g, RNG.random((rows, 3)))
