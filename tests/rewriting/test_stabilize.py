"""stabilize: the acceptance tests for stability, and the structure of each rewrite."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.tensor.nnet.basic import LogSoftmax, Softmax
from graphc.tensor.nnet.xent import SoftmaxCrossentropy, SoftmaxCrossentropyGrad
from graphc.tensor.subtensor import IncSubtensor

from helpers import FAST, REF, assert_same, count, elemwise_names, ops

# (softmax_xent_with_grad, a specialize rule, would merge the two ops these tests look for)
NO_FUSION = FAST.excluding("fusion", "inplace", "softmax_xent_with_grad")


def xent_ref(z, y):
    """Stable numpy mean cross-entropy and its gradient."""
    n = z.shape[0]
    s = z - z.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    g = np.exp(logp)
    g[np.arange(n), y] -= 1
    return -logp[np.arange(n), y].mean(), g / n


def naive_costs(z, y):
    n = z.shape[0]
    return {
        "log_softmax_indexed": -T.mean(T.log(T.nnet.softmax(z))[T.arange(n), y]),
        "categorical_crossentropy": T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean(),
        "sum_of_nll": -T.sum(T.log(T.nnet.softmax(z))[T.arange(n), y]) / T.cast(n, "float64"),
    }


@pytest.mark.parametrize("form", ["log_softmax_indexed", "categorical_crossentropy",
                                  "sum_of_nll"])
def test_softmax_crossentropy_with_huge_logits_is_finite_and_correct(form):
    z, y = T.dmatrix("z"), T.ivector("y")
    cost = naive_costs(z, y)[form]
    gz = theano.grad(cost, z)
    f = theano.function([z, y], [cost, gz], mode=FAST)
    rng = np.random.default_rng(0)
    zv = rng.standard_normal((5, 7)) * 1e4
    yv = rng.integers(0, 7, 5).astype("int32")
    loss, g = f(zv, yv)
    want_loss, want_g = xent_ref(zv, yv)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    np.testing.assert_allclose(g, want_g, atol=1e-12)
    # the naive graph (no optimizer) overflows: that is what the rewrite fixes
    with np.errstate(all="ignore"):
        _, g_naive = theano.function([z, y], [cost, gz], mode=REF)(zv, yv)
    assert not np.all(np.isfinite(g_naive))


def test_crossentropy_graph_uses_the_stable_ops_and_one_softmax():
    z, y = T.dmatrix("z"), T.ivector("y")
    cost = naive_costs(z, y)["categorical_crossentropy"]
    f = theano.function([z, y], [cost, theano.grad(cost, z)], mode=NO_FUSION)
    assert count(f, SoftmaxCrossentropy) == 1 and count(f, SoftmaxCrossentropyGrad) == 1
    assert Softmax not in map(type, ops(f)) and count(f, IncSubtensor) == 0
    assert "log" not in elemwise_names(f)


def test_bias_add_is_absorbed_into_the_crossentropy_op():
    x, y = T.dmatrix("x"), T.ivector("y")
    w = theano.shared(np.ones((3, 4)), name="w")
    b = theano.shared(np.arange(4.0), name="b")
    cost = T.nnet.categorical_crossentropy(T.nnet.softmax(T.dot(x, w) + b), y).mean()
    f = theano.function([x, y], [cost] + theano.grad(cost, [w, b]), mode=NO_FUSION)
    node = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, SoftmaxCrossentropy)][0]
    assert node.op.has_bias
    g = theano.function([x, y], [cost] + theano.grad(cost, [w, b]), mode=REF)
    rng = np.random.default_rng(1)
    assert_same(f, g, rng.random((6, 3)), rng.integers(0, 4, 6).astype("int32"))


def test_crossentropy_with_a_static_batch_size():
    # arange(n) of a static n is folded to a constant: the rule must still see every row
    z = T.TensorType("float64", shape=(6, 4))("z")
    y = T.ivector("y")
    cost = T.nnet.categorical_crossentropy(T.nnet.softmax(z), y).mean()
    f = theano.function([z, y], [cost, theano.grad(cost, z)], mode=NO_FUSION)
    assert count(f, SoftmaxCrossentropy) == 1 and count(f, SoftmaxCrossentropyGrad) == 1
    zv = np.full((6, 4), 1e4)
    zv[:, 0] = -1e4
    loss, g = f(zv, np.zeros(6, "int32"))
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, 2e4 + np.log(3), rtol=1e-12)


def test_non_row_indexing_still_gets_a_stable_gradient():
    z, idx, y = T.dmatrix("z"), T.lvector("idx"), T.lvector("y")
    cost = -T.log(T.nnet.softmax(z)[idx, y]).sum()
    gz = theano.grad(cost, z)
    f = theano.function([z, idx, y], [cost, gz], mode=FAST)
    zv = np.array([[1e4, 0.0, -1e4], [0.0, 3.0, 1.0]])
    iv, yv = np.array([0, 0, 1]), np.array([1, 1, 2])
    loss, g = f(zv, iv, yv)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    gr = theano.function([z, idx, y], [cost, gz], mode=REF)
    zs = np.array([[1.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    assert_same(f, gr, zs, iv, yv)


def test_log_softmax_rewrite():
    z = T.dmatrix("z")
    f = theano.function([z], T.log(T.nnet.softmax(z)), mode=NO_FUSION)
    assert [type(op) for op in ops(f)] == [LogSoftmax]
    r = f(np.array([[1e4, 0.0]]))
    np.testing.assert_allclose(r, [[0.0, -1e4]])


def test_log_sigmoid_and_its_gradient_are_finite():
    x = T.dscalar("x")
    y = T.log(T.nnet.sigmoid(x))
    f = theano.function([x], [y, theano.grad(y, x)], mode=FAST)
    for v in (-100.0, -1000.0, 30.0):
        val, g = f(v)
        np.testing.assert_allclose(val, -np.logaddexp(0, -v), rtol=1e-12)
        np.testing.assert_allclose(g, 1 / (1 + np.exp(v)), rtol=1e-12, atol=1e-300)


def test_log_one_minus_sigmoid():
    x = T.dvector("x")
    f = theano.function([x], T.log(1 - T.nnet.sigmoid(x)), mode=NO_FUSION)
    assert "log" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.array([1000.0, 0.0])), [-1000.0, -np.log(2)])


def test_logsumexp_of_large_values():
    v = T.dvector("v")
    f = theano.function([v], T.log(T.sum(T.exp(v))), mode=FAST)
    np.testing.assert_allclose(f(np.array([1000.0, 1000.0])), 1000 + np.log(2), rtol=1e-15)
    m = T.dmatrix("m")
    g = theano.function([m], T.log(T.exp(m).sum(axis=1)), mode=FAST)
    np.testing.assert_allclose(g(np.array([[1000.0, 1000.0], [-np.inf, -np.inf]])),
                               [1000 + np.log(2), -np.inf])


def test_user_logsumexp_is_not_shifted_twice():
    v = T.dvector("v")
    f = theano.function([v], T.logsumexp(v), mode=NO_FUSION)
    assert elemwise_names(f).count("exp") == 1
    assert sum(1 for n in f.maker.fgraph.toposort()
               if getattr(n.op, "kind", None) == "max") == 1


def test_log1p_and_expm1():
    x = T.dvector("x")
    f = theano.function([x], [T.log(1 + x), T.exp(x) - 1], mode=NO_FUSION)
    names = elemwise_names(f)
    assert "log1p" in names and "expm1" in names and "log" not in names
    a, b = f(np.array([1e-20]))
    assert a[0] == 1e-20 and b[0] == 1e-20


def test_log_sigmoid_gradient_cancels_the_division():
    x = T.dvector("x")
    y = T.log(T.nnet.sigmoid(x)).sum()
    f = theano.function([x], theano.grad(y, x), mode=NO_FUSION)
    assert "true_div" not in elemwise_names(f) and "reciprocal" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.array([-1000.0, 0.0, 1000.0])), [1.0, 0.5, 0.0])


def test_one_minus_sigmoid_only_when_free():
    x = T.dvector("x")
    f = theano.function([x], 1 - T.nnet.sigmoid(x), mode=NO_FUSION)
    assert "sub" not in elemwise_names(f)
    np.testing.assert_allclose(f(np.array([40.0])), [np.exp(-40.0)], rtol=1e-12)
    s = T.nnet.sigmoid(x)       # s is needed anyway: 1 - s stays (no extra live array)
    g = theano.function([x], [s, 1 - s], mode=NO_FUSION)
    assert "sub" in elemwise_names(g)


@pytest.mark.parametrize("with_bias", [False, True])
def test_crossentropy_op_has_its_own_correct_gradient(with_bias):
    from graphc.tensor.nnet.xent import softmax_crossentropy
    yv = np.array([2, 0, 1, 2], dtype="int32")
    rng = np.random.default_rng(5)
    if with_bias:
        theano.gradient.verify_grad(lambda x, b: softmax_crossentropy(x, T.constant(yv), b),
                                    [rng.standard_normal((4, 3)), rng.standard_normal(3)])
    else:
        theano.gradient.verify_grad(lambda x: softmax_crossentropy(x, T.constant(yv)),
                                    [rng.standard_normal((4, 3))])


def test_crossentropy_op_reports_bad_labels():
    from graphc.tensor.nnet.xent import softmax_crossentropy
    z, y = T.dmatrix("z"), T.ivector("y")
    f = theano.function([z, y], softmax_crossentropy(z, y), mode=FAST)
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        f(np.zeros((2, 3)), np.array([0, 3], dtype="int32"))
