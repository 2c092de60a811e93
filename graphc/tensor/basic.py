"""Shape and construction ops: cast, shape, reshape, alloc, join, arange, eye, ...

Symbolic shapes are int64 scalars; ``x.shape`` is an int64 vector.  Static sizes are
folded in wherever they are known, so most shape graphs are constants after rewriting.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Constant, Op, Variable
from graphc.tensor.elemwise import (DimShuffle, Elemwise, describe, describe_values,
                                    elemwise, shape_error)
from graphc.tensor.scalar_ops import cast_op
from graphc.tensor.type import TensorType, is_float, normalize_dtype
from graphc.tensor.var import TensorConstant, as_tensor_variable, constant

_CASTS = {}


def cast(x, dtype):
    """``T.cast``: convert to ``dtype`` with numpy's astype semantics."""
    x = as_tensor_variable(x)
    dtype = normalize_dtype(dtype)
    if x.dtype == dtype:
        return x
    if isinstance(x, Constant):
        c = constant(np.asarray(x.data).astype(dtype))
        if getattr(x.tag, "weak", False):
            c.tag.weak = True
        return c
    op = _CASTS.get(dtype)
    if op is None:
        op = _CASTS[dtype] = Elemwise(cast_op(dtype))
    return op(x)


def second(x, y):
    """``y`` broadcast to the shape of ``x`` and ``y`` (Theano's fill/second)."""
    return elemwise("second")(x, y)


def fill(model, value):
    return second(model, value)


def identity(x):
    return elemwise("identity")(x)


def zeros_like(x, dtype=None):
    x = as_tensor_variable(x)
    return second(x, constant(np.zeros((), dtype=dtype or x.dtype)))


def ones_like(x, dtype=None):
    x = as_tensor_variable(x)
    return second(x, constant(np.ones((), dtype=dtype or x.dtype)))


# --------------------------------------------------------------------------- shape
class Shape(Op):
    __props__ = ()

    def make_node(self, x):
        x = as_tensor_variable(x)
        return Apply(self, [x], [TensorType("int64", shape=(x.ndim,))()])

    def perform(self, node, inputs, out):
        out[0][0] = np.asarray(inputs[0].shape, dtype=np.int64)

    def infer_shape(self, node, shapes):
        return [(constant(np.int64(node.inputs[0].ndim)),)]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(inputs[0])]

    def connection_pattern(self, node):
        return [[False]]


_shape = Shape()


def shape(x):
    x = as_tensor_variable(x)
    if all(s is not None for s in x.type.shape):
        return constant(np.asarray(x.type.shape, dtype=np.int64))
    return _shape(x)


def shape_i(x, i):
    """The size of dimension i of x as an int64 scalar (a constant where known)."""
    x = as_tensor_variable(x)
    if x.type.shape[i] is not None:
        return constant(np.int64(x.type.shape[i]))
    if isinstance(i, (int, np.integer)):
        # what ``_shape(x)[i]`` builds, without parsing the index: the shape rewrites ask
        # for every dimension of every input of a node whose shape they infer
        from graphc.tensor.subtensor import Subtensor
        return Subtensor((("int", int(i)),))(_shape(x))
    return _shape(x)[i]


class SpecifyShape(Op):
    """Assert the runtime shape (None = any size) and give the output that static type."""

    __props__ = ("shape",)
    view_map = {0: [0]}

    def __init__(self, shape):
        self.shape = tuple(shape)

    def make_node(self, x):
        x = as_tensor_variable(x)
        if len(self.shape) != x.ndim:
            raise ValueError(f"{self}: {x.ndim}-d input {x.type}")
        new = []
        for d, (s, k) in enumerate(zip(self.shape, x.type.shape)):
            if s is not None and k is not None and s != k:
                raise shape_error(self, describe([x]), f"dimension {d} is {k}, not {s}")
            new.append(s if s is not None else k)
        return Apply(self, [x], [TensorType(x.dtype, shape=tuple(new))()])

    def perform(self, node, inputs, out):
        x = inputs[0]
        for d, s in enumerate(self.shape):
            if s is not None and x.shape[d] != s:
                raise shape_error(self, describe_values([x]),
                                  f"dimension {d} is {x.shape[d]}, expected {s}",
                                  getattr(node.tag, "trace", []))
        out[0][0] = x

    def infer_shape(self, node, shapes):
        return [tuple(constant(np.int64(s)) if s is not None else d
                      for s, d in zip(self.shape, shapes[0]))]

    def L_op(self, inputs, outputs, grads):
        return [grads[0]]


