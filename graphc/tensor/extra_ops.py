"""cumsum/cumprod, repeat, to_one_hot, diff, squeeze, bincount-free helpers."""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Constant, Op
from graphc.tensor.basic import cast, reshape, shape_i
from graphc.tensor.elemwise import describe_values, shape_error
from graphc.tensor.type import TensorType, is_float, upcast
from graphc.tensor.var import as_tensor_variable, constant


class CumOp(Op):
    __props__ = ("axis", "mode")

    def __init__(self, axis, mode="add"):
        self.axis = axis
        self.mode = mode

    def make_node(self, x):
        x = as_tensor_variable(x)
        if self.axis is None:
            shape = (None if any(s is None for s in x.type.shape) else
                     int(np.prod(x.type.shape)),)
        else:
            if not -x.ndim <= self.axis < x.ndim:
                raise ValueError(f"{self}: axis out of range for {x.type}")
            shape = x.type.shape
        dtype = x.dtype if x.dtype not in ("bool", "int8", "int16", "int32") else "int64"
        return Apply(self, [x], [TensorType(dtype, shape=shape)()])

    def perform(self, node, inputs, out):
        f = np.cumsum if self.mode == "add" else np.cumprod
        out[0][0] = np.asarray(f(inputs[0], axis=self.axis), dtype=node.outputs[0].type.numpy_dtype)

    def infer_shape(self, node, shapes):
        if self.axis is None:
            from graphc.tensor.math import prod
            from graphc.tensor.basic import stack
            return [(prod(stack(list(shapes[0]))) if shapes[0] else constant(np.int64(1)),)]
        return shapes

    def L_op(self, inputs, outputs, grads):
        (x,), (out,), (g,) = inputs, outputs, grads
        if not is_float(x.dtype):
            from graphc.gradient import zeros_grad
            return [zeros_grad(x)]
        if self.mode == "add":
            if self.axis is None:
                rg = CumOp(0, "add")(g[::-1])[::-1]
                return [reshape(rg, x.shape, x.ndim)]
            idx = [slice(None)] * x.ndim
            idx[self.axis] = slice(None, None, -1)
            idx = tuple(idx)
            return [CumOp(self.axis, "add")(g[idx])[idx]]
        # cumprod: d out_j / d x_i = out_j / x_i for j >= i (x nonzero)
        if self.axis is None:
            rg = CumOp(0, "add")((g * out)[::-1])[::-1]
            return [reshape(rg, x.shape, x.ndim) / x]
        idx = [slice(None)] * x.ndim
        idx[self.axis] = slice(None, None, -1)
        idx = tuple(idx)
        return [CumOp(self.axis, "add")((g * out)[idx])[idx] / x]


def cumsum(x, axis=None):
    return CumOp(axis, "add")(x)


def cumprod(x, axis=None):
    return CumOp(axis, "mul")(x)


class Repeat(Op):
    """numpy.repeat with a scalar or per-element repeats vector along ``axis``."""

    __props__ = ("axis",)

    def __init__(self, axis=None):
        self.axis = axis

    def make_node(self, x, repeats):
        x = as_tensor_variable(x)
        repeats = cast(as_tensor_variable(repeats), "int64")
        if repeats.ndim > 1:
            raise TypeError("repeat: repeats must be a scalar or a vector")
        if self.axis is None:
            shape = (None,)
        else:
            shape = list(x.type.shape)
            n = shape[self.axis]
            shape[self.axis] = (n * int(repeats.data) if n is not None and
                                isinstance(repeats, Constant) and repeats.ndim == 0 else None)
            shape = tuple(shape)
        return Apply(self, [x, repeats], [TensorType(x.dtype, shape=shape)()])

    def perform(self, node, inputs, out):
        x, r = inputs
        try:
            out[0][0] = np.repeat(x, r, axis=self.axis)
        except ValueError as e:
            raise shape_error(self, describe_values(inputs), str(e),
                              getattr(node.tag, "trace", [])) from None

    def infer_shape(self, node, shapes):
        from graphc.tensor.basic import stack
        from graphc.tensor.math import prod, sum as tsum
        x, r = node.inputs
        if self.axis is None:
            n = prod(stack(list(shapes[0]))) if shapes[0] else constant(np.int64(1))
            return [(n * r if r.ndim == 0 else tsum(r),)]
        ax = self.axis % x.ndim
        out = list(shapes[0])
        out[ax] = shapes[0][ax] * r if r.ndim == 0 else tsum(r)
        return [tuple(out)]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type, zeros_grad
        from graphc.tensor.math import sum as tsum
        x, r = inputs
        g = grads[0]
        if not is_float(x.dtype):
            return [zeros_grad(x), disconnected_grad_type()]
        if r.ndim == 0:
            ax = 0 if self.axis is None else self.axis % x.ndim
            xx = x.flatten() if self.axis is None else x
            shp = [shape_i(xx, d) for d in range(ax)] + [shape_i(xx, ax), r] + \
                [shape_i(xx, d) for d in range(ax + 1, xx.ndim)]
            gx = tsum(reshape(g, shp), axis=ax + 1)
            return [reshape(gx, x.shape, x.ndim) if self.axis is None else gx,
                    disconnected_grad_type()]
        # per-element repeats: segment sum via a one-hot-free index map
        idx = Repeat(0)(_arange_like(x, self.axis), r)
        from graphc.tensor.subtensor import inc_subtensor
        from graphc.tensor.basic import zeros_like
        if self.axis is None:
            gx = inc_subtensor(zeros_like(x.flatten())[idx], g)
            return [reshape(gx, x.shape, x.ndim), disconnected_grad_type()]
        gt = g.dimshuffle([self.axis] + [d for d in range(x.ndim) if d != self.axis])
        xt = x.dimshuffle([self.axis] + [d for d in range(x.ndim) if d != self.axis])
        gxt = inc_subtensor(zeros_like(xt)[idx], gt)
        inv = list(range(1, x.ndim))
        inv.insert(self.axis, 0)
        return [gxt.dimshuffle(inv), disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[True], [False]]


def _arange_like(x, axis):
    from graphc.tensor.basic import arange
    n = shape_i(x.flatten() if axis is None else x, 0 if axis is None else axis)
    return arange(n)


def repeat(x, repeats, axis=None):
    return Repeat(axis)(x, repeats)


def to_one_hot(y, nb_class, dtype=None):
    """One-hot rows for the int vector ``y``: shape (len(y), nb_class)."""
    from graphc.tensor.basic import eye
    from graphc.tensor.type import normalize_dtype
    return eye(nb_class, dtype=normalize_dtype(dtype))[as_tensor_variable(y)]


def diff(x, n=1, axis=-1):
    x = as_tensor_variable(x)
    ax = axis % x.ndim
    for _ in range(n):
        a = [slice(None)] * x.ndim
        b = [slice(None)] * x.ndim
        a[ax] = slice(1, None)
        b[ax] = slice(None, -1)
        x = x[tuple(a)] - x[tuple(b)]
    return x


def squeeze(x):
    return as_tensor_variable(x).squeeze()
