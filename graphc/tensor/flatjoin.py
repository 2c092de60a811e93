"""FlatJoin: arrays flattened to rows and joined side by side, as one matrix.

    FlatJoin(ones)(x_1, ..., x_m) == join(1, x_1.reshape((-1, x_1.shape[-1])), ...,
                                          x_m.reshape((-1, x_m.shape[-1])) [, ones((rows, 1))])

Every x_i (ndim >= 2, one dtype) has the same number of rows, the product of its leading
dimensions; the leading shapes themselves may differ. ``ones`` appends a column of ones.

graphc/rewriting/shared_gemm.py builds it to turn products that share their right operand
into one product. Each input is copied once, straight into its columns, whatever its
strides: flattening a time-reversed sequence (an LSTM's ``x[::-1]`` in its weight
gradient) copies it anyway, so the join costs no extra pass over memory.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType


def _rows(shape) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64))


def flat_join(op, node, xs, alloc):
    """The numpy body of FlatJoin; ``alloc(shape, dtype)`` gives the output array (the
    linker's kept buffer, or np.empty)."""
    rows = _rows(xs[0].shape)
    if any(x.ndim < 2 for x in xs) or any(_rows(x.shape) != rows for x in xs):
        raise shape_error(op, describe_values(xs), "inputs must have >= 2 dims and the same "
                          "number of rows (product of the leading dims)",
                          getattr(node.tag, "trace", []))
    cols = sum(x.shape[-1] for x in xs) + op.ones
    out = alloc((rows, cols), node.outputs[0].type.numpy_dtype)
    start = 0
    for x in xs:
        k = x.shape[-1]
        if x.size:
            # a block of columns split back into x's leading dims: always a view
            np.copyto(np.reshape(out[:, start:start + k], x.shape, copy=False), x)
        start += k
    if op.ones:
        out[:, start] = 1
    return out


class FlatJoin(Op):
    __props__ = ("ones",)

    def __init__(self, ones=False):
        self.ones = bool(ones)

    def __str__(self):
        return "FlatJoin{ones}" if self.ones else "FlatJoin"

    def make_node(self, *xs):
        from graphc.tensor.var import as_tensor_variable
        xs = [as_tensor_variable(x) for x in xs]
        if not xs or any(x.ndim < 2 for x in xs) or len({x.dtype for x in xs}) != 1:
            raise TypeError(f"{self}: needs arrays of >= 2 dims and one dtype, got "
                            f"{describe(xs)}")
        rows = set()
        for x in xs:
            lead = x.type.shape[:-1]
            if all(s is not None for s in lead):
                rows.add(int(np.prod(lead, dtype=np.int64)))
        if len(rows) > 1:
            raise shape_error(self, describe(xs), f"inputs have different row counts {rows}")
        last = [x.type.shape[-1] for x in xs]
        cols = sum(last) + self.ones if all(k is not None for k in last) else None
        out = TensorType(xs[0].dtype, shape=(rows.pop() if rows else None, cols))
        return Apply(self, xs, [out()])

    def perform(self, node, inputs, out):
        out[0][0] = flat_join(self, node, inputs, np.empty)

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        rows = None
        for s in shapes[0][:-1]:
            rows = s if rows is None else T.mul(rows, s)
        cols = None
        for s in shapes:
            cols = s[-1] if cols is None else T.add(cols, s[-1])
        if self.ones:
            cols = T.add(cols, 1)
        return [(rows, cols)]

    def L_op(self, inputs, outputs, grads):
        from graphc.tensor.basic import reshape, shape, shape_i
        g = grads[0]
        out, start = [], 0
        for x in inputs:
            stop = start + shape_i(x, x.ndim - 1)
            out.append(reshape(g[:, start:stop], shape(x), x.ndim))
            start = stop
        return out
