"""graphc.grad and graphc.gradient: arguments, typed "no gradient" values, gradient-shaping
ops, verify_grad itself, and second-order gradients (grad of grad, Hessians) against
finite differences."""
import warnings

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc import gradient
from graphc.graph.basic import Apply, Op
from op_table import MODE_IDS, MODES

mode_param = pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)


def _numeric_hessian(f, x, eps=1e-4):
    n = x.size
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            def at(di, dj):
                y = x.copy()
                y[i] += di
                y[j] += dj
                return f(y)
            h[i, j] = (at(eps, eps) - at(eps, -eps) - at(-eps, eps) + at(-eps, -eps)) / \
                (4 * eps ** 2)
    return h


def _small_fn(x):
    """A scalar function with a dense, non-trivial Hessian (symbolic or numpy)."""
    if isinstance(x, np.ndarray):
        return np.sum(np.tanh(x) ** 2 * x[::-1]) + np.log(np.sum(np.exp(x))) + np.prod(x) ** 2
    return T.sum(T.tanh(x) ** 2 * x[::-1]) + T.log(T.sum(T.exp(x))) + T.prod(x) ** 2


# --------------------------------------------------------------------------- the grad() call
@mode_param
def test_grad_of_simple_expressions(mode):
    x, y = T.dscalar("x"), T.dvector("y")
    cost = x ** 3 + T.sum(T.sin(y) * x)
    gx, gy = graphc.grad(cost, [x, y])
    f = graphc.function([x, y], [gx, gy], mode=mode)
    yv = np.array([0.1, 0.5, -2.0])
    a, b = f(2.0, yv)
    np.testing.assert_allclose(a, 3 * 4 + np.sum(np.sin(yv)))
    np.testing.assert_allclose(b, 2.0 * np.cos(yv))
    assert gx.name == "(dcost/dx)"
    # a single wrt gives a single gradient, not a list
    assert isinstance(graphc.grad(cost, x), T.TensorVariable)


@mode_param
def test_grad_wrt_intermediate_and_shared(mode):
    x = T.dvector("x")
    w = graphc.shared(np.array([1.0, 2.0, 3.0]), name="w")
    h = T.tanh(x * w)
    cost = T.sum(h ** 2)
    gh, gw = graphc.grad(cost, [h, w])
    f = graphc.function([x], [gh, gw], mode=mode)
    xv = np.array([0.1, -0.2, 0.3])
    hv = np.tanh(xv * w.get_value())
    a, b = f(xv)
    np.testing.assert_allclose(a, 2 * hv)
    np.testing.assert_allclose(b, 2 * hv * (1 - hv ** 2) * xv)


def test_cost_must_be_a_float_scalar():
    with pytest.raises(TypeError, match="scalar"):
        graphc.grad(T.vector(), T.vector())
    i = T.iscalar()
    with pytest.raises(TypeError, match="integer"):
        graphc.grad(i * 2, i)
    with pytest.raises(TypeError, match="symbolic"):
        graphc.grad(T.sum(T.vector()), 3.0)


def test_disconnected_inputs():
    x, y = T.dvector("x"), T.dvector("y")
    cost = T.sum(x ** 2)
    with pytest.raises(gradient.DisconnectedInputError, match="does not depend on y"):
        graphc.grad(cost, [x, y])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gy = graphc.grad(cost, y, disconnected_inputs="warn")
        assert any("does not depend" in str(m.message) for m in w)
    f = graphc.function([y], gy, on_unused_input="ignore")
    np.testing.assert_array_equal(f(np.ones(3)), np.zeros(3))
    assert graphc.grad(cost, y, disconnected_inputs="ignore", return_disconnected="None") is None
    g = graphc.grad(cost, y, disconnected_inputs="ignore", return_disconnected="Disconnected")
    assert isinstance(g.type, gradient.DisconnectedType)
    # reached only through a shape: disconnected as well
    with pytest.raises(gradient.DisconnectedInputError):
        graphc.grad(T.cast(y.shape[0], "float64") * T.sum(x), y)


