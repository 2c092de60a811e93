"""Neural-net primitives: softmax family, activations, cross-entropies (Theano's names).

Softmax and LogSoftmax are ops (their numpy references are max-shifted, hence stable);
everything else decomposes into elementwise primitives that the optimizer fuses.  The
naive forms users write (``log(softmax(x))``, ``-log(softmax(x)[arange(n), y])``,
``log(sigmoid(x))``) are rewritten into stable ones by the optimizer's stabilize pass.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor import math as M
from graphc.tensor.basic import arange, cast, shape_i
from graphc.tensor.elemwise import describe, shape_error
from graphc.tensor.type import TensorType, is_float
from graphc.tensor.var import as_tensor_variable

sigmoid = M.sigmoid
softplus = M.softplus


class Softmax(Op):
    """exp(x - max) / sum(exp(x - max)) over ``axis``."""

    __props__ = ("axis",)

    def __init__(self, axis=-1):
        self.axis = axis

    def make_node(self, x):
        x = as_tensor_variable(x)
        if x.ndim == 0:
            raise TypeError(f"{type(self).__name__}: input must have at least 1 dim, got {x.type}")
        if not is_float(x.dtype):
            x = cast(x, "float64")
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self}: axis out of range for {x.type}")
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        x = inputs[0]
        e = np.exp(x - np.max(x, axis=self.axis, keepdims=True))
        out[0][0] = e / np.sum(e, axis=self.axis, keepdims=True)

    def infer_shape(self, node, shapes):
        return shapes

    def L_op(self, inputs, outputs, grads):
        sm, g = outputs[0], grads[0]
        return [sm * (g - M.sum(g * sm, axis=self.axis, keepdims=True))]


class LogSoftmax(Softmax):
    """x - max - log(sum(exp(x - max))) over ``axis``: finite for any finite x."""

    def perform(self, node, inputs, out):
        x = inputs[0]
        s = x - np.max(x, axis=self.axis, keepdims=True)
        out[0][0] = s - np.log(np.sum(np.exp(s), axis=self.axis, keepdims=True))

    def L_op(self, inputs, outputs, grads):
        out, g = outputs[0], grads[0]
        return [g - M.exp(out) * M.sum(g, axis=self.axis, keepdims=True)]


def softmax(c, axis=-1):
    return Softmax(axis)(c)


def log_softmax(c, axis=-1):
    return LogSoftmax(axis)(c)


logsoftmax = log_softmax


def softmax_with_bias(x, b):
    return softmax(x + b)


def softmax_graph(c):
    e = M.exp(c - M.max(c, axis=-1, keepdims=True))
    return e / M.sum(e, axis=-1, keepdims=True)


def relu(x, alpha=0):
    """max(x, 0), or a leaky relu with slope ``alpha`` for x < 0."""
    x = as_tensor_variable(x)
    if isinstance(alpha, (int, float)) and alpha == 0:
        return M.switch(M.gt(x, 0), x, 0)
    return M.switch(M.gt(x, 0), x, alpha * x)


def elu(x, alpha=1):
    return M.switch(M.gt(x, 0), x, alpha * M.expm1(x))


def selu(x):
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return scale * elu(x, alpha)


def softsign(x):
    return x / (1 + M.abs_(x))


def hard_sigmoid(x):
    return M.clip(0.2 * x + 0.5, 0, 1)


ultra_fast_sigmoid = sigmoid


def categorical_crossentropy(coding_dist, true_dist):
    """-log(coding_dist[i, true_dist[i]]) for int labels, or -sum(true * log(coding)) for
    a distribution of targets; one value per row."""
    coding_dist = as_tensor_variable(coding_dist)
    true_dist = as_tensor_variable(true_dist)
    if true_dist.ndim == coding_dist.ndim:
        return -M.sum(true_dist * M.log(coding_dist), axis=coding_dist.ndim - 1)
    if true_dist.ndim == coding_dist.ndim - 1 and not is_float(true_dist.dtype):
        if coding_dist.ndim != 2:
            raise TypeError("categorical_crossentropy with int labels needs a 2-d coding_dist")
        n = shape_i(coding_dist, 0)
        return -M.log(coding_dist[arange(n), true_dist])
    raise TypeError(f"categorical_crossentropy: true_dist must be an int vector of labels or a "
                    f"matrix of probabilities; got {describe([coding_dist, true_dist])}")


def crossentropy_categorical_1hot(coding_dist, true_one_of_n):
    return categorical_crossentropy(coding_dist, true_one_of_n)


def binary_crossentropy(output, target):
    """-(target * log(output) + (1 - target) * log(1 - output))."""
    return -(target * M.log(output) + (1.0 - target) * M.log(1.0 - output))


def sigmoid_binary_crossentropy(output, target):
    """binary_crossentropy(sigmoid(output), target), computed stably from logits."""
    return M.softplus(output) - target * output

