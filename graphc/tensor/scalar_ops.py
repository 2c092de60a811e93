"""The closed set of scalar primitives that Elemwise applies pointwise.

One record per primitive, on adjacent lines: arity, numpy reference, dtype rule and
gradient rule.  Gradient rules receive tensor variables (inputs, the output, the output
gradient) and return one gradient per input, built from graphc's own tensor ops, or
``None`` where the input gets no gradient (integer-valued results).
"""
from __future__ import annotations

import math
import numpy as np

from graphc.tensor.type import FLOAT_DTYPES, upcast


def _to_float(dtype: str) -> str:
    """Theano's upgrade_to_float: small ints go to float32, wide ints to float64."""
    if dtype in FLOAT_DTYPES:
        return dtype
    if dtype in ("bool", "int8", "uint8", "int16", "uint16"):
        return "float32"
    return "float64"


RULES = {
    "same": lambda ds, p: upcast(*ds),
    "float": lambda ds, p: _to_float(upcast(*ds)),
    "bool": lambda ds, p: "bool",
    "cast": lambda ds, p: p,
    "switch": lambda ds, p: upcast(*ds[1:]),
    "second": lambda ds, p: ds[1],
}


class ScalarOp:
    """A scalar primitive. ``param`` holds the target dtype of 'cast' (else None)."""

    __slots__ = ("name", "nin", "impl", "rule", "grad", "param")

    def __init__(self, name, nin, impl, rule, grad, param=None):
        self.name, self.nin, self.impl, self.rule, self.grad, self.param = (
            name, nin, impl, rule, grad, param)

    def out_dtype(self, dtypes):
        return RULES[self.rule](list(dtypes), self.param)

    def __eq__(self, other):
        return isinstance(other, ScalarOp) and (self.name, self.param) == (other.name, other.param)

    def __hash__(self):
        return hash((self.name, self.param))

    def __str__(self):
        return self.name if self.param is None else f"{self.name}{{{self.param}}}"

    __repr__ = __str__


def _T():
    import graphc.tensor.math as m
    return m


# ---------------------------------------------------------------- gradient rules
# each: (inputs, out, g) -> [grad per input]
def _g_add(i, o, g): return [g, g]
def _g_sub(i, o, g): return [g, -g]
def _g_mul(i, o, g): return [g * i[1], g * i[0]]
def _g_div(i, o, g): return [g / i[1], -g * o / i[1]]
def _g_neg(i, o, g): return [-g]
def _g_exp(i, o, g): return [g * o]
def _g_log(i, o, g): return [g / i[0]]
def _g_log1p(i, o, g): return [g / (i[0] + 1)]
def _g_expm1(i, o, g): return [g * (o + 1)]
def _g_sqrt(i, o, g): return [g * 0.5 / o]
def _g_sqr(i, o, g): return [g * 2 * i[0]]
def _g_abs(i, o, g): return [g * _T().sgn(i[0])]
def _g_tanh(i, o, g): return [g * (1 - o * o)]
def _g_sin(i, o, g): return [g * _T().cos(i[0])]
def _g_cos(i, o, g): return [-g * _T().sin(i[0])]
def _g_erf(i, o, g): return [g * (2 / math.sqrt(math.pi)) * _T().exp(-i[0] * i[0])]
def _g_sigmoid(i, o, g): return [g * o * (1 - o)]
def _g_softplus(i, o, g): return [g * _T().sigmoid(i[0])]
def _g_recip(i, o, g): return [-g * o * o]
def _g_identity(i, o, g): return [g]
def _g_zero(i, o, g): return [None] * len(i)


def _g_pow(i, o, g):
    T = _T()
    x, y = i
    base = T.switch(T.gt(x, 0), x, T.ones_like(x))
    return [g * y * T.pow(x, y - 1), g * o * T.log(base)]


def _g_max(i, o, g):
    T = _T()
    return [g * T.cast(T.ge(i[0], i[1]), o.dtype), g * T.cast(T.lt(i[0], i[1]), o.dtype)]


def _g_min(i, o, g):
    T = _T()
    return [g * T.cast(T.le(i[0], i[1]), o.dtype), g * T.cast(T.gt(i[0], i[1]), o.dtype)]


def _g_clip(i, o, g):
    T = _T()
    x, lo, hi = i
    # clip = minimum(maximum(x, lo), hi): with lo > hi the result is hi everywhere
    inside = T.and_(T.ge(x, lo), T.le(x, hi))
    return [T.switch(inside, g, 0), T.switch(T.and_(T.lt(x, lo), T.le(lo, hi)), g, 0),
            T.switch(T.gt(T.maximum(x, lo), hi), g, 0)]


def _g_switch(i, o, g):
    T = _T()
    c = i[0]
    return [None, T.switch(c, g, 0), T.switch(c, 0, g)]