def test_integer_wrt_gets_zeros():
    x = T.dvector("x")
    k = T.lscalar("k")
    cost = T.sum(x * T.cast(k, "float64"))
    gk = graphc.grad(cost, k)
    assert gk.dtype == graphc.config.floatX
    assert graphc.function([x, k], gk, on_unused_input="ignore")(np.ones(2), 3) == 0


@mode_param
def test_consider_constant(mode):
    x = T.dscalar("x")
    y = x * x
    z = y * x
    g1 = graphc.grad(z, x, consider_constant=[y])
    g2 = graphc.grad(gradient.consider_constant(y) * x, x)
    f = graphc.function([x], [g1, g2], mode=mode)
    assert f(3.0) == [9.0, 9.0]


@mode_param
def test_known_grads(mode):
    x = T.dvector("x")
    h = T.exp(x)
    out = T.sum(h * 2)
    gh = T.dvector("gh")
    # grad from an intermediate gradient only (cost=None)
    gx = graphc.grad(None, x, known_grads={h: gh})
    f = graphc.function([x, gh], gx, mode=mode)
    xv, ghv = np.array([0.0, 1.0]), np.array([1.0, -2.0])
    np.testing.assert_allclose(f(xv, ghv), ghv * np.exp(xv))
    # known_grads add to the cost's own gradient
    gx2 = graphc.grad(out, x, known_grads={h: gh})
    f2 = graphc.function([x, gh], gx2, mode=mode)
    np.testing.assert_allclose(f2(xv, ghv), (ghv + 2) * np.exp(xv))


@mode_param
def test_gradient_shaping_ops(mode):
    x = T.dvector("x")
    f = graphc.function(
        [x],
        [graphc.zero_grad(x), graphc.grad(T.sum(graphc.zero_grad(x) * x), x),
         graphc.grad(T.sum(graphc.disconnected_grad(x ** 2) + x), x),
         graphc.grad(T.sum(graphc.grad_clip(x, -0.5, 0.5) * 10), x),
         graphc.grad(T.sum(gradient.grad_scale(x, 3.0) ** 2), x)],
        mode=mode)
    xv = np.array([1.0, -2.0, 3.0])
    fwd, g_zero, g_disc, g_clip, g_scale = f(xv)
    np.testing.assert_array_equal(fwd, xv)
    np.testing.assert_array_equal(g_zero, xv)
    np.testing.assert_array_equal(g_disc, np.ones(3))
    np.testing.assert_array_equal(g_clip, np.full(3, 0.5))
    np.testing.assert_array_equal(g_scale, 6 * xv)
    with pytest.raises(gradient.DisconnectedInputError):
        graphc.grad(T.sum(graphc.disconnected_grad(x)), x)
    with pytest.raises(ValueError):
        graphc.grad_clip(x, 1.0, -1.0)


def test_undefined_gradient_is_an_error_naming_the_op():
    x = T.dvector("x")
    cost = T.sum(gradient.undefined_grad(x))
    with pytest.raises(gradient.NullTypeGradError, match="UndefinedGrad"):
        graphc.grad(cost, x)


class _NoGradOp(Op):
    def make_node(self, x):
        x = T.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        out[0][0] = inputs[0] * 2


def test_not_implemented_gradient_names_the_op():
    x = T.dvector("x")
    with pytest.raises(gradient.NullTypeGradError, match="_NoGradOp"):
        graphc.grad(T.sum(_NoGradOp()(x)), x)


@mode_param
def test_grad_of_cast(mode):
    x = T.dvector("x")
    y = T.cast(x, "float32")
    g = graphc.grad(T.sum(y * y), x)
    assert g.dtype == "float64"
    f = graphc.function([x], g, mode=mode)
    np.testing.assert_allclose(f(np.array([1.0, 2.5])), [2.0, 5.0])
    i = T.lvector("i")
    gi = graphc.grad(T.sum(T.cast(i, "float64") * x), x)
    fi = graphc.function([x, i], gi, mode=mode, on_unused_input="ignore")
    np.testing.assert_array_equal(fi(np.ones(2), [3, 4]), [3, 4])


# --------------------------------------------------------------------------- verify_grad
class _WrongGradExp(Op):
    """exp with a deliberately wrong gradient (2*exp)."""

    def make_node(self, x):
        x = T.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        out[0][0] = np.exp(inputs[0])

    def grad(self, inputs, g):
        return [g[0] * 2 * T.exp(inputs[0])]


