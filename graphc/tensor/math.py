"""Elementwise math, reductions and products under Theano's names."""
from __future__ import annotations

import builtins

import numpy as np

from graphc.graph.basic import Apply, Constant, Op
from graphc.tensor.basic import (cast, constant, identity, ones_like, second, shape_i,
                                 zeros_like, reshape, as_shape_vector)
from graphc.tensor.elemwise import CAReduce, describe, describe_values, elemwise, shape_error
from graphc.tensor.type import TensorType, is_float, upcast
from graphc.tensor.var import as_tensor_variable


def _ew(name):
    op = elemwise(name)

    def f(*args):
        return op(*args)

    f.__name__ = name
    f.__doc__ = f"Elementwise {name} (numpy semantics, broadcasting)."
    return f


neg = _ew("neg")
exp = _ew("exp")
log = _ew("log")
log1p = _ew("log1p")
expm1 = _ew("expm1")
sqrt = _ew("sqrt")
sqr = _ew("sqr")
abs_ = _ew("abs")
sgn = _ew("sgn")
tanh = _ew("tanh")
sin = _ew("sin")
cos = _ew("cos")
erf = _ew("erf")
floor = _ew("floor")
ceil = _ew("ceil")
sigmoid = _ew("sigmoid")
softplus = _ew("softplus")
invert = _ew("invert")
reciprocal = _ew("reciprocal")
inv = reciprocal
add = _ew("add")
sub = _ew("sub")
mul = _ew("mul")
true_div = _ew("true_div")
floor_div = _ew("int_div")
int_div = floor_div
mod = _ew("mod")
pow = _ew("pow")
maximum = _ew("maximum")
minimum = _ew("minimum")
lt = _ew("lt")
gt = _ew("gt")
le = _ew("le")
ge = _ew("ge")
eq = _ew("eq")
neq = _ew("neq")
and_ = _ew("and")
or_ = _ew("or")
xor = _ew("xor")
bitwise_and, bitwise_or, bitwise_xor, bitwise_not = and_, or_, xor, invert
less, greater, less_equal, greater_equal, equal, not_equal = lt, gt, le, ge, eq, neq


def div_proxy(x, y):
    """Theano's ``/``: floor division for two ints would surprise; true division always."""
    return true_div(x, y)


def switch(cond, ift, iff):
    return elemwise("switch")(cond, ift, iff)


where = switch


def clip(x, min, max):
    return elemwise("clip")(x, min, max)


def round(x, mode=None):
    """Round half to even (numpy's and Theano's ``half_to_even``)."""
    if mode not in (None, "half_to_even"):
        raise ValueError(f"round: mode {mode!r} not supported; use 'half_to_even'")
    return elemwise("round")(x)


round_half_to_even = round


def iround(x):
    return cast(round(x), "int64")


def sqr_sum(x, axis=None):
    return sum(sqr(x), axis=axis)


def isnan(x):
    x = as_tensor_variable(x)
    return neq(x, x)


def isinf(x):
    x = as_tensor_variable(x)
    return eq(abs_(x), np.inf)


def log2(x):
    return log(x) / float(np.log(2.0))   # a weak Python float


def log10(x):
    return log(x) / float(np.log(10.0))


def exp2(x):
    return pow(2.0, x)


def tan(x):
    return sin(x) / cos(x)


def sinh(x):
    return (exp(x) - exp(-x)) / 2


def cosh(x):
    return (exp(x) + exp(-x)) / 2