def specify_broadcast(x, shape):
    return SpecifyShape(tuple(shape))(x)


def specify_shape(x, shape):
    return SpecifyShape(tuple(shape))(x)


def patternbroadcast(x, broadcastable):
    x = as_tensor_variable(x)
    if tuple(broadcastable) == x.broadcastable:
        return x
    shape = tuple(1 if b else (s if s != 1 else None) for b, s in zip(broadcastable, x.type.shape))
    if any(s == 1 and not b for s, b in zip(x.type.shape, broadcastable)):
        return _unbroadcast(x, shape)
    return SpecifyShape(shape)(x)


def _unbroadcast(x, shape):
    # forgetting static info needs no runtime check: a view with the looser type
    return Unbroadcast(shape)(x)


class Unbroadcast(Op):
    __props__ = ("shape",)
    view_map = {0: [0]}

    def __init__(self, shape):
        self.shape = tuple(shape)

    def make_node(self, x):
        x = as_tensor_variable(x)
        return Apply(self, [x], [TensorType(x.dtype, shape=self.shape)()])

    def perform(self, node, inputs, out):
        out[0][0] = inputs[0]

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, grads):
        return [patternbroadcast(grads[0], inputs[0].broadcastable)]


def addbroadcast(x, *axes):
    x = as_tensor_variable(x)
    b = list(x.broadcastable)
    for a in axes:
        b[a] = True
    return patternbroadcast(x, b)


def unbroadcast(x, *axes):
    x = as_tensor_variable(x)
    b = list(x.broadcastable)
    for a in axes:
        b[a] = False
    return patternbroadcast(x, b)


def sum_to_broadcast(g, x):
    """Sum the gradient ``g`` over the dimensions where ``x`` was broadcast."""
    from graphc.tensor.math import sum as tsum
    axes = [d for d in range(x.ndim) if x.type.broadcastable[d] and not g.type.broadcastable[d]]
    if axes:
        g = tsum(g, axis=axes, keepdims=True)
    if g.type.shape != x.type.shape and g.ndim == x.ndim:
        # keep the static pattern of x (dims of size 1 broadcastable)
        if g.type.broadcastable != x.type.broadcastable:
            g = patternbroadcast(g, x.type.broadcastable)
    return g


# --------------------------------------------------------------------------- vectors of scalars
class MakeVector(Op):
    __props__ = ("dtype",)

    def __init__(self, dtype="int64"):
        self.dtype = dtype

    def make_node(self, *inputs):
        inputs = [cast(as_tensor_variable(i), self.dtype) for i in inputs]
        for i in inputs:
            if i.ndim != 0:
                raise TypeError(f"{self}: inputs must be scalars, got {i.type}")
        return Apply(self, inputs, [TensorType(self.dtype, shape=(len(inputs),))()])

    def perform(self, node, inputs, out):
        out[0][0] = np.asarray(inputs, dtype=self.dtype)

    def infer_shape(self, node, shapes):
        return [(constant(np.int64(len(node.inputs))),)]

    def L_op(self, inputs, outputs, grads):
        g = grads[0]
        return [g[i] if is_float(x.dtype) else _zg(x) for i, x in enumerate(inputs)]


def _zg(x):
    from graphc.gradient import zeros_grad
    return zeros_grad(x)


def as_shape_vector(shape) -> Variable:
    """A tuple/list of ints and scalars, or an int vector, as an int64 vector variable."""
    if isinstance(shape, (list, tuple)):
        if all(isinstance(s, (int, np.integer)) for s in shape):
            return constant(np.asarray(shape, dtype=np.int64).reshape(len(shape)))
        return MakeVector("int64")(*[as_tensor_variable(s) for s in shape])
    v = as_tensor_variable(shape)
    if v.ndim == 0:
        return MakeVector("int64")(v)
    return cast(v, "int64")


def static_values(vec):
    """Per-entry static ints of a shape vector (None where not known)."""
    if isinstance(vec, Constant):
        return [int(v) for v in np.asarray(vec.data).reshape(-1)]
    if vec.owner is not None and isinstance(vec.owner.op, MakeVector):
        return [int(i.data) if isinstance(i, Constant) else None for i in vec.owner.inputs]
    n = vec.type.shape[0]
    return [None] * n if n is not None else None


