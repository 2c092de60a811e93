"""Elemwise (a scalar primitive applied pointwise with broadcasting), DimShuffle and
CAReduce (commutative-associative reductions).

Broadcasting follows Theano: inputs of lower rank are padded on the left, and a
dimension broadcasts only when it is statically known to be 1 (``broadcastable``).
Mismatched static sizes are reported when the node is built; mismatched runtime sizes
when it runs, naming the op, the shapes and the user's line.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from graphc.graph.basic import Apply, Op, format_trace, user_trace
from graphc.tensor import scalar_ops
from graphc.tensor.scalar_ops import SCALAR, ScalarOp
from graphc.tensor.type import TensorType, upcast, is_float


class ShapeError(ValueError):
    """A shape mismatch, with the op, the shapes and dtypes, and the user's source line."""


def shape_error(op, inputs_desc: str, why: str, trace=None):
    trace = user_trace() if trace is None else trace
    return ShapeError(f"{op}: {why}\n  inputs: {inputs_desc}\n  created at:\n{format_trace(trace)}")


def describe(vars_) -> str:
    return ", ".join(f"{v.type.shape_str()} {v.type.dtype}" for v in vars_)


def describe_values(vals) -> str:
    return ", ".join(f"{getattr(v, 'shape', ())} {getattr(v, 'dtype', type(v).__name__)}"
                     for v in vals)


def _weak(v) -> bool:
    return getattr(v.tag, "weak", False)


_BITWISE = frozenset({"and", "or", "xor", "invert"})
# numpy has no bool loop for these (``-b``, ``b - b``, ``sign(b)``): rejected when built,
# with what to write instead
_NO_BOOL = {"neg": "~x (invert)", "sub": "x ^ y (xor)", "sgn": "x itself"}


def _fit_weak_ints(dtype, weak):
    """Widen an int dtype so that weak Python int constants fit (int8 tensor + 300 is int16,
    as in Theano) instead of wrapping around silently."""
    for x in weak:
        data = getattr(x, "data", None)
        if data is None or np.asarray(data).dtype.kind not in "iu":
            continue
        v = int(np.asarray(data).max() if np.asarray(data).size else 0)
        info = np.iinfo(dtype)
        if not info.min <= v <= info.max:
            dtype = upcast(dtype, np.min_scalar_type(-abs(v) - 1))
    return dtype


def _lift(x, nd):
    """``x`` with leading broadcastable dimensions up to ``nd``: a constant is reshaped (the
    graph the optimizer would fold DimShuffle{x,...}(constant) to, without the node: a chain
    of ops with Python scalars, ``x * 1.0001 + 0.0001``, builds and rewrites a third faster),
    anything else gets a DimShuffle."""
    from graphc.graph.basic import Constant
    if isinstance(x, Constant) and isinstance(x.data, np.ndarray):
        hit = _lifted.get((id(x), nd))
        if hit is not None and hit[0] is x:
            return hit[1]
        from graphc.tensor.var import constant
        c = constant(x.data.reshape((1,) * (nd - x.ndim) + x.data.shape), name=x.name)
        if _weak(x):
            c.tag.weak = True
        if x.data.size <= 16:               # shared Python scalars: lifted once per rank
            if len(_lifted) > 4096:
                _lifted.clear()
            _lifted[(id(x), nd)] = (x, c)   # x is kept alive: its id stays its own
        return c
    return x.dimshuffle(["x"] * (nd - x.ndim) + list(range(x.ndim)))


_lifted: dict = {}          # (id of a small constant, rank) -> (that constant, lifted one)


