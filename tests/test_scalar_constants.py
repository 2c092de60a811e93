"""Python scalars in graphs (graphc/tensor/var.py): equal scalars share one weak constant,
which keeps every semantic of a fresh one (sign of zero, NaN, dtype under floatX)."""
import numpy as np

import graphc
import graphc.tensor as T
from graphc.configdefaults import config
from graphc.tensor.var import as_tensor_variable


def test_equal_scalars_share_one_weak_constant():
    a, b = as_tensor_variable(1.5), as_tensor_variable(1.5)
    assert a is b and a.tag.weak
    assert as_tensor_variable(2) is not as_tensor_variable(2.0)       # int vs float
    assert as_tensor_variable(True) is not as_tensor_variable(1)
    with config.change_flags(floatX="float32"):
        c = as_tensor_variable(1.5)
    with config.change_flags(floatX="float64"):
        d = as_tensor_variable(1.5)
    assert c.dtype == "float32" and d.dtype == "float64"


def test_the_sign_of_zero_and_nan_survive_sharing():
    pos, neg = as_tensor_variable(0.0), as_tensor_variable(-0.0)
    assert pos is not neg
    assert np.signbit(neg.data) and not np.signbit(pos.data)
    x = T.vector("x")
    f = graphc.function([x], [x / -0.0, x / 0.0, x + float("nan")])
    v = np.array([1.0, -2.0], dtype=x.dtype)
    neg_inf, pos_inf, nan = f(v)
    np.testing.assert_array_equal(neg_inf, [-np.inf, np.inf])
    np.testing.assert_array_equal(pos_inf, [np.inf, -np.inf])
    assert np.isnan(nan).all()
    # compiled one after the other in one process (kernels are memoized by their spec)
    for c, want in ((-0.0, [-np.inf, np.inf]), (0.0, [np.inf, -np.inf])):
        np.testing.assert_array_equal(graphc.function([x], x / c)(v), want)


def test_kernel_constants_compare_bit_for_bit():
    from graphc.backend.kernel_spec import ExactFloat, const_ref
    assert const_ref(-0.0, "float64") != const_ref(0.0, "float64")
    assert hash(const_ref(-0.0, "float64")) != hash(const_ref(0.0, "float64"))
    nan = float("nan")
    assert const_ref(nan, "float64") == const_ref(nan, "float64")
    assert const_ref(1.5, "float32") == ("const", 1.5, "float32")
    assert repr(ExactFloat(-0.0)) == "-0.0" and isinstance(ExactFloat(2.0), float)
    import pickle
    assert pickle.loads(pickle.dumps(ExactFloat(-0.0))) == ExactFloat(-0.0)


def test_a_shared_constant_in_many_places_computes_what_numpy_does():
    x = T.vector("x")
    y = x
    for _ in range(50):
        y = y * 1.0001 + 0.0001
    f = graphc.function([x], y)
    v = np.linspace(-1, 1, 7).astype(x.dtype)
    want = v.copy()
    for _ in range(50):
        want = want * np.asarray(1.0001, x.dtype) + np.asarray(0.0001, x.dtype)
    np.testing.assert_allclose(f(v), want, rtol=1e-6)