# --------------------------------------------------------------------------- reshape
class Reshape(Op):
    __props__ = ("ndim",)
    view_map = {0: [0]}

    def __init__(self, ndim):
        self.ndim = ndim

    def make_node(self, x, shp):
        x = as_tensor_variable(x)
        shp = as_shape_vector(shp)
        if shp.ndim != 1 or shp.type.shape[0] not in (None, self.ndim):
            raise ValueError(f"{self}: shape {shp.type} does not have {self.ndim} entries")
        known = static_values(shp) or [None] * self.ndim
        out = [s if s is not None and s >= 0 else None for s in known]
        if all(s is not None for s in x.type.shape) and known.count(-1) == 1 and \
                all(s is not None for s in known):
            total = int(np.prod(x.type.shape))
            rest = int(np.prod([s for s in known if s != -1]))
            if rest and total % rest == 0:
                out[known.index(-1)] = total // rest
        if all(s is not None for s in x.type.shape) and all(s is not None for s in out):
            if int(np.prod(x.type.shape)) != int(np.prod(out)):
                raise shape_error(self, describe([x]), f"cannot reshape to {tuple(out)}")
        return Apply(self, [x, shp], [TensorType(x.dtype, shape=tuple(out))()])

    def perform(self, node, inputs, out):
        x, shp = inputs
        try:
            out[0][0] = np.reshape(x, tuple(int(s) for s in shp))
        except ValueError:
            raise shape_error(self, describe_values([x]), f"cannot reshape to {tuple(shp)}",
                              getattr(node.tag, "trace", [])) from None

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        x, shp = node.inputs
        known = static_values(shp) or [None] * self.ndim
        if -1 not in known and any(k is None for k in known):
            return [tuple(shp[i] for i in range(self.ndim))]
        if -1 not in known:
            return [tuple(shp[i] for i in range(self.ndim))]
        total = T.prod(stack(list(shapes[0]))) if shapes[0] else constant(np.int64(1))
        rest = T.prod(stack([shp[i] for i in range(self.ndim) if known[i] != -1])) \
            if self.ndim > 1 else constant(np.int64(1))
        return [tuple(shp[i] if known[i] != -1 else T.floor_div(total, rest)
                      for i in range(self.ndim))]

    def L_op(self, inputs, outputs, grads):
        x, shp = inputs
        from graphc.gradient import disconnected_grad_type
        return [reshape(grads[0], shape(x), x.ndim), disconnected_grad_type(shp)]

    def connection_pattern(self, node):
        return [[True], [False]]


def reshape(x, newshape, ndim=None):
    x = as_tensor_variable(x)
    if isinstance(newshape, (list, tuple)):
        ndim = len(newshape)
    shp = as_shape_vector(newshape)
    if ndim is None:
        ndim = shp.type.shape[0]
        if ndim is None:
            raise ValueError("reshape: pass ndim= when the new shape's length is symbolic")
    out = Reshape(ndim)(x, shp)
    return out


def flatten(x, ndim=1):
    from graphc.tensor import math as T
    x = as_tensor_variable(x)
    if ndim < 1 or ndim > max(x.ndim, 1):
        raise ValueError(f"flatten: ndim={ndim} for a {x.ndim}-d input")
    if x.ndim == 0:
        return reshape(x, [1])
    dims = [shape_i(x, i) for i in range(ndim - 1)]
    rest = [x.type.shape[i] for i in range(ndim - 1, x.ndim)]
    if all(s is not None for s in rest):
        last = int(np.prod(rest)) if rest else 1
    else:
        last = -1
    return reshape(x, dims + [last])


def transpose(x, axes=None):
    x = as_tensor_variable(x)
    if axes is None:
        axes = list(range(x.ndim))[::-1]
    return x.dimshuffle(list(axes))