def logsumexp(x, axis=None, keepdims=False):
    """Max-shifted log(sum(exp(x))): finite for large |x|."""
    x = as_tensor_variable(x)
    m = max(x, axis=axis, keepdims=True)
    m = switch(isinf(m), zeros_like(m), m)  # all -inf slices give -inf, not nan
    r = log(sum(exp(x - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        r = _drop_kept(r, x.ndim, axis)
    return r


def _drop_kept(r, ndim, axis):
    axes = _norm_axis(axis, ndim)
    return r.dimshuffle([d for d in range(ndim) if d not in axes])


# --------------------------------------------------------------------------- reductions
def _norm_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = [axis]
    if isinstance(axis, Constant):
        axis = np.asarray(axis.data).reshape(-1).tolist()
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a {ndim}-d tensor")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _keep(r, x, axes, keepdims):
    if not keepdims:
        return r
    pattern, j = [], 0
    for d in range(x.ndim):
        if d in axes:
            pattern.append("x")
        else:
            pattern.append(j)
            j += 1
    return r.dimshuffle(pattern)


def _reduce(kind, x, axis, keepdims, acc_dtype=None, dtype=None):
    x = as_tensor_variable(x)
    axes = _norm_axis(axis, x.ndim)
    if not axes:
        r = x if kind not in ("and", "or") else neq(x, 0)
    else:
        r = CAReduce(kind, None if len(axes) == x.ndim else axes, acc_dtype)(x)
    if dtype is not None:
        r = cast(r, dtype)
    return _keep(r, x, axes, keepdims)


def sum(input, axis=None, dtype=None, keepdims=False, acc_dtype=None):
    return _reduce("add", input, axis, keepdims, acc_dtype, dtype)


def prod(input, axis=None, dtype=None, keepdims=False, acc_dtype=None, no_zeros_in_input=False):
    return _reduce("mul", input, axis, keepdims, acc_dtype, dtype)


def max(x, axis=None, keepdims=False):
    return _reduce("max", x, axis, keepdims)


def min(x, axis=None, keepdims=False):
    return _reduce("min", x, axis, keepdims)


def any(x, axis=None, keepdims=False):
    return _reduce("or", neq(x, 0) if as_tensor_variable(x).dtype != "bool" else x, axis, keepdims)


def all(x, axis=None, keepdims=False):
    return _reduce("and", neq(x, 0) if as_tensor_variable(x).dtype != "bool" else x, axis, keepdims)


def _count(x, axes):
    n = None
    for a in axes:
        s = shape_i(x, a)
        n = s if n is None else n * s
    return n if n is not None else constant(np.int64(1))


def mean(input, axis=None, dtype=None, keepdims=False, acc_dtype=None):
    x = as_tensor_variable(input)
    axes = _norm_axis(axis, x.ndim)
    s = sum(x, axis=axes, keepdims=keepdims, dtype=dtype)
    if not is_float(s.dtype):
        from graphc.configdefaults import config
        s = cast(s, "float64" if x.dtype in ("int32", "int64", "uint32", "uint64") else config.floatX)
    n = _count(x, axes)
    return true_div(s, cast(n, s.dtype))


def var(input, axis=None, ddof=0, keepdims=False, corrected=False):
    x = as_tensor_variable(input)
    axes = _norm_axis(axis, x.ndim)
    if corrected:
        ddof = 1
    m = mean(x, axis=axes, keepdims=True)
    d = x - m
    s = sum(d * d, axis=axes, keepdims=keepdims)
    n = cast(_count(x, axes) - ddof, s.dtype)
    return s / n


def std(input, axis=None, ddof=0, keepdims=False, corrected=False):
    return sqrt(var(input, axis=axis, ddof=ddof, keepdims=keepdims, corrected=corrected))


class Argmax(Op):
    """Index of the max (or min) over one axis, or over the flattened input (axis None)."""

    __props__ = ("axis", "kind")

    def __init__(self, axis, kind="max"):
        self.axis = axis
        self.kind = kind

    def make_node(self, x):
        x = as_tensor_variable(x)
        if self.axis is None:
            shape = ()
        else:
            shape = tuple(s for d, s in enumerate(x.type.shape) if d != self.axis)
        return Apply(self, [x], [TensorType("int64", shape=shape)()])

    def perform(self, node, inputs, out):
        f = np.argmax if self.kind == "max" else np.argmin
        try:
            out[0][0] = np.asarray(f(inputs[0], axis=self.axis), dtype=np.int64)
        except ValueError as e:
            raise shape_error(self, describe_values(inputs), str(e),
                              getattr(node.tag, "trace", [])) from None

    def infer_shape(self, node, shapes):
        if self.axis is None:
            return [()]
        return [tuple(s for d, s in enumerate(shapes[0]) if d != self.axis)]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(inputs[0])]

    def connection_pattern(self, node):
        return [[False]]


def _arg(kind, x, axis, keepdims):
    x = as_tensor_variable(x)
    if axis is None:
        if x.ndim <= 1:
            r = Argmax(None if x.ndim == 0 else 0, kind)(x) if x.ndim else constant(np.int64(0))
        else:
            r = Argmax(None, kind)(x)
        axes = tuple(range(x.ndim))
    else:
        axes = _norm_axis(axis, x.ndim)
        if len(axes) != 1:
            raise ValueError(f"arg{kind} over several axes is not supported; got axis={axis}")
        r = Argmax(axes[0], kind)(x)
    return _keep(r, x, axes, keepdims)


def argmax(x, axis=None, keepdims=False):
    return _arg("max", x, axis, keepdims)


def argmin(x, axis=None, keepdims=False):
    return _arg("min", x, axis, keepdims)


def max_and_argmax(x, axis=None, keepdims=False):
    return max(x, axis, keepdims), argmax(x, axis, keepdims)


# --------------------------------------------------------------------------- products
class Dot(Op):
    """numpy.dot for 1-d and 2-d operands (vector.vector, matrix.vector, vector.matrix,
    matrix.matrix).  Higher ranks go through tensordot/batched_dot."""

    __props__ = ()

    def make_node(self, x, y):
        x, y = as_tensor_variable(x), as_tensor_variable(y)
        if x.ndim not in (1, 2) or y.ndim not in (1, 2):
            raise TypeError(f"Dot: operands must be 1-d or 2-d, got {describe([x, y])}; use "
                            f"T.tensordot or T.batched_dot for higher ranks")
        kx, ky = x.type.shape[-1], y.type.shape[0]
        if kx is not None and ky is not None and kx != ky:
            raise shape_error(self, describe([x, y]),
                              f"inner dimensions differ ({kx} vs {ky})")
        shape = x.type.shape[:-1] + y.type.shape[1:]
        dtype = upcast(x.dtype, y.dtype)
        return Apply(self, [x, y], [TensorType(dtype, shape=shape)()])

    def perform(self, node, inputs, out):
        x, y = inputs
        if x.shape[-1] != y.shape[0]:
            raise shape_error(self, describe_values(inputs),
                              f"inner dimensions differ ({x.shape[-1]} vs {y.shape[0]})",
                              getattr(node.tag, "trace", []))
        out[0][0] = np.asarray(np.dot(x, y), dtype=node.outputs[0].type.numpy_dtype)

    def infer_shape(self, node, shapes):
        sx, sy = shapes
        return [tuple(sx[:-1]) + tuple(sy[1:])]

    def L_op(self, inputs, outputs, grads):
        x, y = inputs
        g = grads[0]
        if x.ndim == 1 and y.ndim == 1:
            gx, gy = g * y, g * x
        elif x.ndim == 2 and y.ndim == 1:
            gx, gy = outer(g, y), dot(x.T, g)
        elif x.ndim == 1 and y.ndim == 2:
            gx, gy = dot(y, g), outer(x, g)
        else:
            gx, gy = dot(g, y.T), dot(x.T, g)
        return [cast(gx, x.dtype) if is_float(x.dtype) else _zg(x),
                cast(gy, y.dtype) if is_float(y.dtype) else _zg(y)]


def _zg(x):
    from graphc.gradient import zeros_grad
    return zeros_grad(x)


_dot = Dot()


def dot(a, b):
    """``T.dot``: numpy.dot semantics for any ranks (a scalar operand multiplies)."""
    a, b = as_tensor_variable(a), as_tensor_variable(b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.ndim <= 2 and b.ndim <= 2:
        return _dot(a, b)
    return tensordot(a, b, [[a.ndim - 1], [builtins.max(0, b.ndim - 2)]])


def outer(x, y):
    x, y = as_tensor_variable(x), as_tensor_variable(y)
    if x.ndim != 1:
        x = x.flatten()
    if y.ndim != 1:
        y = y.flatten()
    return x.dimshuffle(0, "x") * y.dimshuffle("x", 0)


def tensordot(a, b, axes=2):
    """numpy.tensordot, expressed as transpose + reshape + one 2-d dot."""
    a, b = as_tensor_variable(a), as_tensor_variable(b)
    if isinstance(axes, (int, np.integer)):
        ax_a = list(range(a.ndim - axes, a.ndim))
        ax_b = list(range(axes))
    else:
        ax_a, ax_b = [list(np.atleast_1d(v)) for v in axes]
    ax_a = [int(v) % a.ndim for v in ax_a]
    ax_b = [int(v) % b.ndim for v in ax_b]
    if len(ax_a) != len(ax_b):
        raise ValueError(f"tensordot: axes {axes} differ in length")
    for i, j in zip(ax_a, ax_b):
        sa, sb = a.type.shape[i], b.type.shape[j]
        if sa is not None and sb is not None and sa != sb:
            raise shape_error("tensordot", describe([a, b]), f"summed axes {i} and {j} differ")
    free_a = [d for d in range(a.ndim) if d not in ax_a]
    free_b = [d for d in range(b.ndim) if d not in ax_b]
    at = a.dimshuffle(free_a + ax_a)
    bt = b.dimshuffle(ax_b + free_b)
    fa = [shape_i(a, d) for d in free_a]
    fb = [shape_i(b, d) for d in free_b]
    k = _prod_static([a.type.shape[d] for d in ax_a], [shape_i(a, d) for d in ax_a])
    m = _prod_static([a.type.shape[d] for d in free_a], fa)
    n = _prod_static([b.type.shape[d] for d in free_b], fb)
    r = _dot(reshape(at, [m, k]), reshape(bt, [k, n]))
    return reshape(r, fa + fb)


def _prod_static(static, symbolic):
    if builtins.all(s is not None for s in static):
        return int(np.prod(static)) if static else 1
    r = constant(np.int64(1))
    for s in symbolic:
        r = r * s
    return r


class BatchedDot(Op):
    """matmul over a leading batch dimension: (b,n,k) x (b,k,m) -> (b,n,m) (or vectors)."""

    __props__ = ()

    def make_node(self, x, y):
        x, y = as_tensor_variable(x), as_tensor_variable(y)
        if x.ndim not in (2, 3) or y.ndim not in (2, 3):
            raise TypeError(f"BatchedDot: operands must be 2-d or 3-d, got {describe([x, y])}")
        bx, by = x.type.shape[0], y.type.shape[0]
        if bx is not None and by is not None and bx != by:
            raise shape_error(self, describe([x, y]), "batch sizes differ")
        kx = x.type.shape[-1]
        ky = y.type.shape[1]
        if kx is not None and ky is not None and kx != ky:
            raise shape_error(self, describe([x, y]), "inner dimensions differ")
        shape = (bx if bx is not None else by,) + x.type.shape[1:-1] + y.type.shape[2:]
        return Apply(self, [x, y], [TensorType(upcast(x.dtype, y.dtype), shape=shape)()])

    def perform(self, node, inputs, out):
        x, y = inputs
        try:
            xe = x if x.ndim == 3 else x[:, None, :]
            ye = y if y.ndim == 3 else y[:, :, None]
            r = np.matmul(xe, ye)
        except ValueError as e:
            raise shape_error(self, describe_values(inputs), str(e),
                              getattr(node.tag, "trace", [])) from None
        if x.ndim == 2:
            r = r[:, 0]
        if y.ndim == 2:
            r = r[..., 0]
        out[0][0] = np.asarray(r, dtype=node.outputs[0].type.numpy_dtype)

    def infer_shape(self, node, shapes):
        sx, sy = shapes
        return [(sx[0],) + tuple(sx[1:-1]) + tuple(sy[2:])]

    def L_op(self, inputs, outputs, grads):
        x, y = inputs
        g = grads[0]
        xe = x if x.ndim == 3 else x.dimshuffle(0, "x", 1)
        ye = y if y.ndim == 3 else y.dimshuffle(0, 1, "x")
        ge = g
        if x.ndim == 2:
            ge = ge.dimshuffle(0, "x", *range(1, g.ndim))
        if y.ndim == 2:
            ge = ge.dimshuffle(*range(ge.ndim), "x")
        gx = _batched(ge, ye.dimshuffle(0, 2, 1))
        gy = _batched(xe.dimshuffle(0, 2, 1), ge)
        if x.ndim == 2:
            gx = gx.dimshuffle(0, 2)
        if y.ndim == 2:
            gy = gy.dimshuffle(0, 1)
        return [cast(gx, x.dtype), cast(gy, y.dtype)]


_batched = BatchedDot()


def batched_dot(a, b):
    """``T.batched_dot``: a[i].dot(b[i]) for every i of the leading dimension."""
    a, b = as_tensor_variable(a), as_tensor_variable(b)
    if a.ndim == 2 and b.ndim == 2:
        return sum(a * b, axis=1)
    return _batched(a, b)