class Elemwise(Op):
    __props__ = ("scalar_op",)

    def __init__(self, scalar_op: ScalarOp):
        self.scalar_op = scalar_op

    def __str__(self):
        return f"Elemwise{{{self.scalar_op}}}"

    @property
    def nin(self):
        return self.scalar_op.nin

    def make_node(self, *inputs):
        from graphc.tensor.var import as_tensor_variable
        from graphc.tensor.basic import cast
        if len(inputs) != self.scalar_op.nin:
            raise TypeError(f"{self} takes {self.scalar_op.nin} inputs, got {len(inputs)}")
        inputs = [as_tensor_variable(x) for x in inputs]
        # weak Python scalars take the dtype of the strong operands (NEP 50 / Theano autocast)
        values = inputs[1:] if self.scalar_op.name == "switch" else inputs
        strong = [x for x in values if not _weak(x)]
        if strong and len(strong) < len(values):
            s_dt = upcast(*[x.dtype for x in strong])
            weak_dt = upcast(*[x.dtype for x in values if _weak(x)])
            if not is_float(s_dt) and is_float(weak_dt):
                from graphc.configdefaults import config
                s_dt = config.floatX if s_dt in ("bool", "int8", "int16", "uint8") else "float64"
            elif s_dt == "bool" and weak_dt != "bool":
                s_dt = weak_dt
            elif not is_float(s_dt):
                s_dt = _fit_weak_ints(s_dt, [x for x in values if _weak(x)])
            inputs = [cast(x, s_dt) if _weak(x) and not (
                self.scalar_op.name == "switch" and x is inputs[0]) else x for x in inputs]
        if self.scalar_op.name in _BITWISE and any(is_float(x.dtype) for x in inputs):
            raise TypeError(f"{self}: bitwise ops take int or bool inputs, got {describe(inputs)}"
                            f"\n  created at:\n{format_trace(user_trace())}")
        if self.scalar_op.name in _NO_BOOL and all(x.dtype == "bool" for x in inputs):
            raise TypeError(f"{self}: not defined on bool tensors (inputs: {describe(inputs)}"
                            f"); use {_NO_BOOL[self.scalar_op.name]}, or cast to an int dtype "
                            f"first"
                            f"\n  created at:\n{format_trace(user_trace())}")
        nd = max(x.ndim for x in inputs)
        inputs = [x if x.ndim == nd else _lift(x, nd) for x in inputs]
        out_shape = []
        for d in range(nd):
            sizes = {x.type.shape[d] for x in inputs} - {1}
            known = sizes - {None}
            if len(known) > 1:
                raise shape_error(self, describe(inputs),
                                  f"incompatible sizes {sorted(known)} in dimension {d}")
            if known:
                out_shape.append(known.pop())
            elif None in sizes:
                out_shape.append(None)
            else:
                out_shape.append(1)
        out_dtype = self.scalar_op.out_dtype([x.dtype for x in inputs])
        outputs = [TensorType(out_dtype, shape=tuple(out_shape))()]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, output_storage):
        sop = self.scalar_op
        out_dt = node.outputs[0].type.numpy_dtype
        if sop.name == "cast":
            r = np.asarray(inputs[0]).astype(out_dt)
        else:
            if sop.rule == "float" and out_dt.kind == "f":
                # ints are upgraded first: numpy's reciprocal(int) is integer division and
                # exp(int8) is computed in float16
                inputs = [v if getattr(v, "dtype", None) == out_dt else np.asarray(v, out_dt)
                          for v in inputs]
            r = sop.impl(*inputs)
            if len(inputs) > 1:
                _check_runtime_broadcast(node, inputs, np.shape(r))
            r = np.asarray(r)
            if r.dtype != out_dt:
                r = r.astype(out_dt)
            elif not (r.flags.owndata and r.flags.writeable) or any(r is x for x in inputs):
                # identity returns its input, second a read-only broadcast view, rounding
                # an int its input: copy, so every Elemwise output is a new writable array
                # (as in Theano and Fused) and no view_map is needed
                r = r.copy()
        output_storage[0][0] = r

    def infer_shape(self, node, shapes):
        out = []
        for d in range(node.outputs[0].ndim):
            pick = None
            for x, s in zip(node.inputs, shapes):
                if not x.type.broadcastable[d]:
                    pick = s[d]
                    break
            out.append(pick if pick is not None else 1)
        return [tuple(out)]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.tensor.basic import sum_to_broadcast
        rule = self.scalar_op.grad
        if self.scalar_op.name in scalar_ops.NON_DIFFERENTIABLE or \
                not any(is_float(x.dtype) for x in inputs):
            grads = [None] * len(inputs)    # all zero (and rules like abs's sgn need floats)
        else:
            grads = rule(inputs, outputs[0], output_grads[0])
        result = []
        for x, gx in zip(inputs, grads):
            if gx is None or not is_float(x.dtype):
                from graphc.gradient import zeros_grad
                result.append(zeros_grad(x))
            else:
                result.append(sum_to_broadcast(gx, x))
        return result