def test_verify_grad_catches_a_wrong_gradient():
    pt = [np.array([0.1, 0.2, -0.3])]
    gradient.verify_grad(T.exp, pt)
    with pytest.raises(gradient.GradientError, match="gradient mismatch"):
        gradient.verify_grad(_WrongGradExp(), pt)


def test_verify_grad_with_several_inputs_and_broadcasting():
    rng = np.random.default_rng(0)
    gradient.verify_grad(lambda a, b: T.tanh(a) * b, [rng.normal(size=(3, 4)),
                                                      rng.normal(size=(1, 4))])
    gradient.verify_grad(lambda a: T.sum(a ** 2), [rng.normal(size=(2, 2))], n_tests=3,
                         rng=np.random.RandomState(1))


# --------------------------------------------------------------------------- second order
@mode_param
def test_grad_of_grad_scalar(mode):
    x = T.dscalar("x")
    y = T.sin(x) * x ** 3
    d1 = graphc.grad(y, x)
    d2 = graphc.grad(d1, x)
    d3 = graphc.grad(d2, x)
    f = graphc.function([x], [d1, d2, d3], mode=mode)
    v = 0.7
    s, c = np.sin(v), np.cos(v)
    want = [c * v ** 3 + 3 * s * v ** 2,
            -s * v ** 3 + 6 * c * v ** 2 + 6 * s * v,
            -c * v ** 3 - 9 * s * v ** 2 + 18 * c * v + 6 * s]
    np.testing.assert_allclose(f(v), want, rtol=1e-10)


@mode_param
def test_hessian_vector_products_match_finite_differences(mode):
    x = T.dvector("x")
    v = T.dvector("v")
    g = graphc.grad(_small_fn(x), x)
    hv = graphc.grad(T.sum(g * v), x)       # Hessian-vector product, graph of a graph
    f = graphc.function([x, v], hv, mode=mode)
    xv = np.array([0.3, -0.4, 0.5, 0.9])
    num = _numeric_hessian(_small_fn, xv)
    eye = np.eye(4)
    hess = np.stack([f(xv, eye[i]) for i in range(4)])
    np.testing.assert_allclose(hess, num, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)


@mode_param
def test_full_hessian_by_rows_of_the_gradient(mode):
    x = T.dvector("x")
    g = graphc.grad(_small_fn(x), x)
    rows = [graphc.grad(g[i], x) for i in range(3)]
    f = graphc.function([x], T.stack(rows), mode=mode)
    xv = np.array([0.2, 0.7, -1.1])
    np.testing.assert_allclose(f(xv), _numeric_hessian(_small_fn, xv), rtol=1e-5, atol=1e-6)


@mode_param
def test_second_order_through_matrix_ops(mode):
    """d/dW of ||grad_x L||^2 (a gradient penalty) against finite differences."""
    rng = np.random.default_rng(3)
    wv = rng.normal(size=(3, 2))
    xv = rng.normal(size=(4, 3))

    def penalty(w):
        x = T.constant(xv)
        cost = T.sum(T.nnet.softplus(T.dot(x, w)))
        gx = graphc.grad(cost, x)
        return T.sum(gx ** 2)

    gradient.verify_grad(penalty, [wv], mode=mode)


@mode_param
def test_jacobian_and_hessian(mode):
    """jacobian and hessian loop with scan over the rows of a gradient."""
    x = T.dvector("x")
    J = gradient.jacobian(T.tanh(x) * x[::-1], x)
    H = gradient.hessian(_small_fn(x), x)
    f = graphc.function([x], [J, H], mode=mode)
    xv = np.array([0.3, -0.4, 0.5])
    j, h = f(xv)
    t = np.tanh(xv)
    want_j = np.diag((1 - t ** 2) * xv[::-1]) + np.eye(3)[::-1] * t[:, None]
    np.testing.assert_allclose(j, want_j, rtol=1e-10)
    np.testing.assert_allclose(h, _numeric_hessian(_small_fn, xv), rtol=1e-5, atol=1e-6)
