"""gradient.jacobian / gradient.hessian (built on scan) against finite differences."""
import numpy as np

import graphc
import graphc.tensor as T
from graphc.gradient import hessian, jacobian


def numeric_jacobian(f, x, eps=1e-6):
    cols = [(np.asarray(f(x + d)) - np.asarray(f(x - d))) / (2 * eps)
            for d in np.eye(x.size).reshape((x.size,) + x.shape) * eps]
    return np.stack(cols, axis=-1).reshape(np.shape(f(x)) + x.shape)


def test_jacobian_vector(rng):
    x = T.vector("x")
    y = x ** 2 * T.sin(x).sum()
    f = graphc.function([x], y)
    J = graphc.function([x], jacobian(y, x))
    xv = rng.standard_normal(4)
    np.testing.assert_allclose(J(xv), numeric_jacobian(f, xv), rtol=1e-6, atol=1e-8)


def test_jacobian_matrix_output_and_several_wrt(rng):
    x, W = T.vector("x"), T.matrix("W")
    y = T.tanh(T.outer(x, x) + W)                 # (3, 3) output
    jx, jw = jacobian(y, [x, W])
    f = graphc.function([x, W], [jx, jw])
    xv, Wv = rng.standard_normal(3), rng.standard_normal((3, 3))
    gx, gw = f(xv, Wv)
    assert gx.shape == (3, 3, 3) and gw.shape == (3, 3, 3, 3)
    fy = graphc.function([x, W], y)
    np.testing.assert_allclose(gx, numeric_jacobian(lambda v: fy(v, Wv), xv), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(gw, numeric_jacobian(lambda v: fy(xv, v), Wv), rtol=1e-6,
                               atol=1e-8)


def test_hessian_small_function(rng):
    x = T.vector("x")
    cost = (T.exp(x) * x[::-1]).sum() + (x ** 3).sum() * x[0]
    H = graphc.function([x], hessian(cost, x))
    g = graphc.function([x], graphc.grad(cost, x))
    xv = rng.standard_normal(3)
    Hv = H(xv)
    np.testing.assert_allclose(Hv, numeric_jacobian(g, xv), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(Hv, Hv.T, rtol=1e-10)


def test_hessian_through_scan(rng):
    """Second derivatives of a recurrent cost: grad of the backward loop, inside a scan."""
    h0, W, xs = T.vector("h0"), T.matrix("W"), T.matrix("xs")
    hs, _ = graphc.scan(lambda x_t, h, W: T.tanh(T.dot(W, h) + x_t), sequences=xs,
                        outputs_info=h0, non_sequences=W)
    cost = (hs ** 2).sum()
    H = graphc.function([h0, W, xs], hessian(cost, h0))
    g = graphc.function([h0, W, xs], graphc.grad(cost, h0))
    Wv, xv, h0v = 0.5 * rng.standard_normal((3, 3)), rng.standard_normal((4, 3)), \
        rng.standard_normal(3)
    np.testing.assert_allclose(H(h0v, Wv, xv), numeric_jacobian(lambda v: g(v, Wv, xv), h0v),
                               rtol=1e-6, atol=1e-7)
