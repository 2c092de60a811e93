"""Matrix products against a weight packed once for many calls (a scan step's ``h @ W``).

    PackWeights{trans}(w)           -> wp: w (or w.T) laid out as the native kernel reads it
    PackedDot{trans}(a, w, wp, *e)  -> a @ w (or a @ w.T) + e[0] + e[1] (up to 2 addends)

The scan_pack rewrite (graphc.scan_module.pack) computes ``wp`` before a loop, from a
non-sequence weight, and gives the step ``PackedDot`` instead of ``dot``, so the product in
every step reads the packed panels and nothing repacks the weight per step (BLAS does, at
every call). ``PackedDot`` keeps ``w`` as an input: the numpy ``perform`` (the reference)
multiplies by ``w`` itself, the LLVM backend by ``wp``
(graphc/backend/llvm/packgemm.py), and shapes and errors come from ``w``. Both ops are built
by a rewrite after gradients were taken, so they have no gradient. The rewrite also hands
``PackedDot`` the terms a step adds to the product (``x_t @ Wx + h @ Wh + b``), which the
native kernel adds as it stores the product.

float32 only: the packed kernel is an 8-lane float32 kernel.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType
from graphc.tensor.var import as_tensor_variable

PANEL = 16           # columns per packed panel (graphc.backend.llvm.packgemm.NR)


def pack_weights(w: np.ndarray, trans: bool) -> np.ndarray:
    """(ceil(N/16), K, 16) float32 panels of B = w (or w.T), zero padded."""
    b = w.T if trans else w
    k, n = b.shape
    full = n // PANEL
    out = np.zeros((-(-n // PANEL), k, PANEL), np.float32)
    if full:
        out[:full] = b[:, :full * PANEL].reshape(k, full, PANEL).transpose(1, 0, 2)
    if n % PANEL:
        out[full, :, :n % PANEL] = b[:, full * PANEL:]
    return out


def _weight(op, w):
    w = as_tensor_variable(w)
    if w.ndim != 2 or w.dtype != "float32":
        raise TypeError(f"{op}: the weight must be a float32 matrix, got {describe([w])}")
    return w


class PackWeights(Op):
    """w (K, N) -> panels (ceil(N/16), K, 16); with ``trans``, of w.T."""

    __props__ = ("trans",)

    def __init__(self, trans=False):
        self.trans = bool(trans)

    def __str__(self):
        return f"PackWeights{{{'T' if self.trans else 'N'}}}"

    def make_node(self, w):
        w = _weight(self, w)
        k, n = w.type.shape[::-1] if self.trans else w.type.shape
        p = None if n is None else -(-n // PANEL)
        return Apply(self, [w], [TensorType("float32", shape=(p, k, PANEL))()])

    def perform(self, node, inputs, out):
        out[0][0] = pack_weights(inputs[0], self.trans)

    def infer_shape(self, node, shapes):
        k, n = shapes[0][::-1] if self.trans else shapes[0]
        return [((n + (PANEL - 1)) // PANEL, k, PANEL)]


class PackedDot(Op):
    """a @ w (a @ w.T with ``trans``) + e1 + ... for float32 a (M, K);
    wp = PackWeights{trans}(w); up to MAX_ADDENDS float32 addends of shape (M, N), or
    (1, N) where declared broadcastable in rows, added in order after the product (the
    native kernel adds them as it stores the product: the step's ``x_t @ Wx + h @ Wh + b``
    is one pass)."""

    __props__ = ("trans",)
    MAX_ADDENDS = 2

    def __init__(self, trans=False):
        self.trans = bool(trans)

    def __str__(self):
        return f"PackedDot{{{'T' if self.trans else 'N'}}}"

    def make_node(self, a, w, wp, *addends):
        a, w, wp = as_tensor_variable(a), _weight(self, w), as_tensor_variable(wp)
        addends = [as_tensor_variable(e) for e in addends]
        if a.ndim != 2 or a.dtype != "float32" or wp.ndim != 3 or wp.dtype != "float32":
            raise TypeError(f"{self}: expected a float32 matrix, the weight and its packed "
                            f"panels, got {describe([a, w, wp])}")
        k, n = w.type.shape[::-1] if self.trans else w.type.shape
        ka, m = a.type.shape[1], a.type.shape[0]
        if ka is not None and k is not None and ka != k:
            raise shape_error(self, describe([a, w]), f"inner dimensions differ ({ka} vs {k})")
        if len(addends) > self.MAX_ADDENDS:
            raise TypeError(f"{self}: at most {self.MAX_ADDENDS} addends, got {len(addends)}")
        for j, e in enumerate(addends):
            if e.ndim != 2 or e.dtype != "float32" or (e.type.broadcastable[1] and n != 1):
                raise TypeError(f"{self}: addend {j} must be a float32 matrix not broadcast "
                                f"along columns, got {describe([e])}")
            rows, cols = e.type.shape
            if (rows is not None and m is not None and not e.type.broadcastable[0]
                    and rows != m) or (cols is not None and n is not None and cols != n):
                raise shape_error(self, describe([a, w, e]),
                                  f"addend {j} has shape {e.type.shape_str()}, expected "
                                  f"({m}, {n}) or (1, {n})")
            # a size the addends know and the operands do not (as Elemwise's add infers)
            m = rows if m is None and not e.type.broadcastable[0] else m
            n = cols if n is None else n
        return Apply(self, [a, w, wp, *addends],
                     [TensorType("float32", shape=(m, n))()])

    def check(self, node, a, w, wp, *addends):
        """The shape checks of ``perform`` (the native step runs them too)."""
        k, n = w.shape[::-1] if self.trans else w.shape
        trace = getattr(node.tag, "trace", [])
        if a.shape[1] != k:
            raise shape_error(self, describe_values([a, w]),
                              f"inner dimensions differ ({a.shape[1]} vs {k})", trace)
        if wp.shape != (-(-n // PANEL), k, PANEL):
            raise shape_error(self, describe_values([w, wp]),
                              f"the packed weight has shape {wp.shape}, expected "
                              f"{(-(-n // PANEL), k, PANEL)}", trace)
        for j, e in enumerate(addends):
            # rows broadcast only where the graph says so (as Elemwise's add would)
            rows = 1 if node.inputs[3 + j].type.broadcastable[0] else a.shape[0]
            if e.shape != (rows, n):
                raise shape_error(self, describe_values([a, w, e]),
                                  f"addend {j} has shape {e.shape}, expected {(rows, n)}",
                                  trace)

    def perform(self, node, inputs, out):
        a, w, wp, *addends = inputs
        self.check(node, a, w, wp, *addends)
        r = np.dot(a, w.T if self.trans else w).astype(np.float32, copy=False)
        for e in addends:
            r = r + e
        out[0][0] = r.astype(np.float32, copy=False)

    def infer_shape(self, node, shapes):
        sa, sw = shapes[:2]
        return [(sa[0], sw[0] if self.trans else sw[1])]
