"""ifelse: values, laziness (only the taken branch runs), gradients, shapes, errors."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.graph.basic import Apply, Op
from graphc.ifelse import IfElse, ifelse
from graphc.tensor.shared_randomstreams import RandomStreams


class Counting(Op):
    """Identity that counts how many times it ran."""

    __props__ = ("tag",)

    def __init__(self, tag):
        self.tag = tag
        self.calls = 0

    def make_node(self, x):
        x = T.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        type(self).runs[self.tag] = type(self).runs.get(self.tag, 0) + 1
        out[0][0] = inputs[0].copy()

    def grad(self, inputs, grads):
        return grads


Counting.runs = {}


@pytest.mark.parametrize("mode", [None, "FAST_COMPILE"])
def test_values_and_laziness(mode):
    a, b = T.scalars("a", "b")
    x, y = T.matrices("x", "y")
    z = ifelse(T.lt(a, b), Counting("then")(x).mean(), Counting("else")(y).mean())
    f = graphc.function([a, b, x, y], z, mode=mode)
    Counting.runs.clear()
    assert f(1, 2, np.ones((2, 2)), np.zeros((2, 2))) == 1.0
    assert Counting.runs == {"then": 1}
    assert f(2, 1, np.ones((2, 2)), np.zeros((2, 2))) == 0.0
    assert Counting.runs == {"then": 1, "else": 1}


def test_shared_subexpressions_are_computed_outside():
    c, x = T.scalar("c"), T.vector("x")
    h = Counting("common")(x)
    z = ifelse(c, h * 2, h * 3)
    node = z.owner
    assert isinstance(node.op, IfElse) and h in node.inputs
    Counting.runs.clear()
    np.testing.assert_array_equal(graphc.function([c, x], z)(0, np.ones(2)), [3, 3])
    assert Counting.runs == {"common": 1}


def test_list_branches_and_weak_constants():
    c, x = T.iscalar("c"), T.vector("x")
    p, q = ifelse(c, [x * 2, x.sum()], [x, 0.0])
    f = graphc.function([c, x], [p, q])
    out = f(1, np.arange(3.0))
    np.testing.assert_array_equal(out[0], [0, 2, 4])
    assert out[1] == 3
    out = f(0, np.arange(3.0))
    np.testing.assert_array_equal(out[0], [0, 1, 2])
    assert out[1] == 0


@pytest.mark.parametrize("flag", [0, 1])
def test_grad_finite_differences(rng, flag):
    c = graphc.shared(np.int64(flag))
    verify_grad(lambda x, W: ifelse(c, T.tanh(T.dot(W, x)), x * T.sum(W ** 2)),
                [rng.standard_normal(3), rng.standard_normal((3, 3))], rng=rng)


def test_grad_is_lazy_and_zero_for_the_other_branch():
    c, x, y = T.scalar("c"), T.vector("x"), T.vector("y")
    z = ifelse(c, Counting("g_then")(x ** 2).sum(), (y ** 3).sum())
    gx, gy = graphc.grad(z, [x, y])
    f = graphc.function([c, x, y], [gx, gy])
    Counting.runs.clear()
    gxv, gyv = f(0, np.ones(2), np.full(2, 2.0))
    np.testing.assert_array_equal(gxv, [0, 0])
    np.testing.assert_array_equal(gyv, [12, 12])
    assert "g_then" not in Counting.runs


def test_inside_scan_and_with_random_dropout():
    srng = RandomStreams(3)
    train = graphc.shared(np.int64(1))
    x = T.matrix("x")
    dropped = ifelse(train, x * srng.binomial(size=x.shape, p=0.5, dtype="float64") * 2, x)
    f = graphc.function([x], dropped)
    xv = np.ones((4, 5))
    v = f(xv)
    assert set(np.unique(v)) <= {0.0, 2.0}
    train.set_value(0)
    np.testing.assert_array_equal(f(xv), xv)

    s = T.vector("s")   # reset-on-negative accumulator
    o, _ = graphc.scan(lambda a, h: ifelse(T.lt(a, 0), T.constant(0.0), h + a),
                       sequences=s, outputs_info=np.float64(0))
    np.testing.assert_array_equal(graphc.function([s], o)(np.array([1.0, 2, -1, 3])),
                                  [1, 3, 0, 3])


def test_infer_shape_and_no_aliasing():
    c, x, y = T.scalar("c"), T.matrix("x"), T.matrix("y")
    z = ifelse(c, x, y[1:])
    node = z.owner
    shp = node.op.infer_shape(node, [[T.shape_i(i, d) for d in range(i.ndim)]
                                     for i in node.inputs])
    f = graphc.function([c, x, y], T.stack(list(shp[0])))
    np.testing.assert_array_equal(f(1, np.zeros((2, 3)), np.zeros((5, 3))), [2, 3])
    np.testing.assert_array_equal(f(0, np.zeros((2, 3)), np.zeros((5, 3))), [4, 3])
    xv = np.zeros((2, 3))
    out = [[None]]
    node.op.perform(node, [np.array(1.0), xv, np.zeros((5, 3))], out)
    assert not np.may_share_memory(out[0][0], xv)


def test_errors():
    c, x, i = T.scalar("c"), T.vector("x"), T.ivector("i")
    with pytest.raises(TypeError, match="same dtype"):
        ifelse(c, x, i)
    with pytest.raises(TypeError, match="scalar"):
        ifelse(x, x, x)
    with pytest.raises(ValueError, match="outputs"):
        ifelse(c, [x, x], [x])
