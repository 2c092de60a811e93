"""TensorVariable (Python operators, methods), TensorConstant and as_tensor_variable."""
from __future__ import annotations

import math
import numbers

import numpy as np

from graphc.graph.basic import Constant, Variable
from graphc.tensor.type import TensorType


class _TensorMethods:
    """Operators and methods shared by tensor variables, constants and shared variables."""

    # ---- static info
    @property
    def ndim(self):
        return self.type.ndim

    @property
    def dtype(self):
        return self.type.dtype

    @property
    def broadcastable(self):
        return self.type.broadcastable

    @property
    def shape(self):
        from graphc.tensor.basic import shape
        return shape(self)

    @property
    def size(self):
        from graphc.tensor.math import prod
        return prod(self.shape)

    @property
    def T(self):
        return self.transpose()

    def __bool__(self):
        raise TypeError("a symbolic variable has no truth value; use T.switch / ifelse, or "
                        "compare with T.eq/T.lt instead of Python's == / if")

    def __len__(self):
        raise TypeError("len() of a symbolic variable is unknown; use x.shape[0]")

    def __iter__(self):
        n = self.type.shape[0] if self.ndim else None
        if n is None:
            raise TypeError("cannot iterate over a symbolic variable of unknown length")
        for i in range(n):
            yield self[i]

    # ---- arithmetic
    def __add__(self, o): return _m().add(self, o)
    def __radd__(self, o): return _m().add(o, self)
    def __sub__(self, o): return _m().sub(self, o)
    def __rsub__(self, o): return _m().sub(o, self)
    def __mul__(self, o): return _m().mul(self, o)
    def __rmul__(self, o): return _m().mul(o, self)
    def __truediv__(self, o): return _m().true_div(self, o)
    def __rtruediv__(self, o): return _m().true_div(o, self)
    def __floordiv__(self, o): return _m().floor_div(self, o)
    def __rfloordiv__(self, o): return _m().floor_div(o, self)
    def __mod__(self, o): return _m().mod(self, o)
    def __rmod__(self, o): return _m().mod(o, self)
    def __pow__(self, o): return _m().pow(self, o)
    def __rpow__(self, o): return _m().pow(o, self)
    def __neg__(self): return _m().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _m().abs_(self)
    def __lt__(self, o): return _m().lt(self, o)
    def __le__(self, o): return _m().le(self, o)
    def __gt__(self, o): return _m().gt(self, o)
    def __ge__(self, o): return _m().ge(self, o)
    def __and__(self, o): return _m().and_(self, o)
    def __rand__(self, o): return _m().and_(o, self)
    def __or__(self, o): return _m().or_(self, o)
    def __ror__(self, o): return _m().or_(o, self)
    def __xor__(self, o): return _m().xor(self, o)
    def __rxor__(self, o): return _m().xor(o, self)
    def __invert__(self): return _m().invert(self)
    def __matmul__(self, o): return _m().dot(self, o)
    def __rmatmul__(self, o): return _m().dot(o, self)

    # ---- indexing
    def __getitem__(self, idx):
        from graphc.tensor.subtensor import getitem
        return getitem(self, idx)

    # ---- methods (Theano names)
    def dimshuffle(self, *pattern):
        from graphc.tensor.elemwise import DimShuffle
        if len(pattern) == 1 and isinstance(pattern[0], (list, tuple)):
            pattern = pattern[0]
        pattern = tuple(p if p == "x" else int(p) for p in pattern)
        if pattern == tuple(range(self.ndim)):
            return self
        return DimShuffle(self.ndim, pattern)(self)

    def transpose(self, *axes):
        from graphc.tensor.basic import transpose
        return transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (list, tuple))
                         else (axes or None))

    def reshape(self, shape, ndim=None):
        from graphc.tensor.basic import reshape
        return reshape(self, shape, ndim)

    def flatten(self, ndim=1, outdim=None):
        from graphc.tensor.basic import flatten
        return flatten(self, outdim if outdim is not None else ndim)

    def astype(self, dtype):
        from graphc.tensor.basic import cast
        return cast(self, dtype)

    def sum(self, axis=None, dtype=None, keepdims=False, acc_dtype=None):
        return _m().sum(self, axis=axis, dtype=dtype, keepdims=keepdims, acc_dtype=acc_dtype)

    def prod(self, axis=None, dtype=None, keepdims=False):
        return _m().prod(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis=None, dtype=None, keepdims=False):
        return _m().mean(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def var(self, axis=None, ddof=0, keepdims=False, corrected=False):
        return _m().var(self, axis=axis, ddof=ddof, keepdims=keepdims, corrected=corrected)

    def std(self, axis=None, ddof=0, keepdims=False, corrected=False):
        return _m().std(self, axis=axis, ddof=ddof, keepdims=keepdims, corrected=corrected)

    def max(self, axis=None, keepdims=False):
        return _m().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _m().min(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, keepdims=False):
        return _m().argmax(self, axis=axis, keepdims=keepdims)

    def argmin(self, axis=None, keepdims=False):
        return _m().argmin(self, axis=axis, keepdims=keepdims)

    def any(self, axis=None, keepdims=False):
        return _m().any(self, axis=axis, keepdims=keepdims)

    def all(self, axis=None, keepdims=False):
        return _m().all(self, axis=axis, keepdims=keepdims)

    def norm(self, L, axis=None, keepdims=False):
        m = _m()
        if L == 1:
            return m.sum(m.abs_(self), axis=axis, keepdims=keepdims)
        if L == 2:
            return m.sqrt(m.sum(m.sqr(self), axis=axis, keepdims=keepdims))
        return m.pow(m.sum(m.pow(m.abs_(self), L), axis=axis, keepdims=keepdims), 1.0 / L)

    def dot(self, other):
        return _m().dot(self, other)

    def clip(self, a_min, a_max):
        return _m().clip(self, a_min, a_max)

    def round(self, mode=None):
        return _m().round(self, mode)

    def cumsum(self, axis=None):
        from graphc.tensor.extra_ops import cumsum
        return cumsum(self, axis)

    def repeat(self, repeats, axis=None):
        from graphc.tensor.extra_ops import repeat
        return repeat(self, repeats, axis)

    def copy(self, name=None):
        out = _m().identity(self)
        out.name = name
        return out

    def squeeze(self):
        return self.dimshuffle([i for i, b in enumerate(self.broadcastable) if not b])

    def zeros_like(self, dtype=None):
        from graphc.tensor.basic import zeros_like
        return zeros_like(self, dtype)

    def ones_like(self, dtype=None):
        from graphc.tensor.basic import ones_like
        return ones_like(self, dtype)

    def fill(self, value):
        from graphc.tensor.basic import fill
        return fill(self, value)


def _m():
    import graphc.tensor.math as m
    return m


class TensorVariable(_TensorMethods, Variable):
    __slots__ = ()
    __array_priority__ = 1000
    __hash__ = Variable.__hash__

    def __eq__(self, other):       # identity, as in Theano: use T.eq for elementwise equality
        return self is other

    def __ne__(self, other):
        return self is not other


class TensorConstant(_TensorMethods, Constant):
    __slots__ = ()
    __array_priority__ = 1000
    __hash__ = Constant.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    @property
    def value(self):
        return self.data


TensorType.variable_type = TensorVariable


def constant(x, name=None, ndim=None, dtype=None):
    """A TensorConstant holding ``x`` (full static shape)."""
    arr = np.asarray(x)
    if dtype is not None:
        arr = arr.astype(dtype)
    if arr.dtype.kind == "U" or arr.dtype == object:
        raise TypeError(f"cannot make a tensor constant from {type(x).__name__} {x!r}")
    if ndim is not None and arr.ndim != ndim:
        if arr.ndim > ndim:
            raise ValueError(f"constant {x!r} has {arr.ndim} dims, more than ndim={ndim}")
        arr = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
    ttype = TensorType(arr.dtype, shape=arr.shape)
    return TensorConstant(ttype, arr, name)


# Python scalars seen before -> their weak constant. Constants are immutable and a graph may
# use one in many places, so equal scalars share one: a chain like ``x * 1.0001 + 0.0001``
# repeated 100 times builds ~25% faster, and pickles (the graph cache's key) smaller.
_scalar_constants: dict = {}


def _python_scalar_constant(x):
    from graphc.configdefaults import config
    # the sign of a float zero is part of the key (-0.0 == 0.0, but 1 / -0.0 is -inf)
    key = (type(x), x, math.copysign(1.0, x) if isinstance(x, float) else 0, config.floatX)
    try:
        c = _scalar_constants.get(key)
    except TypeError:                       # an unhashable Number subclass
        key, c = None, None
    if c is not None:
        return c
    c = _new_scalar_constant(x, config)
    if key is not None and len(_scalar_constants) < 4096:
        _scalar_constants[key] = c
    return c


def _new_scalar_constant(x, config):
    if isinstance(x, (bool, np.bool_)):
        c = constant(np.bool_(x))
    elif isinstance(x, numbers.Integral):
        c = constant(np.int64(x)) if -2**63 <= x < 2**63 else constant(np.float64(x))
    elif isinstance(x, numbers.Real):
        c = constant(np.asarray(x, dtype=config.floatX))
    else:
        raise TypeError(f"cannot convert {type(x).__name__} {x!r} to a tensor")
    c.tag.weak = True
    return c


def as_tensor_variable(x, name=None, ndim=None, dtype=None):
    """Turn a Variable, Python scalar, numpy array or (nested) list into a tensor variable.
    Python scalars become *weak* constants that take the dtype of the other operands."""
    if isinstance(x, Variable):
        if not isinstance(x.type, TensorType):
            raise TypeError(f"expected a tensor, got {x} of type {x.type}")
        if ndim is not None and x.ndim != ndim:
            if x.ndim < ndim:
                x = x.dimshuffle(["x"] * (ndim - x.ndim) + list(range(x.ndim)))
            else:
                raise ValueError(f"{x} has {x.ndim} dims, expected {ndim}")
        return x
    if isinstance(x, (bool, numbers.Number)) and not isinstance(x, np.ndarray) and \
            not isinstance(x, np.generic) and dtype is None:
        c = _python_scalar_constant(x)
        return as_tensor_variable(c, ndim=ndim) if ndim else c
    if isinstance(x, (list, tuple)) and any(isinstance(e, Variable) for e in _flatten(x)):
        from graphc.tensor.basic import stack
        return stack([as_tensor_variable(e) for e in x])
    return constant(x, name=name, ndim=ndim, dtype=dtype)


def _flatten(seq):
    for e in seq:
        if isinstance(e, (list, tuple)):
            yield from _flatten(e)
        else:
            yield e
