"""Softmax cross-entropy with integer labels as one stable op, and its gradient op.

The optimizer's stabilize pass rewrites the forms users write
(``-log(softmax(z))[arange(n), y]``, ``categorical_crossentropy(softmax(z), y)``) and the
gradient graphs theano.grad builds for them into these ops, so that logits of any magnitude
give a finite loss and finite gradients.  Users may also call them directly.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.basic import cast
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType, is_float, is_int
from graphc.tensor.var import as_tensor_variable


def _check_labels(op, node, x, y):
    """Labels y fit the rows and classes of the (n, k) logits or softmax x."""
    n, k = x.shape
    if y.shape[0] != n:
        raise shape_error(op, describe_values([x, y]),
                          f"{y.shape[0]} labels for {n} rows", getattr(node.tag, "trace", []))
    if y.size and (y.max() >= k or y.min() < -k):
        raise shape_error(op, describe_values([x, y]),
                          f"label {int(y.max() if y.max() >= k else y.min())} out of range for "
                          f"{k} classes", getattr(node.tag, "trace", []))


def _check_dnll(op, node, dnll_var, inputs, dnll, rows):
    stretched = dnll.shape[0] == 1 and not dnll_var.type.broadcastable[0] and \
        rows != 1                           # a length-1 dnll that its type does not broadcast
    if dnll.shape[0] not in (1, rows) or stretched:
        raise shape_error(op, describe_values(inputs), "dnll length != rows",
                          getattr(node.tag, "trace", []))


def _nll_softmax(x, b, y):
    """(nll, softmax) of logits x (+ bias b) and labels y, from the max-shifted logits."""
    if b is not None:
        x = x + b
    s = x - np.max(x, axis=1, keepdims=True) if x.shape[1] else x
    e = np.exp(s)
    total = np.sum(e, axis=1, keepdims=True)      # >= 1: the max entry gives exp(0)
    e /= total
    return np.log(total[:, 0]) - s[np.arange(x.shape[0]), y], e


def _dx(dnll, sm, y):
    """dnll[:, None] * (sm - onehot(y)); dnll may have length 1 (broadcast)."""
    dx = sm * dnll[:, None]
    dx[np.arange(sm.shape[0]), y] -= dnll if dnll.shape[0] == sm.shape[0] else dnll[0]
    return dx


class SoftmaxCrossentropy(Op):
    """(x[, b], y) -> (nll, sm): per-row -log softmax(x + b)[i, y[i]] and the softmax.

    Computed from the max-shifted logits, so finite for any finite x (Theano's
    CrossentropySoftmaxArgmax1HotWithBias without the argmax)."""

    __props__ = ("has_bias",)

    def __init__(self, has_bias=False):
        self.has_bias = bool(has_bias)

    def make_node(self, x, *rest):
        x = as_tensor_variable(x)
        if len(rest) != (2 if self.has_bias else 1):
            raise TypeError(f"{self} takes {'(x, b, y)' if self.has_bias else '(x, y)'}")
        b = as_tensor_variable(rest[0]) if self.has_bias else None
        y = as_tensor_variable(rest[-1])
        if x.ndim != 2 or not is_float(x.dtype):
            raise TypeError(f"{self}: logits must be a float matrix, got {describe([x])}")
        if y.ndim != 1 or not is_int(y.dtype) or y.dtype == "bool":
            raise TypeError(f"{self}: labels must be an int vector, got {describe([y])}")
        ins = [x]
        if b is not None:
            if b.ndim != 1:
                raise TypeError(f"{self}: bias must be a vector, got {describe([b])}")
            ins.append(cast(b, x.dtype))
        ins.append(y)
        rows = x.type.shape[0] if x.type.shape[0] is not None else y.type.shape[0]
        nll = TensorType(x.dtype, shape=(rows,))()
        sm = TensorType(x.dtype, shape=(rows, x.type.shape[1]))()
        return Apply(self, ins, [nll, sm])

    def check(self, node, inputs):
        """Raise a ShapeError for a bias or labels that do not fit the logits."""
        x, y = inputs[0], inputs[-1]
        if self.has_bias and inputs[1].shape[0] != x.shape[1]:
            raise shape_error(self, describe_values(inputs), "bias length != columns",
                              getattr(node.tag, "trace", []))
        _check_labels(self, node, x, y)

    def perform(self, node, inputs, out):
        self.check(node, inputs)
        nll, sm = _nll_softmax(inputs[0], inputs[1] if self.has_bias else None, inputs[-1])
        dt = node.outputs[0].type.numpy_dtype
        out[0][0] = np.asarray(nll, dtype=dt)
        out[1][0] = np.asarray(sm, dtype=dt)

    def infer_shape(self, node, shapes):
        xs = shapes[0]
        return [(xs[0],), (xs[0], xs[1])]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        from graphc.tensor import math as M
        y = inputs[-1]
        nll, sm = outputs
        g_nll, g_sm = grads
        gx = SoftmaxCrossentropyGrad()(g_nll, sm, y)
        if not _is_zeros(g_sm):
            gx = gx + sm * (g_sm - M.sum(g_sm * sm, axis=1, keepdims=True))
        res = [gx]
        if self.has_bias:
            res.append(M.sum(gx, axis=0))
        return res + [disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[True, True]] * (len(node.inputs) - 1) + [[False, False]]


def _is_zeros(v):
    from graphc.rewriting.engine import const_value
    n = v.owner
    if n is not None and getattr(n.op, "scalar_op", None) is not None and \
            n.op.scalar_op.name == "second":
        v = n.inputs[1]
    return const_value(v) == 0


class SoftmaxCrossentropyGrad(Op):
    """(dnll, sm, y) -> dnll[:, None] * (sm - onehot(y)): the gradient of the nll w.r.t.
    the logits, without dividing by a softmax that may be 0.  dnll may be broadcast (1,)."""

    __props__ = ()

    def make_node(self, dnll, sm, y):
        dnll, sm, y = (as_tensor_variable(v) for v in (dnll, sm, y))
        if sm.ndim != 2 or dnll.ndim != 1 or y.ndim != 1:
            raise TypeError(f"{self}: expects (vector, matrix, int vector), got "
                            f"{describe([dnll, sm, y])}")
        dnll = cast(dnll, sm.dtype)
        return Apply(self, [dnll, sm, y], [sm.type()])

    def check(self, node, inputs):
        """Raise a ShapeError for labels or a dnll that do not fit the softmax."""
        dnll, sm, y = inputs
        _check_labels(self, node, sm, y)
        _check_dnll(self, node, node.inputs[0], inputs, dnll, sm.shape[0])

    def perform(self, node, inputs, out):
        self.check(node, inputs)
        dnll, sm, y = inputs
        out[0][0] = np.asarray(_dx(dnll, sm, y), dtype=node.outputs[0].type.numpy_dtype)

    def infer_shape(self, node, shapes):
        return [shapes[1]]


class SoftmaxCrossentropyWithGrad(Op):
    """(x[, b], y, dnll) -> (nll, dx): SoftmaxCrossentropy's nll and SoftmaxCrossentropyGrad's
    dx = dnll[:, None] * (softmax(x + b) - onehot(y)) in one op, for a graph that needs both
    but not the softmax itself, so that a backend computes each row's softmax once. The
    ``softmax_xent_with_grad`` rewrite makes it (when dnll does not depend on the nll, as for
    a mean or sum of it); it has no gradient of its own."""

    __props__ = ("has_bias",)

    def __init__(self, has_bias=False):
        self.has_bias = bool(has_bias)

    def make_node(self, x, *rest):
        if len(rest) != (3 if self.has_bias else 2):
            raise TypeError(f"{self} takes {'(x, b, y, dnll)' if self.has_bias else '(x, y, dnll)'}")
        fwd = SoftmaxCrossentropy(self.has_bias).make_node(x, *rest[:-1])
        dnll = as_tensor_variable(rest[-1])
        if dnll.ndim != 1:
            raise TypeError(f"{self}: dnll must be a vector, got {describe([dnll])}")
        dnll = cast(dnll, fwd.inputs[0].dtype)
        return Apply(self, fwd.inputs + [dnll], [v.type() for v in fwd.outputs])

    def check(self, node, inputs):
        """Raise a ShapeError for a bias, labels or dnll that do not fit the logits."""
        x, dnll = inputs[0], inputs[-1]
        if self.has_bias and inputs[1].shape[0] != x.shape[1]:
            raise shape_error(self, describe_values(inputs), "bias length != columns",
                              getattr(node.tag, "trace", []))
        _check_labels(self, node, x, inputs[-2])
        _check_dnll(self, node, node.inputs[-1], inputs, dnll, x.shape[0])

    def perform(self, node, inputs, out):
        self.check(node, inputs)
        y = inputs[-2]
        nll, sm = _nll_softmax(inputs[0], inputs[1] if self.has_bias else None, y)
        dt = node.outputs[0].type.numpy_dtype
        out[0][0] = np.asarray(nll, dtype=dt)
        out[1][0] = np.asarray(_dx(inputs[-1].astype(dt, copy=False), sm.astype(dt, copy=False),
                                   y), dtype=dt)

    def infer_shape(self, node, shapes):
        xs = shapes[0]
        return [(xs[0],), (xs[0], xs[1])]


def softmax_crossentropy(x, y, b=None):
    """Per-row -log(softmax(x + b)[i, y[i]]), stable for any logits."""
    if b is None:
        return SoftmaxCrossentropy(False)(x, y)[0]
    return SoftmaxCrossentropy(True)(x, b, y)[0]