# --------------------------------------------------------------------------- alloc & friends
class Alloc(Op):
    """A new array of the given shape filled with ``value`` (broadcast)."""

    __props__ = ()

    def make_node(self, value, *shape):
        value = as_tensor_variable(value)
        shape = [cast(as_tensor_variable(s), "int64") for s in shape]
        if len(shape) < value.ndim:
            raise ValueError(f"Alloc: value {value.type} has more dims than shape {len(shape)}")
        static = []
        for s in shape:
            if s.ndim != 0:
                raise TypeError(f"Alloc: shape entries must be scalars, got {s.type}")
            static.append(int(s.data) if isinstance(s, Constant) else None)
        off = len(shape) - value.ndim
        for d in range(value.ndim):
            vs, ss = value.type.shape[d], static[off + d]
            if vs is not None and vs != 1 and ss is not None and vs != ss:
                raise shape_error(self, describe([value]), f"value dim {d} is {vs}, shape asks {ss}")
            if static[off + d] is None and vs is not None and vs != 1:
                static[off + d] = vs
        return Apply(self, [value] + shape, [TensorType(value.dtype, shape=tuple(static))()])

    def perform(self, node, inputs, out):
        v, *shp = inputs
        res = np.empty(tuple(int(s) for s in shp), dtype=node.outputs[0].type.numpy_dtype)
        try:
            res[...] = v
        except ValueError:
            raise shape_error(self, describe_values([v]), f"cannot broadcast to {tuple(shp)}",
                              getattr(node.tag, "trace", [])) from None
        out[0][0] = res

    def infer_shape(self, node, shapes):
        return [tuple(node.inputs[1:])]

    def L_op(self, inputs, outputs, grads):
        from graphc.tensor.math import sum as tsum
        from graphc.gradient import disconnected_grad_type
        value = inputs[0]
        g = grads[0]
        off = g.ndim - value.ndim
        if off:
            g = tsum(g, axis=list(range(off)))
        axes = [d for d in range(value.ndim) if value.type.broadcastable[d]]
        if axes:
            g = tsum(g, axis=axes, keepdims=True)
        return [g] + [disconnected_grad_type(s) for s in inputs[1:]]

    def connection_pattern(self, node):
        return [[True]] + [[False]] * (len(node.inputs) - 1)


alloc_op = Alloc()


def alloc(value, *shape):
    return alloc_op(value, *shape)


def zeros(shape, dtype=None):
    shape = _shape_list(shape)
    return alloc(constant(np.zeros((), dtype=normalize_dtype(dtype))), *shape)


def ones(shape, dtype=None):
    shape = _shape_list(shape)
    return alloc(constant(np.ones((), dtype=normalize_dtype(dtype))), *shape)


def _shape_list(shape):
    if isinstance(shape, (list, tuple)):
        return list(shape)
    v = as_tensor_variable(shape)
    if v.ndim == 0:
        return [v]
    n = v.type.shape[0]
    if n is None:
        raise ValueError("zeros/ones need a shape of known length")
    return [v[i] for i in range(n)]


class Eye(Op):
    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype

    def make_node(self, n, m, k):
        n, m, k = (cast(as_tensor_variable(v), "int64") for v in (n, m, k))
        st = [int(v.data) if isinstance(v, Constant) else None for v in (n, m)]
        return Apply(self, [n, m, k], [TensorType(self.dtype, shape=tuple(st))()])

    def perform(self, node, inputs, out):
        n, m, k = (int(v) for v in inputs)
        out[0][0] = np.eye(n, m, k, dtype=self.dtype)

    def infer_shape(self, node, shapes):
        return [(node.inputs[0], node.inputs[1])]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(i) for i in inputs]

    def connection_pattern(self, node):
        return [[False]] * 3


def eye(n, m=None, k=0, dtype=None):
    return Eye(normalize_dtype(dtype))(n, n if m is None else m, k)


def identity_like(x):
    return eye(shape_i(x, 0), shape_i(x, 1), 0, x.dtype)


class ARange(Op):
    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype

    def make_node(self, start, stop, step):
        start, stop, step = (as_tensor_variable(v) for v in (start, stop, step))
        st = None
        if all(isinstance(v, Constant) for v in (start, stop, step)):
            st = len(np.arange(start.data, stop.data, step.data))
        return Apply(self, [start, stop, step], [TensorType(self.dtype, shape=(st,))()])

    def perform(self, node, inputs, out):
        out[0][0] = np.arange(*[np.asarray(v).item() for v in inputs], dtype=self.dtype)

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        start, stop, step = node.inputs
        n = T.ceil(T.true_div(T.cast(stop - start, "float64"), T.cast(step, "float64")))
        return [(T.cast(T.maximum(n, 0), "int64"),)]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(i) for i in inputs]

    def connection_pattern(self, node):
        return [[False]] * 3