def _check_runtime_broadcast(node, inputs, out_shape):
    for x, v in zip(node.inputs, inputs):
        shp = np.shape(v)
        if shp == out_shape:
            continue
        for d, b in enumerate(x.type.broadcastable):
            if not b and shp[d] != out_shape[d]:
                raise shape_error(
                    node.op, describe_values(inputs),
                    f"input shapes do not match in dimension {d} ({shp[d]} vs {out_shape[d]}); "
                    f"graphc (like Theano) broadcasts only dimensions declared broadcastable",
                    getattr(node.tag, "trace", []))


class DimShuffle(Op):
    """Permute dimensions, insert broadcastable ones ('x'), drop broadcastable ones."""

    __props__ = ("input_ndim", "new_order")
    view_map = {0: [0]}

    def __init__(self, input_broadcastable, new_order):
        if isinstance(input_broadcastable, int):
            self.input_ndim = input_broadcastable
        else:
            self.input_ndim = len(tuple(input_broadcastable))
        self.new_order = tuple(new_order)
        kept = [d for d in self.new_order if d != "x"]
        if len(set(kept)) != len(kept) or any(not 0 <= d < self.input_ndim for d in kept):
            raise ValueError(f"DimShuffle: bad new_order {self.new_order} for {self.input_ndim}-d input")
        self.drop = tuple(d for d in range(self.input_ndim) if d not in kept)
        self.perm = tuple(kept)
        self.augment = tuple(i for i, d in enumerate(self.new_order) if d == "x")
        self.is_transpose = not self.drop and not self.augment

    def __str__(self):
        return f"DimShuffle{{{','.join(map(str, self.new_order))}}}"

    def make_node(self, x):
        from graphc.tensor.var import as_tensor_variable
        x = as_tensor_variable(x)
        if x.ndim != self.input_ndim:
            raise TypeError(f"{self} expects a {self.input_ndim}-d input, got {x.type}")
        for d in self.drop:
            if x.type.shape[d] != 1:
                raise shape_error(self, describe([x]),
                                  f"cannot drop dimension {d}: it is not known to be 1 "
                                  f"(use addbroadcast/patternbroadcast to declare it)")
        shape = tuple(1 if d == "x" else x.type.shape[d] for d in self.new_order)
        return Apply(self, [x], [TensorType(x.dtype, shape=shape)()])

    def perform(self, node, inputs, output_storage):
        x = inputs[0]
        if self.drop:
            if any(x.shape[d] != 1 for d in self.drop):
                raise shape_error(self, describe_values([x]), "dropped dimension is not 1",
                                  getattr(node.tag, "trace", []))
        r = np.transpose(x, self.perm + self.drop)
        shape = [1 if d == "x" else x.shape[d] for d in self.new_order]
        output_storage[0][0] = r.reshape(shape)

    def infer_shape(self, node, shapes):
        s = shapes[0]
        return [tuple(1 if d == "x" else s[d] for d in self.new_order)]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.tensor.basic import sum_to_broadcast
        g = output_grads[0]
        (x,) = inputs
        if not is_float(x.dtype):
            from graphc.gradient import zeros_grad
            return [zeros_grad(x)]
        if self.augment:
            g = _sum_axes(g, self.augment)
        # g now has dims in order self.perm; invert permutation and re-insert dropped dims
        order = list(self.perm)
        inv = [order.index(d) if d in order else "x" for d in range(self.input_ndim)]
        return [g.dimshuffle(inv)]


def _sum_axes(g, axes):
    from graphc.tensor.math import sum as tsum
    return tsum(g, axis=list(axes))


