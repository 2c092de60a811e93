"""BLAS-shaped ops that the specialize pass builds from dot, scale and add:

    Gemm:  out = beta * z + alpha * dot(op(x), op(y))     op = transpose when the flag says
    Gemv:  out = beta * v + alpha * dot(op(A), x)
    Ger:   out = z + alpha * outer(a, b)

The numpy ``perform`` is the reference; a native backend calls BLAS for them.  Transposes
are flags, never copies.  ``z`` / ``v`` are optional for Gemm / Gemv (``has_z`` / ``has_v``);
the ``inplace`` variants (chosen by the inplace pass) overwrite z / v, which the destroy
handler only allows for dead, freshly computed buffers.  These ops appear only after
gradients were taken, so they have no gradient.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.basic import cast
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType
from graphc.tensor.var import as_tensor_variable

BLAS_DTYPES = ("float32", "float64")


def _scalar(v, dtype):
    v = as_tensor_variable(v)
    if v.ndim != 0:
        raise TypeError(f"BLAS scale factors must be scalars, got {v.type}")
    return cast(v, dtype)


def _merge_dim(a, b):
    return a if a is not None else b


def _check_z(op, node, z, shape):
    for d, (zb, zs, s) in enumerate(zip(node.inputs[3].type.broadcastable, z.shape, shape)):
        if not zb and zs != s:
            raise shape_error(op, describe_values([z]), f"z has size {zs} in dimension {d}, "
                              f"the product has {s}", getattr(node.tag, "trace", []))


def _accumulate(r, z, beta, inplace):
    """beta * z + r: into z's buffer when the op is in place, else into r (a fresh product)."""
    if inplace:
        if beta != 1:
            z *= beta
        z += r
        return z
    r += z if beta == 1 else beta * z
    return r


class Gemm(Op):
    """beta * z + alpha * dot(x or x.T, y or y.T); inputs (x, y, alpha[, z, beta])."""

    __props__ = ("trans_a", "trans_b", "has_z", "inplace")

    def __init__(self, trans_a=False, trans_b=False, has_z=False, inplace=False):
        self.trans_a, self.trans_b = bool(trans_a), bool(trans_b)
        self.has_z, self.inplace = bool(has_z), bool(inplace and has_z)
        self.destroy_map = {0: [3]} if self.inplace else {}

    def __str__(self):
        flags = "".join(["T" if self.trans_a else "N", "T" if self.trans_b else "N"])
        return f"Gemm{{{flags}{', z' if self.has_z else ''}{', inplace' if self.inplace else ''}}}"

    def make_node(self, x, y, alpha, z=None, beta=None):
        x, y = as_tensor_variable(x), as_tensor_variable(y)
        if x.ndim != 2 or y.ndim != 2 or x.dtype != y.dtype or x.dtype not in BLAS_DTYPES:
            raise TypeError(f"{self}: x and y must be float32/float64 matrices of one dtype, "
                            f"got {describe([x, y])}")
        m = x.type.shape[1 if self.trans_a else 0]
        k1 = x.type.shape[0 if self.trans_a else 1]
        k2 = y.type.shape[1 if self.trans_b else 0]
        n = y.type.shape[0 if self.trans_b else 1]
        if k1 is not None and k2 is not None and k1 != k2:
            raise shape_error(self, describe([x, y]), f"inner dimensions differ ({k1} vs {k2})")
        ins = [x, y, _scalar(alpha, x.dtype)]
        if self.has_z:
            z = as_tensor_variable(z)
            if z.ndim != 2 or z.dtype != x.dtype:
                raise TypeError(f"{self}: z must be a {x.dtype} matrix, got {describe([z])}")
            if self.inplace and z.type.broadcastable != (m == 1, n == 1):
                raise TypeError(f"{self}: an in-place z must have the product's shape")
            m = _merge_dim(m, z.type.shape[0] if z.type.shape[0] != 1 else None)
            n = _merge_dim(n, z.type.shape[1] if z.type.shape[1] != 1 else None)
            ins += [z, _scalar(beta, x.dtype)]
        return Apply(self, ins, [TensorType(x.dtype, shape=(m, n))()])

    def perform(self, node, inputs, out):
        x, y, alpha = inputs[:3]
        a = x.T if self.trans_a else x
        b = y.T if self.trans_b else y
        if a.shape[1] != b.shape[0]:
            raise shape_error(self, describe_values([a, b]), f"inner dimensions differ "
                              f"({a.shape[1]} vs {b.shape[0]})", getattr(node.tag, "trace", []))
        r = np.dot(a, b)
        if alpha != 1:
            r *= alpha
        if self.has_z:
            z, beta = inputs[3], inputs[4]
            _check_z(self, node, z, r.shape)
            r = _accumulate(r, z, beta, self.inplace)
        out[0][0] = r

    def infer_shape(self, node, shapes):
        sx, sy = shapes[0], shapes[1]
        return [(sx[1 if self.trans_a else 0], sy[0 if self.trans_b else 1])]


