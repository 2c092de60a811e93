"""The random primitives: two pure functions of a Philox stream state, plus a sort.

    RandomUniform(dtype)(state, shape) -> numbers in (0, 1) of ``shape``
    AdvanceState(dtype)(state, shape)  -> the state after that draw

Drawing and advancing are separate single-output ops on purpose: ``state.default_update``
is the cheap AdvanceState, so code that only needs the next state (an update applied next
to a lazy ``ifelse``, a loop carrying the state) never computes samples, and a gradient can
replay a draw exactly from the stored state.  Every distribution (normal, binomial,
multinomial, choice, permutation) is a decomposition into these and ordinary tensor ops;
see ``streams.py``.  Backends implement Philox once (see ``philox.py`` for the exact spec).
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.random import philox
from graphc.tensor.type import TensorType, normalize_dtype

STATE_TYPE = TensorType("uint32", shape=(philox.STATE_SIZE,))


def _state_and_shape(op, state, shape):
    from graphc.tensor.basic import as_shape_vector, cast, static_values
    from graphc.tensor.var import as_tensor_variable
    state = as_tensor_variable(state)
    if state.dtype != "uint32" or state.ndim != 1:
        raise TypeError(f"{op}: the state must be a uint32 vector of {philox.STATE_SIZE} words "
                        f"(a random stream state), got {state.type}")
    shape = cast(as_shape_vector(shape), "int64")
    if shape.ndim != 1 or shape.type.shape[0] is None:
        raise TypeError(f"{op}: the size must be a vector of known length, got {shape.type}; "
                        f"pass ndim= when it is symbolic")
    return state, shape, tuple(static_values(shape) or [None] * shape.type.shape[0])


def _check_state(op, state):
    if state.shape != (philox.STATE_SIZE,):
        raise ValueError(f"{op}: a random state has {philox.STATE_SIZE} uint32 words, got an "
                         f"array of shape {state.shape}")


def _size(shape):
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"random sample of negative size {shape}")
    return shape


class RandomUniform(Op):
    """Numbers in the open interval (0, 1) drawn from the stream at ``state``."""

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = normalize_dtype(dtype)
        if self.dtype not in ("float16", "float32", "float64"):
            raise TypeError(f"RandomUniform: dtype must be a float type, got {self.dtype}")

    def make_node(self, state, shape):
        state, shape, static = _state_and_shape(self, state, shape)
        static = tuple(s if s is not None and s >= 0 else None for s in static)
        return Apply(self, [state, shape], [TensorType(self.dtype, shape=static)()])

    def perform(self, node, inputs, out):
        state, shape = inputs
        _check_state(self, state)
        out[0][0] = philox.uniform(state, _size(shape), self.dtype)[1]

    def infer_shape(self, node, shapes):
        shp = node.inputs[1]
        return [tuple(shp[i] for i in range(node.outputs[0].ndim))]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(), disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[False], [False]]

    def do_constant_folding(self, node):
        return False            # a sample can be large: keep it a computation, not a constant


class AdvanceState(Op):
    """The stream state after RandomUniform(dtype) drew ``shape`` numbers from it."""

    __props__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = normalize_dtype(dtype)

    def make_node(self, state, shape):
        state, shape, _ = _state_and_shape(self, state, shape)
        return Apply(self, [state, shape], [STATE_TYPE()])

    def perform(self, node, inputs, out):
        state, shape = inputs
        _check_state(self, state)
        n = int(np.prod(_size(shape), dtype=np.int64))
        out[0][0] = philox.advance(state, philox.n_blocks(n, self.dtype))

    def infer_shape(self, node, shapes):
        from graphc.tensor.var import constant
        return [(constant(np.int64(philox.STATE_SIZE)),)]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type(), disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[False], [False]]


class ArgSort(Op):
    """Indices that sort ``x`` along its last axis (stable: ties keep their order).
    Permutations and sampling without replacement sort random keys with it."""

    __props__ = ()

    def make_node(self, x):
        from graphc.tensor.var import as_tensor_variable
        x = as_tensor_variable(x)
        if x.ndim == 0:
            raise TypeError(f"{self}: cannot sort a scalar")
        return Apply(self, [x], [TensorType("int64", shape=x.type.shape)()])

    def perform(self, node, inputs, out):
        out[0][0] = np.argsort(inputs[0], axis=-1, kind="stable").astype(np.int64)

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type
        return [disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[False]]


argsort = ArgSort()
