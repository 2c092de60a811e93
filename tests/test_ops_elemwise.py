"""Elementwise ops against numpy: values, dtypes, broadcasting, edge values, gradients,
inferred shapes (see tests/op_table.py), plus Python operators and weak scalars."""
import numpy as np
import pytest
import scipy.special

import graphc
import graphc.tensor as T
from op_table import (EDGE_FLOAT, EDGE_INT, F_AND_I, FLOATS, INTS, MODE_IDS, MODES, Arg,
                      Case, case_tests, edge_pairs)

M = (3, 4)
U = [EDGE_FLOAT]                 # unary edge column
B = edge_pairs()                 # binary edge columns: every pair of edge values
B_INT = edge_pairs(EDGE_INT)
NZ_INT = [v for v in EDGE_INT if v != 0]
B_INT_NZ = [[a for a in EDGE_INT for b in NZ_INT], [b for a in EDGE_INT for b in NZ_INT]]
BIN_BCAST = [((3, 4), (1, 4)), ((3, 1), (1, 4)), ((3, 4), (4,)), ((), (3, 4)),
             ((2, 3, 4), (3, 1))]


def unary(name, f, ref, kind="any", dtypes=F_AND_I, grad=True, edge=True, **kw):
    return Case(name, f, ref, [Arg(M, kind)], dtypes=dtypes, grad=grad,
                edge=U if edge else None, edge_int=[EDGE_INT] if edge else None, **kw)


def binary(name, f, ref, kinds=("any", "any"), dtypes=F_AND_I, grad=True, edge=True,
           edge_int=B_INT, **kw):
    return Case(name, f, ref, [Arg(M, kinds[0]), Arg(M, kinds[1])], dtypes=dtypes, grad=grad,
                bcast=BIN_BCAST, edge=B if edge else None,
                edge_int=edge_int if edge else None, **kw)


def _np_round(x):
    return np.round(x) if x.dtype.kind == "f" else x