class Gemv(Op):
    """beta * v + alpha * dot(A or A.T, x); inputs (A, x, alpha[, v, beta])."""

    __props__ = ("trans", "has_v", "inplace")

    def __init__(self, trans=False, has_v=False, inplace=False):
        self.trans, self.has_v = bool(trans), bool(has_v)
        self.inplace = bool(inplace and has_v)
        self.destroy_map = {0: [3]} if self.inplace else {}

    def __str__(self):
        return (f"Gemv{{{'T' if self.trans else 'N'}{', v' if self.has_v else ''}"
                f"{', inplace' if self.inplace else ''}}}")

    def make_node(self, A, x, alpha, v=None, beta=None):
        A, x = as_tensor_variable(A), as_tensor_variable(x)
        if A.ndim != 2 or x.ndim != 1 or A.dtype != x.dtype or A.dtype not in BLAS_DTYPES:
            raise TypeError(f"{self}: expects a float matrix and vector of one dtype, got "
                            f"{describe([A, x])}")
        m = A.type.shape[1 if self.trans else 0]
        k = A.type.shape[0 if self.trans else 1]
        if k is not None and x.type.shape[0] is not None and k != x.type.shape[0]:
            raise shape_error(self, describe([A, x]), "inner dimensions differ")
        ins = [A, x, _scalar(alpha, A.dtype)]
        if self.has_v:
            v = as_tensor_variable(v)
            if v.ndim != 1 or v.dtype != A.dtype:
                raise TypeError(f"{self}: v must be a {A.dtype} vector, got {describe([v])}")
            m = _merge_dim(m, v.type.shape[0] if v.type.shape[0] != 1 else None)
            ins += [v, _scalar(beta, A.dtype)]
        return Apply(self, ins, [TensorType(A.dtype, shape=(m,))()])

    def perform(self, node, inputs, out):
        A, x, alpha = inputs[:3]
        a = A.T if self.trans else A
        if a.shape[1] != x.shape[0]:
            raise shape_error(self, describe_values([a, x]), "inner dimensions differ",
                              getattr(node.tag, "trace", []))
        r = np.dot(a, x)
        if alpha != 1:
            r *= alpha
        if self.has_v:
            v, beta = inputs[3], inputs[4]
            if not node.inputs[3].type.broadcastable[0] and v.shape[0] != r.shape[0]:
                raise shape_error(self, describe_values([v]), f"v has length {v.shape[0]}, "
                                  f"the product {r.shape[0]}", getattr(node.tag, "trace", []))
            r = _accumulate(r, v, beta, self.inplace)
        out[0][0] = r

    def infer_shape(self, node, shapes):
        return [(shapes[0][1 if self.trans else 0],)]


class Ger(Op):
    """z + alpha * outer(a, b); inputs (z, alpha, a, b)."""

    __props__ = ("inplace",)

    def __init__(self, inplace=False):
        self.inplace = bool(inplace)
        self.destroy_map = {0: [0]} if self.inplace else {}

    def __str__(self):
        return "Ger{inplace}" if self.inplace else "Ger"

    def make_node(self, z, alpha, a, b):
        z, a, b = (as_tensor_variable(v) for v in (z, a, b))
        if z.ndim != 2 or a.ndim != 1 or b.ndim != 1 or z.dtype not in BLAS_DTYPES or \
                not z.dtype == a.dtype == b.dtype:
            raise TypeError(f"{self}: expects a float matrix and two vectors of one dtype, "
                            f"got {describe([z, a, b])}")
        if any(z.type.broadcastable):
            raise TypeError(f"{self}: z must not be broadcastable, got {describe([z])}")
        m = _merge_dim(z.type.shape[0], a.type.shape[0])
        n = _merge_dim(z.type.shape[1], b.type.shape[0])
        return Apply(self, [z, _scalar(alpha, z.dtype), a, b], [TensorType(z.dtype, shape=(m, n))()])

    def perform(self, node, inputs, out):
        z, alpha, a, b = inputs
        if z.shape != (a.shape[0], b.shape[0]):
            raise shape_error(self, describe_values(inputs), f"outer product "
                              f"{(a.shape[0], b.shape[0])} does not match z {z.shape}",
                              getattr(node.tag, "trace", []))
        r = z if self.inplace else z.copy()
        r += alpha * np.outer(a, b)
        out[0][0] = r

    def infer_shape(self, node, shapes):
        return [shapes[0]]