def _g_mod(i, o, g):
    T = _T()
    return [g, -g * T.floor_div(i[0], i[1])]


def _g_cast(i, o, g):
    return [_T().cast(g, i[0].dtype)]


def _g_second(i, o, g):
    return [None, g]


# ---------------------------------------------------------------- numpy references
def _int_div(x, y):
    return np.floor_divide(x, y)


def _round(x):
    return np.round(x) if x.dtype.kind == "f" else x


def _rounding(f):
    return lambda x: f(x) if np.asarray(x).dtype.kind == "f" else x


def _invert(x):
    return np.logical_not(x) if np.asarray(x).dtype == np.bool_ else np.invert(x)


def _softplus(x):
    return np.logaddexp(np.zeros((), dtype=np.asarray(x).dtype), x)


def _erf(x):
    # scipy.special is imported on first use: it costs ~0.3 s of CPU, more than the rest of
    # `import graphc`, and only these numpy references need it
    import scipy.special
    return scipy.special.erf(x)


def _sigmoid(x):
    import scipy.special
    return scipy.special.expit(x)


def _second(x, y):
    return np.broadcast_to(y, np.broadcast_shapes(np.shape(x), np.shape(y)))


_TABLE = [
    # name        nin  numpy reference             dtype    gradient
    ("neg",        1, np.negative,                 "same",  _g_neg),
    ("exp",        1, np.exp,                      "float", _g_exp),
    ("log",        1, np.log,                      "float", _g_log),
    ("log1p",      1, np.log1p,                    "float", _g_log1p),
    ("expm1",      1, np.expm1,                    "float", _g_expm1),
    ("sqrt",       1, np.sqrt,                     "float", _g_sqrt),
    ("sqr",        1, np.square,                   "same",  _g_sqr),
    ("abs",        1, np.abs,                      "same",  _g_abs),
    ("sgn",        1, np.sign,                     "same",  _g_zero),
    ("tanh",       1, np.tanh,                     "float", _g_tanh),
    ("sin",        1, np.sin,                      "float", _g_sin),
    ("cos",        1, np.cos,                      "float", _g_cos),
    ("erf",        1, _erf,                        "float", _g_erf),
    ("floor",      1, _rounding(np.floor),         "same",  _g_zero),
    ("ceil",       1, _rounding(np.ceil),          "same",  _g_zero),
    ("round",      1, _rounding(np.round),         "same",  _g_zero),
    ("sigmoid",    1, _sigmoid,                    "float", _g_sigmoid),
    ("softplus",   1, _softplus,                   "float", _g_softplus),
    ("invert",     1, _invert,                     "same",  _g_zero),
    ("identity",   1, lambda x: x,                 "same",  _g_identity),
    ("reciprocal", 1, np.reciprocal,               "float", _g_recip),
    ("add",        2, np.add,                      "same",  _g_add),
    ("sub",        2, np.subtract,                 "same",  _g_sub),
    ("mul",        2, np.multiply,                 "same",  _g_mul),
    ("true_div",   2, np.true_divide,              "float", _g_div),
    ("int_div",    2, _int_div,                    "same",  _g_zero),
    ("mod",        2, np.mod,                      "same",  _g_mod),
    ("pow",        2, np.power,                    "same",  _g_pow),
    ("maximum",    2, np.maximum,                  "same",  _g_max),
    ("minimum",    2, np.minimum,                  "same",  _g_min),
    ("lt",         2, np.less,                     "bool",  _g_zero),
    ("gt",         2, np.greater,                  "bool",  _g_zero),
    ("le",         2, np.less_equal,               "bool",  _g_zero),
    ("ge",         2, np.greater_equal,            "bool",  _g_zero),
    ("eq",         2, np.equal,                    "bool",  _g_zero),
    ("neq",        2, np.not_equal,                "bool",  _g_zero),
    ("and",        2, np.bitwise_and,              "same",  _g_zero),
    ("or",         2, np.bitwise_or,               "same",  _g_zero),
    ("xor",        2, np.bitwise_xor,              "same",  _g_zero),
    ("second",     2, _second,                     "second", _g_second),
    ("switch",     3, np.where,                    "switch", _g_switch),
    ("clip",       3, np.clip,                     "same",  _g_clip),
]

SCALAR: dict = {name: ScalarOp(name, nin, impl, rule, grad) for name, nin, impl, rule, grad in _TABLE}


def cast_op(dtype: str) -> ScalarOp:
    return ScalarOp("cast", 1, None, "cast", _g_cast, param=dtype)


# ops whose result is integer-valued: never differentiable
NON_DIFFERENTIABLE = frozenset({"sgn", "floor", "ceil", "round", "invert", "int_div", "lt", "gt",
                                "le", "ge", "eq", "neq", "and", "or", "xor"})