_REDUCE_IMPL = {
    "add": np.sum, "mul": np.prod, "max": np.max, "min": np.min, "and": np.all, "or": np.any,
}


class CAReduce(Op):
    """Reduce over ``axis`` (a sorted tuple, or None for all) with add/mul/max/min/and/or."""

    __props__ = ("kind", "axis", "acc_dtype")

    def __init__(self, kind, axis=None, acc_dtype=None):
        assert kind in _REDUCE_IMPL
        self.kind = kind
        self.axis = None if axis is None else tuple(sorted(axis))
        self.acc_dtype = acc_dtype

    def __str__(self):
        ax = "all" if self.axis is None else ",".join(map(str, self.axis))
        return f"Reduce{{{self.kind}, axis={ax}}}"

    def out_dtype(self, dtype):
        if self.acc_dtype is not None:
            return self.acc_dtype
        if self.kind in ("and", "or"):
            return "bool"
        if self.kind in ("add", "mul"):
            if dtype in ("bool", "int8", "int16", "int32"):
                return "int64"
            if dtype in ("uint8", "uint16", "uint32"):
                return "uint64"
        return dtype

    def make_node(self, x):
        from graphc.tensor.var import as_tensor_variable
        x = as_tensor_variable(x)
        axis = tuple(range(x.ndim)) if self.axis is None else self.axis
        if any(not 0 <= a < x.ndim for a in axis):
            raise ValueError(f"{self}: axis out of range for {x.ndim}-d input {x.type}")
        if self.kind in ("max", "min"):
            for a in axis:
                if x.type.shape[a] == 0:
                    raise shape_error(self, describe([x]), "zero-size reduction has no identity")
        shape = tuple(s for d, s in enumerate(x.type.shape) if d not in axis)
        return Apply(self, [x], [TensorType(self.out_dtype(x.dtype), shape=shape)()])

    def perform(self, node, inputs, output_storage):
        x = inputs[0]
        try:
            r = _REDUCE_IMPL[self.kind](x, axis=self.axis)
        except ValueError as e:
            raise shape_error(self, describe_values([x]), str(e), getattr(node.tag, "trace", []))
        output_storage[0][0] = np.asarray(r, dtype=node.outputs[0].type.numpy_dtype)

    def infer_shape(self, node, shapes):
        axis = range(node.inputs[0].ndim) if self.axis is None else self.axis
        return [tuple(s for d, s in enumerate(shapes[0]) if d not in axis)]

    def L_op(self, inputs, outputs, output_grads):
        import graphc.tensor.math as T
        from graphc.gradient import zeros_grad
        (x,), (out,), (g,) = inputs, outputs, output_grads
        if not is_float(x.dtype) or self.kind in ("and", "or"):
            return [zeros_grad(x)]
        axis = tuple(range(x.ndim)) if self.axis is None else self.axis
        pattern = []
        j = 0
        for d in range(x.ndim):
            if d in axis:
                pattern.append("x")
            else:
                pattern.append(j)
                j += 1
        g_b = g.dimshuffle(pattern)
        out_b = out.dimshuffle(pattern)
        if self.kind == "add":
            return [T.second(x, g_b)]
        if self.kind in ("max", "min"):
            return [g_b * T.cast(T.eq(x, out_b), x.dtype)]
        # mul: exact product of the other elements, also where x has zeros
        nz = T.neq(x, 0)
        n_zero = T.sum(T.cast(T.eq(x, 0), "int64"), axis=list(axis)).dimshuffle(pattern)
        prod_nz = T.prod(T.switch(nz, x, T.ones_like(x)), axis=list(axis)).dimshuffle(pattern)
        safe_x = T.switch(nz, x, T.ones_like(x))
        grad = T.switch(T.eq(n_zero, 0), out_b / safe_x,
                        T.switch(T.and_(T.eq(n_zero, 1), T.eq(x, 0)), prod_nz, T.zeros_like(x)))
        return [g_b * grad]


def elemwise(name: str) -> Elemwise:
    return _ELEMWISE[name]


_ELEMWISE = {name: Elemwise(sop) for name, sop in SCALAR.items()}