TABLE = [
    # ---- unary, float-valued
    unary("neg", lambda x: -x, np.negative),
    unary("exp", T.exp, np.exp),
    unary("log", T.log, np.log, "pos"),
    unary("log1p", T.log1p, np.log1p, "pos"),
    unary("expm1", T.expm1, np.expm1),
    unary("sqrt", T.sqrt, np.sqrt, "pos"),
    unary("sqr", T.sqr, np.square),
    unary("abs", T.abs_, np.abs, "nonzero"),
    unary("abs_builtin", abs, np.abs, "nonzero", grad=False, edge=False),
    unary("sgn", T.sgn, np.sign, grad=False),
    unary("tanh", T.tanh, np.tanh),
    unary("sin", T.sin, np.sin),
    unary("cos", T.cos, np.cos),
    unary("tan", T.tan, np.tan, "unit"),
    unary("sinh", T.sinh, np.sinh, edge=False),
    unary("cosh", T.cosh, np.cosh, edge=False),
    unary("erf", T.erf, scipy.special.erf),
    unary("sigmoid", T.nnet.sigmoid, scipy.special.expit),
    unary("softplus", T.nnet.softplus, lambda x: np.logaddexp(0, x)),
    unary("reciprocal", T.reciprocal, lambda x: 1.0 / x, "nonzero", edge=False),
    unary("log2", T.log2, np.log2, "pos"),
    unary("log10", T.log10, np.log10, "pos"),
    unary("exp2", T.exp2, np.exp2, dtypes=FLOATS),
    unary("floor", T.floor, np.floor, grad=False),
    unary("ceil", T.ceil, np.ceil, grad=False),
    unary("round", T.round, _np_round, grad=False),
    unary("iround", T.iround, lambda x: np.round(x).astype("int64"), dtypes=FLOATS, grad=False,
          edge=False),
    unary("isnan", T.isnan, np.isnan, grad=False),
    unary("isinf", T.isinf, np.isinf, grad=False),
    unary("tensor_copy", T.tensor_copy, np.copy),
    unary("invert", lambda x: ~x, np.invert, dtypes=INTS + ("int8", "bool"), grad=False),
    # ---- binary arithmetic (Python operators and functions)
    binary("add", lambda x, y: x + y, np.add),
    binary("sub", lambda x, y: x - y, np.subtract),
    binary("mul", lambda x, y: x * y, np.multiply),
    binary("true_div", lambda x, y: x / y, np.true_divide, ("any", "nonzero"),
           edge_int=B_INT_NZ),
    binary("int_div", lambda x, y: x // y, np.floor_divide, ("any", "nonzero"), grad=False,
           edge_int=B_INT_NZ),
    binary("mod", lambda x, y: x % y, np.mod, ("any", "nonzero"), edge_int=B_INT_NZ),
    binary("pow", lambda x, y: x ** y, np.power, ("pos", "small"), edge_int=None),
    binary("pow_fn", T.pow, np.power, ("pos", "small"), dtypes=FLOATS, edge=False),
    binary("maximum", T.maximum, np.maximum),
    binary("minimum", T.minimum, np.minimum),
    binary("lt", lambda x, y: x < y, np.less, grad=False),
    binary("gt", lambda x, y: x > y, np.greater, grad=False),
    binary("le", T.le, np.less_equal, grad=False),
    binary("ge", T.ge, np.greater_equal, grad=False),
    binary("eq", T.eq, np.equal, grad=False),
    binary("neq", T.neq, np.not_equal, grad=False),
    binary("and", lambda x, y: x & y, np.bitwise_and, dtypes=INTS + ("bool", "uint8"),
           grad=False, edge=False),
    binary("or", T.or_, np.bitwise_or, dtypes=INTS + ("bool", "uint8"), grad=False, edge=False),
    binary("xor", lambda x, y: x ^ y, np.bitwise_xor, dtypes=INTS + ("bool",), grad=False,
           edge=False),
    # ---- ternary
    Case("switch", lambda c, x, y: T.switch(c, x, y), np.where,
         [Arg(M, dtype="bool"), Arg(M), Arg(M)], dtypes=F_AND_I,
         bcast=[((3, 4), (1, 4), (3, 1)), ((3, 1), (3, 4), ()), ((), (3, 4), (3, 4))]),
    Case("switch_intcond", lambda c, x, y: T.switch(c, x, y), np.where,
         [Arg(M, "idx:2", "int8"), Arg(M), Arg(M)]),
    Case("clip", T.clip, np.clip, [Arg(M, "small"), Arg((), "neg"), Arg((), "pos")],
         dtypes=F_AND_I, bcast=[((3, 4), (1, 4), (3, 1))],
         edge=[EDGE_FLOAT, [-1.0] * 13, [1.0] * 13], edge_int=[EDGE_INT, [-2] * 8, [5] * 8]),
    # lo > hi: numpy gives hi everywhere, so only hi gets a gradient
    Case("clip_inverted", T.clip, np.clip, [Arg(M, "small"), Arg((), "pos"), Arg((), "neg")]),
    # ---- casts and fills
    # (float32 rounding defeats finite differences: its gradient is in test_grad.py)
    Case("cast_f32", lambda x: T.cast(x, "float32"), lambda x: x.astype("float32"), [Arg(M)],
         dtypes=("float64", "int64", "bool"), grad=False, check_dtype=False, edge=U,
         edge_int=[EDGE_INT]),
    Case("cast_f64", lambda x: T.cast(x, "float64"), lambda x: x.astype("float64"), [Arg(M)],
         dtypes=("float32", "int32", "uint8"), check_dtype=False),
    Case("cast_i32", lambda x: T.cast(x, "int32"), lambda x: x.astype("int32"), [Arg(M, "small")],
         dtypes=F_AND_I, grad=False, edge_int=[EDGE_INT]),
    Case("cast_bool", lambda x: T.cast(x, "bool"), lambda x: x.astype("bool"), [Arg(M)],
         dtypes=F_AND_I, grad=False, edge=U, edge_int=[EDGE_INT]),
    Case("fill", T.fill, lambda x, v: np.broadcast_to(v, x.shape).copy(), [Arg(M), Arg(())],
         dtypes=F_AND_I, bcast=[((3, 4), (1, 4))]),
    Case("zeros_like", T.zeros_like, np.zeros_like, [Arg(M)], dtypes=F_AND_I + ("bool",),
         grad=False),
    Case("ones_like", T.ones_like, np.ones_like, [Arg(M)], dtypes=F_AND_I, grad=False),
]

case_tests(TABLE, globals())


