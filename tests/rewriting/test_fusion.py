"""fusion: maximal elementwise regions become one Fused node with a valid KernelSpec."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.printing import debugprint
from graphc.tensor.blas import Gemm
from graphc.tensor.elemwise import CAReduce, DimShuffle, Elemwise, ShapeError
from graphc.tensor.fused import Fused

from helpers import FAST, REF, assert_same, compile_both, count, ops

NO_INPLACE = FAST.excluding("inplace")


def fused_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Fused)]


def test_acceptance_expression_is_one_fused_node():
    a, x, b = T.dmatrix("a"), T.dmatrix("x"), T.dvector("b")
    y = T.tanh(a * x + b) * T.nnet.sigmoid(x) + T.exp(-x * x)
    f, g = compile_both([a, x, b], y)
    assert [type(op) for op in ops(f)] == [Fused]
    spec = fused_nodes(f)[0].op.to_kernel_spec()
    spec.check()
    assert spec.in_dtypes == ("float64",) * 3
    rng = np.random.default_rng(0)
    assert_same(f, g, rng.random((3, 4)), rng.random((3, 4)), rng.random(4))


def test_debugprint_shows_the_inner_expression():
    x = T.dvector("x")
    f = theano.function([x], T.exp(-x * x) + 1, mode=FAST)
    text = debugprint(f, file="str")
    assert "Fused{" in text and "exp(" in text and "o0 =" in text


def test_several_consumers_give_a_multi_output_node():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    h = T.tanh(x + y)
    f, g = compile_both([x, y], [h, h * 2 + 1])
    assert [type(op) for op in ops(f)] == [Fused]
    assert len(fused_nodes(f)[0].outputs) == 2
    rng = np.random.default_rng(1)
    assert_same(f, g, rng.random((2, 3)), rng.random((2, 3)))


def test_consumers_of_a_shared_value_merge_into_its_node():
    # dc is read by three consumers that all feed a join (an LSTM's gate gradients) and by
    # an output: one kernel computes dc and every consumer, dc stays one of its outputs
    a, b, c, d, e = [T.dmatrix(n) for n in "abcde"]
    dc = a + b * (1 - T.sqr(c))
    parts = [dc * d * (1 - d), dc * e * (1 - e), dc * c]
    f, g = compile_both([a, b, c, d, e], [T.join(1, *parts), dc * e])
    nodes = fused_nodes(f)
    assert len(nodes) == 1 and len(nodes[0].outputs) == 4
    rng = np.random.default_rng(4)
    assert_same(f, g, *[rng.random((2, 3)) for _ in range(5)])


def test_region_ends_in_a_reduction():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    f, g = compile_both([x, y], [T.sum(x * x, axis=1), T.sqrt(T.sum(T.sqr(y)))])
    nodes = fused_nodes(f)
    assert count(f, CAReduce) == 0
    assert {n.op.reduce for n in nodes} == {("add", (1,)), ("add", (0, 1)), None}
    for n in nodes:
        n.op.to_kernel_spec().check()
    rng = np.random.default_rng(2)
    assert_same(f, g, rng.random((4, 5)), rng.random((2, 3)))


def test_reduction_with_a_wider_result_dtype_casts_first():
    x = T.bmatrix("x")
    f, g = compile_both([x], T.sum(x + x))
    (node,) = fused_nodes(f)
    spec = node.op.to_kernel_spec()
    spec.check()
    assert spec.out_dtypes == ("int64",)
    v = np.full((20, 20), 100, dtype="int8")
    assert_same(f, g, v)


def test_no_cycle_through_a_non_elementwise_consumer():
    # h feeds a dot whose result comes back into h's elementwise consumers
    x, w = T.dmatrix("x"), T.dmatrix("w")
    h = T.tanh(x)
    y = h * T.dot(h, w) + h
    f, g = compile_both([x, w], y)
    f.maker.fgraph.check()
    rng = np.random.default_rng(3)
    assert_same(f, g, rng.random((3, 3)), rng.random((3, 3)))


def test_broadcasting_is_still_checked_at_run_time():
    x, y = T.dmatrix("x"), T.dmatrix("y")
    f = theano.function([x, y], T.exp(x) + y, mode=FAST)
    with pytest.raises(ShapeError, match="broadcasts only dimensions declared broadcastable"):
        f(np.ones((3, 4)), np.ones((1, 4)))
    row = T.TensorType("float64", shape=(1, None))("row")
    g = theano.function([x, row], T.exp(x) + row, mode=FAST)
    assert g(np.ones((3, 4)), np.ones((1, 4))).shape == (3, 4)


def test_kernel_spec_is_canonical_for_mixed_dtypes():
    i, x = T.ivector("i"), T.fvector("x")
    c = T.bvector("c")
    y = T.switch(T.lt(i, 3), x * 2, T.cast(i, "float32")) + T.switch(c, 1.0, x)
    f, g = compile_both([i, x, c], y)
    (node,) = fused_nodes(f)
    spec = node.op.to_kernel_spec()
    spec.check()
    ops_in_spec = [e[0] for e in spec.eqns]
    assert "cast" in ops_in_spec and "switch" in ops_in_spec
    args = (np.arange(5, dtype="int32"), np.arange(5, dtype="float32"),
            np.array([1, 0, 1, 0, 2], dtype="int8"))
    assert_same(f, g, *args)


def test_second_lowers_to_its_value_and_keeps_the_shape():
    x, s = T.dmatrix("x"), T.dscalar("s")
    f, g = compile_both([x, s], T.fill(x, s) * 2)
    spec = fused_nodes(f)[0].op.to_kernel_spec()
    spec.check()
    assert "second" not in [e[0] for e in spec.eqns]
    assert_same(f, g, np.ones((2, 3)), 1.5)


def _reaches(node, v):
    """Is ``node`` an ancestor of variable ``v``?"""
    stack, seen = [v], set()
    while stack:
        w = stack.pop()
        if w.owner is None or w.owner in seen:
            continue
        if w.owner is node:
            return True
        seen.add(w.owner)
        stack.extend(w.owner.inputs)
    return False


def test_mlp_training_graph_is_gemms_and_fused_nodes():
    rng = np.random.default_rng(0)
    sizes = [6, 8, 8, 3]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [theano.shared(rng.standard_normal((a, b)) * 0.3, name="W"),
                   theano.shared(np.zeros(b), name="b")]
    x, y = T.dmatrix("x"), T.ivector("y")
    h = x
    for W, b in zip(params[0:-2:2], params[1:-2:2]):
        h = T.tanh(T.dot(h, W) + b)
    z = T.dot(h, params[-2]) + params[-1]
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean()
    grads = theano.grad(loss, params)
    updates = [(p, p - 0.1 * g) for p, g in zip(params, grads)]
    f = theano.function([x, y], loss, updates=updates, mode=FAST)
    fg = f.maker.fgraph
    nodes = fg.toposort()
    assert sum(isinstance(n.op, Gemm) for n in nodes) == 8   # 3 forward, 2 backprop, 3 updates
    assert not any(type(n.op) is Elemwise for n in nodes)
    assert not any(isinstance(n.op, DimShuffle) and n.op.new_order == (1, 0) for n in nodes)
    # no fused node feeds another one that could have absorbed it (without a cycle: the
    # mean's 1/n also feeds the xent gradient, which comes before the sum it divides)
    for n in nodes:
        if isinstance(n.op, Fused):
            for v in n.inputs:
                p = v.owner
                if p is not None and isinstance(p.op, Fused) and p.op.reduce is None:
                    assert len(fg.clients[v]) > 1 or v.ndim != n.outputs[0].ndim or \
                        any(_reaches(p, w) for w in n.inputs if w.owner is not p), n
    xv = rng.standard_normal((10, 6))
    yv = rng.integers(0, 3, 10).astype("int32")
    before = [p.get_value() for p in params]
    ref = theano.function([x, y], [loss] + grads, mode=REF)(xv, yv)
    got = f(xv, yv)
    np.testing.assert_allclose(got, ref[0], rtol=1e-12)
    for p, b0, g in zip(params, before, ref[1:]):
        np.testing.assert_allclose(p.get_value(), b0 - 0.1 * g, rtol=1e-10, atol=1e-14)