def arange(start, stop=None, step=1, dtype=None):
    if stop is None:
        start, stop = 0, start
    start, stop, step = (as_tensor_variable(v) for v in (start, stop, step))
    if dtype is None:
        from graphc.tensor.type import upcast
        dtype = upcast(*(v.dtype for v in (start, stop, step)))
        if dtype in ("bool", "int8", "int16", "int32", "uint8"):
            dtype = "int64"
    return ARange(normalize_dtype(dtype))(start, stop, step)


# --------------------------------------------------------------------------- join / stack
class Join(Op):
    __props__ = ("axis",)

    def __init__(self, axis):
        self.axis = axis

    def make_node(self, *tensors):
        from graphc.tensor.type import upcast
        tensors = [as_tensor_variable(t) for t in tensors]
        if not tensors:
            raise ValueError("join of no tensors")
        nd = tensors[0].ndim
        if any(t.ndim != nd for t in tensors):
            raise shape_error(self, describe(tensors), "all inputs must have the same ndim")
        if not -nd <= self.axis < nd:
            raise ValueError(f"{self}: axis out of range for {nd}-d inputs")
        ax = self.axis % nd
        dtype = upcast(*(t.dtype for t in tensors))
        tensors = [cast(t, dtype) for t in tensors]
        shape = []
        for d in range(nd):
            sizes = [t.type.shape[d] for t in tensors]
            if d == ax:
                shape.append(sum(sizes) if all(s is not None for s in sizes) else None)
            else:
                known = {s for s in sizes if s is not None}
                if len(known) > 1:
                    raise shape_error(self, describe(tensors), f"sizes differ in dimension {d}")
                shape.append(known.pop() if known else None)
        return Apply(self, tensors, [TensorType(dtype, shape=tuple(shape))()])

    def perform(self, node, inputs, out):
        try:
            out[0][0] = np.concatenate(inputs, axis=self.axis)
        except ValueError as e:
            raise shape_error(self, describe_values(inputs), str(e),
                              getattr(node.tag, "trace", [])) from None

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        ax = self.axis % node.outputs[0].ndim
        out = list(shapes[0])
        total = shapes[0][ax]
        for s in shapes[1:]:
            total = total + s[ax]
        out[ax] = total
        return [tuple(out)]

    def L_op(self, inputs, outputs, grads):
        g = grads[0]
        ax = self.axis % g.ndim
        res, start = [], constant(np.int64(0))
        for t in inputs:
            n = shape_i(t, ax)
            idx = [slice(None)] * ax + [slice(start, start + n)]
            gi = g[tuple(idx)]
            res.append(gi if is_float(t.dtype) else _zg(t))
            start = start + n
        return res


def join(axis, *tensors):
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tensors[0]
    if isinstance(axis, Variable):
        if not isinstance(axis, Constant):
            raise TypeError("graphc's join needs a constant axis")
        axis = int(axis.data)
    if len(tensors) == 1:
        return as_tensor_variable(tensors[0])
    return Join(int(axis))(*tensors)


def concatenate(tensor_list, axis=0):
    return join(axis, *tensor_list)


def stack(tensors, axis=0):
    """Stack tensors of equal shape along a new axis (Theano's ``T.stack(tensors, axis)``)."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError("stack takes a list of tensors")
    tensors = [as_tensor_variable(t) for t in tensors]
    if all(t.ndim == 0 for t in tensors) and axis == 0:
        from graphc.tensor.type import upcast
        strong = [t.dtype for t in tensors if not getattr(t.tag, "weak", False)]
        dtype = upcast(*(strong or [t.dtype for t in tensors]))
        return MakeVector(dtype)(*tensors)
    nd = tensors[0].ndim
    ax = axis % (nd + 1)
    pattern = list(range(nd))
    pattern.insert(ax, "x")
    return join(ax, *[t.dimshuffle(pattern) for t in tensors])


def horizontal_stack(*tensors):
    return concatenate(tensors, axis=1)


def vertical_stack(*tensors):
    return concatenate(tensors, axis=0)


def tile(x, reps, ndim=None):
    """``T.tile``: repeat the whole array ``reps`` times along each axis (static reps)."""
    x = as_tensor_variable(x)
    reps = [int(r) for r in reps]
    if len(reps) > x.ndim:
        x = x.dimshuffle(["x"] * (len(reps) - x.ndim) + list(range(x.ndim)))
    reps = [1] * (x.ndim - len(reps)) + reps
    out = x
    for ax, r in enumerate(reps):
        if r != 1:
            out = join(ax, *([out] * r))
    return out