# --------------------------------------------------------------------------- Python operators
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_python_operators_and_weak_scalars(mode, rng):
    x = T.fmatrix("x")
    y = T.frow("y")
    xv = rng.uniform(0.5, 2, (3, 4)).astype("float32")
    yv = rng.uniform(0.5, 2, (1, 4)).astype("float32")
    exprs = [2 + x, x - 1, 3 * x, 1.5 / x, x ** 2, 2 ** x, -x + y, abs(-x), x // 0.3, x % 0.7,
             y / x, x @ y.T, 1 - y, x > 1, 1 < x, (x > 1) & (y < 1.5), (x > 1) | (y < 1.5),
             ~(x > 1), (x > 1) ^ (y > 1)]
    refs = [2 + xv, xv - 1, 3 * xv, 1.5 / xv, xv ** 2, 2 ** xv, -xv + yv, abs(-xv), xv // 0.3,
            xv % 0.7, yv / xv, xv @ yv.T, 1 - yv, xv > 1, 1 < xv, (xv > 1) & (yv < 1.5),
            (xv > 1) | (yv < 1.5), ~(xv > 1), (xv > 1) ^ (yv > 1)]
    for e, r in zip(exprs, refs):
        # Python scalars are weak: they never upcast a float32 tensor
        assert e.dtype == r.dtype.name, (e, e.dtype, r.dtype)
    f = graphc.function([x, y], exprs, mode=mode)
    for k, (got, r) in enumerate(zip(f(xv, yv), refs)):
        assert got.dtype == r.dtype, k
        np.testing.assert_allclose(got, r, rtol=1e-5, err_msg=str(exprs[k]))


def test_weak_scalar_dtype_rules():
    i = T.ivector()
    b = T.bvector()
    f = T.fvector()
    assert (i + 1).dtype == "int32"
    assert (i * 2.5).dtype == "float64"   # an int tensor with a float literal: float64
    assert (b + 0.5).dtype == graphc.config.floatX
    assert (f + 1).dtype == "float32"
    assert (f * 1e10).dtype == "float32"
    assert (f + np.float64(1)).dtype == "float64"    # a numpy scalar is strong, as in numpy
    assert (i + T.lscalar()).dtype == "int64"
    assert (i / 2).dtype == "float64"
    assert T.cast(i, "float32").dtype == "float32"
    assert (T.bvector() < 3).dtype == "bool"
    # a Python int that does not fit widens the dtype (as Theano), never wraps around
    assert (T.bvector() + 300).dtype == "int16"
    assert (T.bvector() * 3).dtype == "int8"
    bv = T.bvector("bv")
    assert graphc.function([bv], bv + 300)(np.array([1], "int8"))[0] == 301


def test_symbolic_variables_have_no_truth_value():
    x = T.scalar()
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 0)
    assert (x == x) is True     # identity, as in Theano: T.eq is the elementwise test
    with pytest.raises(TypeError, match="len"):
        len(T.vector())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_elemwise_runtime_broadcast_is_checked(mode):
    x, y = T.matrix("x"), T.matrix("y")
    f = graphc.function([x, y], x + y, mode=mode)
    with pytest.raises(ValueError, match="broadcast"):
        # y's first dim is 1 but it was not declared broadcastable: Theano's rule
        f(np.ones((3, 4)), np.ones((1, 4)))
    r = T.row("r")
    g = graphc.function([x, r], x + r, mode=mode)
    np.testing.assert_allclose(g(np.ones((3, 4)), np.arange(4.0)[None]),
                               np.ones((3, 4)) + np.arange(4.0))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_constructors_dtypes(mode):
    names = {"scalar": 0, "vector": 1, "row": 2, "col": 2, "matrix": 2, "tensor3": 3,
             "tensor4": 4}
    prefixes = {"b": "int8", "w": "int16", "i": "int32", "l": "int64", "f": "float32",
                "d": "float64"}
    for kind, nd in names.items():
        v = getattr(T, kind)("v")
        assert v.ndim == nd and v.dtype == graphc.config.floatX and v.name == "v"
        for p, dt in prefixes.items():
            w = getattr(T, p + kind)()
            assert (w.ndim, w.dtype) == (nd, dt)
    assert T.row().broadcastable == (True, False)
    assert T.col().broadcastable == (False, True)
    t = T.TensorType("float32", (False, True))("t")
    assert t.broadcastable == (False, True) and t.type.shape == (None, 1)
    a, b = T.dmatrices("a", "b")
    f = graphc.function([a, b, t], [a * b, T.dot(a, T.cast(t, "float64"))], mode=mode)
    r = f(np.ones((2, 2)), np.full((2, 2), 3.0), np.ones((2, 1), "float32"))
    np.testing.assert_allclose(r[0], 3 * np.ones((2, 2)))
    np.testing.assert_allclose(r[1], 2 * np.ones((2, 1)))
    with graphc.config.change_flags(floatX="float32"):
        assert T.matrix().dtype == "float32"
